"""The ``ntpool`` command's entry point, outside the package on purpose.

Importing ``ntpool`` takes a noticeable moment on a busy machine (the machine, the pools,
the routines). Python's own Ctrl-C handler would raise KeyboardInterrupt anywhere in it
(a traceback, or a "KeyboardInterrupt ignored" from an import lock's callback and the
interrupt lost). A module outside the package runs before that import: while it lasts,
Ctrl-C is only noted, and the command ends as interrupted once the import is done.
"""

import signal
import sys


def main() -> int:
    noted = []
    try:
        previous = signal.signal(signal.SIGINT, lambda signum, frame: noted.append(signum))
    except ValueError:  # not the main thread: not ours to handle
        previous = None
    try:
        from ntpool.cli.main import main as ntpool_main
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    try:
        if noted:
            raise KeyboardInterrupt
        return ntpool_main()
    except KeyboardInterrupt:  # before ntpool's main() took Ctrl-C over
        print("ntpool: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
