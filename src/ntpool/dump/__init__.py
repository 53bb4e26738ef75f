"""Crash dumps in the Windows x64 format: writing (``write_dump``) and reading (``DumpReader``).

This layer attaches itself to every machine: it maps KUSER_SHARED_DATA, gives
``k.write_dump`` its writer, and writes ``crash_dump=PATH`` when the machine bug-checks.
"""

from ..hooks import BugCheckRaised, attach_to_every_kernel
from .layout import install_shared_data
from .reader import DumpFormatError, DumpReader, MemoryReadError
from .writer import KINDS, write_dump


class _CrashDumpOnBugCheck:
    """Writes the machine's crash dump when it bug-checks (``Kernel(crash_dump=PATH)``)."""

    def __init__(self, kernel):
        self.kernel = kernel

    def __call__(self, event: BugCheckRaised) -> None:
        kernel = self.kernel
        # A dump that cannot be written must not hide the bug check itself.
        try:
            write_dump(kernel, kernel.crash_dump, kernel.crash_dump_kind)
        except (OSError, MemoryError) as error:
            kernel.crash_dump_error = error
            event.bugcheck.dump_error = error


@attach_to_every_kernel
def _attach_dumps(kernel) -> None:
    install_shared_data(kernel)
    kernel._publish_time()  # the clock in KUSER_SHARED_DATA, now that it is mapped
    kernel.dump_writer = write_dump
    if kernel.crash_dump is not None:
        kernel.hooks.subscribe(BugCheckRaised, _CrashDumpOnBugCheck(kernel))


__all__ = ["DumpFormatError", "DumpReader", "KINDS", "MemoryReadError", "write_dump"]
