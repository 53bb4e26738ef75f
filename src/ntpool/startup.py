"""What ``python -m ntpool`` needs before the package loads: Ctrl-C held until it has.

``python -m ntpool`` imports the package (the machine, the pools, the routines: a noticeable
moment on a busy machine) before ``ntpool.__main__`` runs, so the ``ntpool`` script's
launcher (``ntpool_launch``, outside the package) cannot guard it. The package imports this
module first; when this interpreter was started as ``python -m ntpool``, a Ctrl-C is only
noted from then on, and ``ntpool.cli.launch.run_main`` (``__main__``) ends the command as
interrupted once the import is done (``release``). Imported any other way, nothing changes.
Standard library only.
"""

import signal
import sys

_noted: list = []
_previous = None
_holding = False


def started_as_module(name: str, argv=None, orig_argv=None) -> bool:
    """Whether this interpreter is locating module ``name`` for ``python ... -m name``: while
    it does, ``sys.argv[0]`` is "-m" and ``sys.orig_argv`` holds the command line as typed."""
    argv = sys.argv if argv is None else argv
    orig_argv = getattr(sys, "orig_argv", []) if orig_argv is None else orig_argv
    if argv[:1] != ["-m"]:
        return False
    words = iter(orig_argv[1:])
    for word in words:
        if not word.startswith("-") or word == "-" or word.startswith("--"):
            return False  # a script, stdin or a long option: not -m
        flags = word[1:]
        for index, flag in enumerate(flags):
            if flag == "m":
                return (flags[index + 1:] or next(words, "")) == name
            if flag in "XWc":  # an option with a value (-X dev, -Wdefault), or -c
                if flag == "c":
                    return False
                if index == len(flags) - 1:
                    next(words, None)
                break
    return False


def hold_interrupts(package: str) -> None:
    """When started as ``python -m package``: note Ctrl-C instead of raising it (until
    ``release``)."""
    global _previous, _holding
    if not started_as_module(package):
        return
    try:
        _previous = signal.signal(signal.SIGINT, lambda signum, frame: _noted.append(signum))
    except (ValueError, OSError):  # not the main thread: not ours to handle
        return
    _holding = True


def release() -> bool:
    """Python's Ctrl-C handler back; whether a Ctrl-C came while it was held."""
    global _holding
    if _holding:
        signal.signal(signal.SIGINT, _previous)
        _holding = False
    return bool(_noted)


hold_interrupts("ntpool")  # at import: the package imports this module first
