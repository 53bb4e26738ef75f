"""The compiled sample drivers (C sources and built .sys/.pdb in ``samples/native/``), with
the same methods as their Python twins, so one workload drives either kind.

Each class is a ``NativeDriver`` (the machine loads it like any .sys) whose methods call
the driver's exported routines, as the I/O manager or NDIS would call a real driver's
dispatch routines: a name or a frame is copied first into a buffer in system memory (not
pool, so poolmon shows only the drivers' own tags) and its address passed in. What the
caller learns from the return values (a send accepted, an open failed) is kept here, as
the protocol or the filter manager keeps it; the drivers' own state is in their memory.
"""

import os

from ..constants import PAGE_SIZE
from ..native import NativeDriver
from ..native.build import SOURCE_DIRECTORY

STATUS_INSUFFICIENT_RESOURCES = 0xC000009A
NDIS_STATUS_SUCCESS = 0


def sample_path(name: str) -> str:
    """The committed build of a compiled sample (``name`` without .sys)."""
    return os.path.join(SOURCE_DIRECTORY, name + ".sys")


class _CompiledSample(NativeDriver):
    """A sample .sys with a page of system memory to pass names and frames through."""

    def __init__(self, name: str):
        super().__init__(sample_path(name))
        self._buffer = 0
        self._routines: dict[str, int] = {}

    def _routine(self, name: str) -> int:
        address = self._routines.get(name)
        if address is None:
            address = self._routines[name] = self.address_of(name)
        return address

    def _run(self, name: str, *args) -> int:
        return self.machine.call(self._routine(name), args, self)

    def _pass(self, k, data: bytes) -> int:
        """``data`` in system memory, for the driver to read; its address."""
        if not self._buffer:
            self._buffer = k.kernel_data.reserve(2 * PAGE_SIZE, align=PAGE_SIZE)
        k.write(self._buffer, data[:2 * PAGE_SIZE])
        return self._buffer


class CompiledNdisMiniport(_CompiledSample):
    """ndisminiport.sys: 64 receive buffers (NmRx), a send context per frame (NmTx)."""

    def __init__(self):
        super().__init__("ndisminiport")
        self.sends_in_flight = 0
        self.dropped = 0

    def indicate_receive(self, k, frame: bytes) -> int | None:
        buffer = self._run("IndicateReceive", self._pass(k, frame), len(frame))
        if not buffer:
            self.dropped += 1
        return buffer or None

    def return_buffer(self, k) -> None:
        self._run("ReturnBuffer")

    def send(self, k, frame: bytes) -> bool:
        if self._run("SendFrame", len(frame)) & 0xFFFFFFFF != NDIS_STATUS_SUCCESS:
            return False
        self.sends_in_flight += 1
        return True

    def send_complete(self, k) -> None:
        if self.sends_in_flight:
            self._run("SendComplete")
            self.sends_in_flight -= 1


class CompiledFsFilter(_CompiledSample):
    """fsfilter.sys: FsRtlAllocatePoolWithTag inside a compiled __try/__except."""

    def __init__(self):
        super().__init__("fsfilter")
        self.open_count = 0
        self.failed_opens = 0  # opens the driver failed with STATUS_INSUFFICIENT_RESOURCES

    def open_file(self, k, name: str) -> int:
        """IRP_MJ_CREATE; returns the driver's NTSTATUS."""
        encoded = name.encode("utf-16-le")
        status = self._run("OpenFile", self._pass(k, encoded), len(encoded)) & 0xFFFFFFFF
        if status == 0:
            self.open_count += 1
        elif status == STATUS_INSUFFICIENT_RESOURCES:
            self.failed_opens += 1
        return status

    def close_file(self, k) -> None:
        """IRP_MJ_CLEANUP of the oldest open file."""
        if self.open_count:
            self._run("CloseFile")
            self.open_count -= 1

    def failed_open_count(self) -> int:
        """What the driver itself counted (its FailedOpenCount export)."""
        return self._run("FailedOpenCount")


class CompiledSloppyDriver(_CompiledSample):
    """sloppy.sys: a leak (SlRq) and an overrun (SlNm)."""

    def __init__(self):
        super().__init__("sloppy")
        self.last_name = 0  # its last name buffer, read from the driver before it unloads

    def handle_request(self, k, name: str, cancelled: bool = False) -> int:
        encoded = name.encode("utf-16-le")
        return self._run("HandleRequest", self._pass(k, encoded), len(encoded),
                         int(cancelled)) & 0xFFFFFFFF

    def DriverUnload(self, k):
        if self.driver_object:
            self.last_name = self._run("LastName")
        super().DriverUnload(k)
