"""``python -m ntpool`` is as clean as the ``ntpool`` script when Ctrl-C comes early: while
the package itself is being imported (before ``ntpool.__main__`` runs), the command ends
with status 130 and one line, never a traceback from inside the import."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ntpool.startup import started_as_module

SRC = str(Path(__file__).resolve().parents[1] / "src")

# Loaded by the interpreter's startup (``site``) from PYTHONPATH: SIGINT to itself, the
# user's Ctrl-C, at the moment the module named CTRL_C_AT is about to be imported.
CTRL_C_AT_AN_IMPORT = '''
import importlib.abc, os, signal, sys

class CtrlC(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == os.environ.get("CTRL_C_AT"):
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
        return None

sys.meta_path.insert(0, CtrlC())
'''


def _ctrl_c_as_at_a_terminal() -> None:
    """The child starts with SIGINT at its default, as a terminal's foreground command does:
    a suite started in the background by a shell without job control inherits SIGINT
    ignored, and Python then installs no handler, so these tests would test the caller's
    shell instead of ntpool."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _python(tmp_path, *arguments, at=None):
    (tmp_path / "sitecustomize.py").write_text(CTRL_C_AT_AN_IMPORT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), SRC])}
    env.pop("CTRL_C_AT", None)
    if at:
        env["CTRL_C_AT"] = at
    return subprocess.run([sys.executable, *arguments], env=env, capture_output=True, timeout=120,
                          preexec_fn=_ctrl_c_as_at_a_terminal)


@pytest.mark.parametrize("at", ["ntpool.constants", "ntpool.kernel", "ntpool.dump",
                                "ntpool.cli.main", "ntpool.cli.tools"])
def test_ctrl_c_while_python_m_ntpool_imports_the_package_is_one_line_and_130(tmp_path, at):
    done = _python(tmp_path, "-m", "ntpool", "--version", at=at)
    assert (done.returncode, done.stderr, done.stdout) == (130, b"ntpool: interrupted\n", b"")


def test_without_ctrl_c_python_m_ntpool_runs_and_the_handler_is_python_s_again(tmp_path):
    done = _python(tmp_path, "-m", "ntpool", "--version")
    assert (done.returncode, done.stdout, done.stderr) == (0, b"ntpool 0.1.0\n", b"")
    # the command itself still takes Ctrl-C over as before (its own handler, not a noting one)
    probe = ("import signal, sys; sys.argv = ['-m']; sys.orig_argv = ['python', '-m', 'ntpool'];"
             "import ntpool.startup as startup; import ntpool;"
             "assert startup._holding, 'holds while the package loads';"
             "assert not startup.release();"
             "assert signal.getsignal(signal.SIGINT) is signal.default_int_handler")
    assert _python(tmp_path, "-c", probe).returncode == 0


def test_importing_ntpool_as_a_library_leaves_ctrl_c_alone(tmp_path):
    probe = ("import signal, ntpool, ntpool.startup as startup;"
             "assert signal.getsignal(signal.SIGINT) is signal.default_int_handler;"
             "assert not startup._holding")
    assert _python(tmp_path, "-c", probe).returncode == 0
    # another module of the package run with -m is left alone as well: a Ctrl-C is Python's
    done = _python(tmp_path, "-m", "ntpool.startup", at="ntpool.kernel")
    assert b"KeyboardInterrupt" in done.stderr


@pytest.mark.parametrize("orig_argv, expected", [
    (["python", "-m", "ntpool", "demo"], True),
    (["python", "-mntpool"], True),
    (["python", "-X", "dev", "-W", "error", "-m", "ntpool"], True),
    (["python", "-Xdev", "-Im", "ntpool"], True),
    (["python", "-m", "ntpool.tools.dump_fuzz"], False),
    (["python", "-c", "-m ntpool"], False),
    (["python", "script.py", "-m", "ntpool"], False),
])
def test_started_as_module_reads_the_command_line_as_python_does(orig_argv, expected):
    assert started_as_module("ntpool", argv=["-m"], orig_argv=orig_argv) is expected
    assert not started_as_module("ntpool", argv=["/x/ntpool/__main__.py"], orig_argv=orig_argv)


def test_these_tests_pass_in_a_suite_started_with_sigint_ignored():
    # A shell without job control starts `pytest &` with SIGINT ignored, and every child
    # inherited it: Python installed no handler and the tests above failed on the caller's
    # shell, not on ntpool.
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", __file__,
         "-k", "without_ctrl_c_python_m or leaves_ctrl_c_alone or ntpool.kernel"],
        capture_output=True, text=True, timeout=300,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    assert done.returncode == 0 and done.stdout.startswith("... "), done.stdout[-3000:]
