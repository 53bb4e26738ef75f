"""Processes as drivers and scenarios see them: ``k.create_process``, the current process,
PsGetCurrentProcess and the PsInitialSystemProcess export.

``k.create_process(name, paged_quota=..., nonpaged_quota=...)`` lays out an EPROCESS in
kernel memory and gives it pool quota limits (None: unlimited); ``k.set_current_process(p)``
switches (KeStackAttachProcess). The EPROCESS layout, the quota ledger and the charging
rule are the machine's (``machine/process.py``).
"""

from ..machine.process import (EPROCESS_IMAGE_FILE_NAME, EPROCESS_SIZE, EPROCESS_UNIQUE_PROCESS_ID,
                               PROCESS_OBJECT_TYPE, Process)
from ..errors import NtStatusError
from .registry import register_data, routine


def _quota(name: str, value) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative int number of bytes or None, got {value!r}")
    return value


class ProcessRoutines:
    @property
    def PsInitialSystemProcess(self) -> int:
        """The System process's EPROCESS address (ntoskrnl exports the variable)."""
        return self.system_process.address

    def create_process(self, name: str, paged_quota=None, nonpaged_quota=None) -> Process:
        """A process with its EPROCESS in kernel memory and pool quota limits (bytes)."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty str, got {name!r}")
        limits = [_quota("nonpaged_quota", nonpaged_quota), _quota("paged_quota", paged_quota)]
        address = self.kernel_data.reserve(EPROCESS_SIZE, align=16)
        self.write(address, bytes([PROCESS_OBJECT_TYPE]))  # Pcb.Header.Type: ProcessObject
        pid = self._next_pid
        self._next_pid += 4
        self.write(address + EPROCESS_UNIQUE_PROCESS_ID, pid.to_bytes(8, "little"))
        image = name.encode("ascii", "replace")[:14]
        self.write(address + EPROCESS_IMAGE_FILE_NAME, image + bytes(15 - len(image)))
        process = Process(name, pid, address, limits)
        self.processes.append(process)
        self.quota_ledger.by_address[address] = process
        try:
            self.notify_process_created(process)
        except NtStatusError:
            # A process notify routine refused it: the process is not created.
            self.processes.remove(process)
            self.quota_ledger.by_address.pop(address, None)
            raise
        return process

    def set_current_process(self, process: Process) -> None:
        if not isinstance(process, Process) or process not in self.processes:
            raise ValueError(f"process must be one k.create_process returned, got {process!r}")
        self.current_process = process

    @routine("PEPROCESS PsGetCurrentProcess(VOID)")
    def PsGetCurrentProcess(self) -> int:
        """The current process's EPROCESS address."""
        return self.current_process.address


register_data("PsInitialSystemProcess", "PEPROCESS", lambda kernel: kernel.PsInitialSystemProcess)
