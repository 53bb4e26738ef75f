"""``ntpool.Kernel``: the core machine with the layers that sit on top of it.

The core (``ntpool.kernel.Kernel``) never imports the edges (dumps, verifier, drivers'
tooling); this class is where they are put together for users.
"""

import os

from .dump.layout import install_shared_data
from .dump.writer import KINDS, write_dump
from .hooks import BugCheckRaised
from .kernel import Kernel as CoreKernel
from .verifier import DriverVerifier


class Kernel(CoreKernel):
    """A fresh simulated x64 Windows machine (see ``ntpool.kernel.Kernel`` for arguments).

    ``k.verifier`` is Driver Verifier: ``k.verifier.enable("driver.sys", special_pool=True)``.
    ``crash_dump=PATH`` writes a crash dump (``crash_dump_kind``: 'kernel', the bitmap dump
    Windows writes by default, or 'full') when the machine bug-checks.
    """

    def __init__(self, *args, crash_dump=None, crash_dump_kind: str = "kernel", **kwargs):
        if crash_dump_kind not in KINDS:
            raise ValueError(f"crash_dump_kind must be 'full' or 'kernel', not {crash_dump_kind!r}")
        if crash_dump is not None and not isinstance(crash_dump, (str, os.PathLike)):
            raise TypeError(f"crash_dump must be a path, not {type(crash_dump).__name__}")
        super().__init__(*args, **kwargs)
        self.verifier = DriverVerifier(self)
        install_shared_data(self)
        self._publish_time()  # the clock in KUSER_SHARED_DATA, now that it is mapped
        self.crash_dump = crash_dump
        self.crash_dump_kind = crash_dump_kind
        self.crash_dump_error: OSError | None = None
        if crash_dump is not None:
            self.hooks.subscribe(BugCheckRaised, self._write_crash_dump)

    def write_dump(self, path, kind: str = "full", symbols: bool = True) -> str:
        """Write this machine's crash dump to ``path`` ('full' or 'kernel'); works when halted.

        The symbol file volatility3 needs goes in a ``symbols`` folder beside it (``symbols``)."""
        return write_dump(self, path, kind, symbols)

    def _write_crash_dump(self, event: BugCheckRaised) -> None:
        # A dump that cannot be written must not hide the bug check itself.
        try:
            write_dump(self, self.crash_dump, self.crash_dump_kind)
        except (OSError, MemoryError) as error:
            self.crash_dump_error = error
            event.bugcheck.dump_error = error
