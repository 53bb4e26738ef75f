"""``ntpool kd -z DUMP [-c "cmd; cmd"]``: kd.exe's pool commands on a crash dump."""

import sys

from ..debugger.pooltag import PoolTagDatabase
from ..debugger.session import KdSession
from ..dump.reader import DumpReader

PROMPT = "0: kd> "


def run_kd(dump_path: str, commands: str | None, pooltag_file: str | None,
           stdin=None, stdout=None) -> int:
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
            print(session.execute(commands), file=stdout)
            return 0
        return _interactive(session, stdin, stdout)


def _interactive(session: KdSession, stdin, stdout) -> int:
    while True:
        stdout.write(PROMPT)
        stdout.flush()
        line = stdin.readline()
        if not line:
            stdout.write("\n")
            return 0
        line = line.strip()
        if line in ("q", "qq", "quit", "exit"):
            return 0
        if line:
            print(session.execute(line), file=stdout)
