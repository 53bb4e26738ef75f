"""``python -m ntpool``'s main: one line and status 130 when Ctrl-C came while the package
was loading (``ntpool.startup`` held it), as the ``ntpool`` script's launcher does."""

import sys

from ..startup import release


def run_main() -> int:
    """``ntpool``'s main, or status 130 and one line if Ctrl-C came while the package loaded."""
    try:
        if release():
            raise KeyboardInterrupt
        from .main import main

        return main()
    except KeyboardInterrupt:  # before main() took Ctrl-C over
        print("ntpool: interrupted", file=sys.stderr)
        return 130
