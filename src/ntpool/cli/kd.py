"""``ntpool kd -z DUMP [-c "cmd; cmd; q"]``: kd.exe's commands on a crash dump.

On a terminal the prompt is prompt_toolkit's: line editing, history (kept in
``$NTPOOL_KD_HISTORY``, default ``~/.ntpool_kd_history``), Tab completion of commands, tags,
structure names, modules and addresses from the dump; Ctrl-C cancels the line being typed and
Ctrl-D or ``q`` quits. Without a terminal (a pipe, a script) lines are read plainly.
"""

import os
import sys
from pathlib import Path

from ..debugger import display as show
from ..debugger.pooltag import PoolTagDatabase
from ..debugger.session import KdSession
from ..dump.reader import DumpReader, MemoryReadError
from ..tags import display

PROMPT = "0: kd> "
QUIT = {"q", "qq", "qd", "quit", "exit"}
TAG_COMMANDS = {"!poolfind", "!poolused"}
ADDRESS_COMMANDS = {"!pool", "!poolval", "!pte", "db", "dw", "dd", "dq", "dps", "dt"}


def run_kd(dump_path: str, commands: str | None, pooltag_file: str | None,
           stdin=None, stdout=None, prompt_input=None, prompt_output=None) -> int:
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    pooltags = PoolTagDatabase.default(pooltag_file)
    with DumpReader(dump_path) as reader:
        reader.debugger_data()  # a dump without its debugger data cannot be analysed: say so now
        session = KdSession(reader, pooltags)
        print(f"Loading Dump File [{dump_path}]", file=stdout)
        kind = "Kernel Bitmap Dump File" if reader.dump_type == 5 else "Full memory dump"
        print(f"{kind}: {reader.page_count} pages; "
              f"Bugcheck {reader.bugcheck_code:x} ({', '.join(f'{p:x}' for p in reader.bugcheck_parameters)})",
              file=stdout)
        if commands is not None:
            run_script(session, commands, stdout)
            return 0
        if prompt_input is not None or _is_terminal(stdin) and _is_terminal(stdout):
            return _prompt_toolkit_loop(session, stdout, prompt_input, prompt_output)
        return _plain_loop(session, stdin, stdout)


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def run_script(session: KdSession, commands: str, stdout) -> bool:
    """``;``-separated commands, as kd's -c runs them; False once ``q`` was reached."""
    for command in commands.split(";"):
        command = command.strip()
        if not command:
            continue
        if command.lower() in QUIT:
            return False
        for piece in session.stream(command):  # written as made: !poolfind * can be huge
            stdout.write(piece)
        stdout.write("\n")
    return True


def _plain_loop(session: KdSession, stdin, stdout) -> int:
    while True:
        stdout.write(PROMPT)
        stdout.flush()
        try:
            line = stdin.readline()
        except KeyboardInterrupt:  # Ctrl-C cancels the line, as at kd's prompt
            stdout.write("^C\n")
            continue
        if not line:
            stdout.write("\n")
            return 0
        if not run_script(session, line, stdout):
            return 0


def history_path() -> Path | None:
    configured = os.environ.get("NTPOOL_KD_HISTORY")
    if configured:
        return Path(configured)
    try:
        return Path.home() / ".ntpool_kd_history"
    except RuntimeError:
        return None


def _history():
    from prompt_toolkit.history import FileHistory, InMemoryHistory

    path = history_path()
    if path is not None:
        try:
            open(path, "ab").close()  # a file it can append to (touch accepts a folder)
            return FileHistory(str(path))
        except OSError:
            pass
    return InMemoryHistory()


def _prompt_toolkit_loop(session: KdSession, stdout, prompt_input=None, prompt_output=None) -> int:
    from prompt_toolkit import PromptSession

    prompt = PromptSession(history=_history(), completer=KdCompleter(session),
                           complete_while_typing=False, input=prompt_input, output=prompt_output)
    while True:
        try:
            line = prompt.prompt(PROMPT)
        except KeyboardInterrupt:  # Ctrl-C: drop the line, prompt again
            continue
        except EOFError:  # Ctrl-D
            return 0
        if not run_script(session, line, stdout):
            return 0
        stdout.flush()


def completion_words(session: KdSession, line: str) -> list[str]:
    """What Tab offers for the last word of ``line``: commands, then their arguments."""
    words = line.split()
    if line.endswith(" "):
        words.append("")
    if len(words) <= 1:
        return sorted(set(session.commands) | QUIT)
    command = words[0].lower()
    if command == "dt" and len(words) == 2:
        return show.structure_names()
    if command == "!verifier" and len(words) == 3:
        try:
            return sorted(name for name, _, _ in session.reader.loaded_modules() if name)
        except ValueError:  # a dump whose debugger data is unreadable: nothing to offer
            return []
    if command in TAG_COMMANDS:
        return _tags(session)
    if command in ADDRESS_COMMANDS:
        return _addresses(session)
    return []


def _tags(session: KdSession) -> list[str]:
    try:
        return sorted({display(entry.Key).rstrip() for entry in session.reader.tracker_entries()})
    except ValueError:
        return []


def _addresses(session: KdSession) -> list[str]:
    """Addresses worth typing: the bug check's, big allocations, modules, the chunks around."""
    reader = session.reader
    found = {p for p in reader.bugcheck_parameters if p > 0xFFFF}
    try:
        found |= {entry.Va for entry in session.big_pages().entries}
        found |= {base for _, base, _ in reader.loaded_modules()}
        for value in list(found):
            if reader.pool_of(value) is not None:
                found |= {line_address for line_address in _chunk_addresses(session, value)}
    except (ValueError, MemoryReadError):
        pass
    return [f"{value:x}" for value in sorted(found)]


def _chunk_addresses(session: KdSession, address: int) -> list[int]:
    from ..debugger.poolscan import read_page_report

    pool = session.reader.pool_of(address)
    try:
        return [chunk.address for chunk in read_page_report(session.reader, address,
                                                            pool.base_type).chunks]
    except MemoryReadError:
        return []


def KdCompleter(session: KdSession):
    from prompt_toolkit.completion import Completer, Completion

    class _KdCompleter(Completer):
        def get_completions(self, document, complete_event):
            line = document.text_before_cursor
            word = "" if line.endswith(" ") else (line.split() or [""])[-1]
            # A command's name is followed by its arguments: a space after it, as a shell
            # completes a command (Tab then "Sl*" gave "!poolfindSl*", no such command).
            after = " " if len(line.split()) <= 1 and not line.endswith(" ") else ""
            for candidate in completion_words(session, line):
                if candidate.lower().startswith(word.lower()):
                    yield Completion(candidate + after, start_position=-len(word),
                                     display=candidate)

    return _KdCompleter()
