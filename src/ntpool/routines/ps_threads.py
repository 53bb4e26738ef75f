"""System threads: PsCreateSystemThread and PsTerminateSystemThread, for ntpool's one flow of
control.

A system thread is a thread object as Windows makes one: an ETHREAD (Windows 7 SP1 x64
layout, its KTHREAD's DISPATCHER_HEADER of type ThreadObject) in an object of type Thread
from nonpaged pool tagged "Thre" (pooltag.txt's thread objects), a handle to it, and the
thread's own reference, which it drops when it ends. It is signalled when it ends, so
KeWaitForSingleObject on it (after ObReferenceObjectByHandle of the handle, as drivers do
before they unload) returns then; the object is freed when its last reference goes (ZwClose
of the handle, ObDereferenceObject of the waiter's reference, the thread's own at its end).

When the start routine runs, with one flow of control (README, departures): as a work item
does, when the creator gives up the processor (a wait on an object not signalled, a sleep)
or its top-level call returns to the kernel (DriverEntry, DriverUnload, a request); threads
run after the queued work items, in the order created, at PASSIVE_LEVEL, each to its end:
its return or PsTerminateSystemThread. A start routine that waits on something nothing can
signal while it runs is ``WaitForever`` (``NativeError`` from a compiled driver), where
Windows' thread would block forever. A thread whose driver unloads before it runs starts in
code that is gone: 0xCE, as a work item's routine. Thread notify routines are told of the
thread when it is created (in the creator's context) and when it ends (in its own).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..constants import PASSIVE_LEVEL, NtStatus, PoolType
from ..errors import NtStatusError
from . import layouts as L
from .registry import register_type, routine
from .sysinfo import (ETHREAD_CID, ETHREAD_CROSS_THREAD_FLAGS, ETHREAD_SIZE, KTHREAD_APC_STATE_PROCESS,
                      KTHREAD_PROCESS, PS_CROSS_THREAD_FLAGS_SYSTEM, THREAD_OBJECT_TYPE)

STATUS_INVALID_HANDLE = 0xC0000008
STATUS_INVALID_PARAMETER = 0xC000000D
# Tcb.Header.SignalState: set when the thread ends (the other ETHREAD fields ntpool writes
# are sysinfo's; the start address and exit status are kept beside the machine).
KTHREAD_SIGNAL_STATE = 0x04
THREAD_ALL_ACCESS = 0x1FFFFF
NT_CURRENT_PROCESS = (1 << 64) - 1

for _name in ("PKSTART_ROUTINE", "POBJECT_ATTRIBUTES", "PCLIENT_ID"):
    register_type(_name, 8, pointer=True)


class ThreadTerminated(BaseException):
    """PsTerminateSystemThread: the start routine's frames are left (a BaseException, so
    the native bridge passes it through the driver's frames untouched, as it does Ctrl-C)."""

    def __init__(self, status: int):
        super().__init__(status)
        self.status = status


@dataclass
class SystemThread:
    ethread: int
    start: int
    context: int
    thread_id: int
    process_id: int
    state: str = "ready"  # ready, running, ended
    exit_status: int | None = None


class ThreadRoutines:
    def _init_threads(self) -> None:
        self.system_threads: list[SystemThread] = []  # every one created, in order
        self._running_threads: list[SystemThread] = []

    @routine("NTSTATUS PsCreateSystemThread(_Out_ PHANDLE ThreadHandle, ULONG DesiredAccess, "
             "POBJECT_ATTRIBUTES ObjectAttributes, HANDLE ProcessHandle, _Inout_opt_ PCLIENT_ID ClientId, "
             "PKSTART_ROUTINE StartRoutine, PVOID StartContext)")
    def PsCreateSystemThread(self, DesiredAccess, ObjectAttributes, ProcessHandle, ClientId,
                             StartRoutine, StartContext) -> tuple[int, int]:
        """(status, handle): a thread of the System process (or of the current process for
        NtCurrentProcess()) that will run StartRoutine(StartContext) when this thread gives up
        the processor; ClientId, if given, receives its CLIENT_ID. Another process handle is
        STATUS_INVALID_HANDLE (ntpool has no process handles); no pool,
        STATUS_INSUFFICIENT_RESOURCES. Above PASSIVE_LEVEL: 0xA."""
        self._check_irql_at_most(PASSIVE_LEVEL, "PsCreateSystemThread")
        for value in (StartRoutine, StartContext):
            int.to_bytes(value, 8, "little")  # kept for later: a value no pointer holds is refused now
        if ProcessHandle & NT_CURRENT_PROCESS == NT_CURRENT_PROCESS:
            process = self.current_process
        elif not ProcessHandle:
            process = self.system_process
        else:
            return STATUS_INVALID_HANDLE, 0
        attributes = self._get32(ObjectAttributes + L.OBJECT_ATTRIBUTES.Attributes) if ObjectAttributes else 0
        ethread = self._ob_create("Thread", ETHREAD_SIZE, pool_type=PoolType.NonPagedPool, on_behalf=False)
        if not ethread:
            return NtStatus.STATUS_INSUFFICIENT_RESOURCES, 0
        thread_id = self._next_pid
        self._next_pid += 4
        self._put8(ethread, THREAD_OBJECT_TYPE)
        self._put8(ethread + 2, ETHREAD_SIZE // 4 & 0xFF)
        self._put64(ethread + KTHREAD_APC_STATE_PROCESS, process.address)
        self._put64(ethread + KTHREAD_PROCESS, process.address)
        self._put64(ethread + ETHREAD_CID, process.pid)
        self._put64(ethread + ETHREAD_CID + 8, thread_id)
        self._put32(ethread + ETHREAD_CROSS_THREAD_FLAGS, PS_CROSS_THREAD_FLAGS_SYSTEM)
        # The creation reference is the thread's own, dropped when it ends; the handle has its own.
        handle = self._ob_insert_handle(ethread, DesiredAccess or THREAD_ALL_ACCESS,
                                        kernel=bool(attributes & L.OBJ_KERNEL_HANDLE))
        if ClientId:
            self._put64(ClientId, process.pid)
            self._put64(ClientId + 8, thread_id)
        thread = SystemThread(ethread, StartRoutine, StartContext, thread_id, process.pid)
        self.system_threads.append(thread)
        self.ready_threads.append(thread)
        self.notify_thread(process.pid, thread_id, True)
        return NtStatus.STATUS_SUCCESS, handle

    @routine("NTSTATUS PsTerminateSystemThread(NTSTATUS ExitStatus)")
    def PsTerminateSystemThread(self, ExitStatus) -> int:
        """End the calling system thread (it does not return); outside a thread
        PsCreateSystemThread made: STATUS_INVALID_PARAMETER (departures)."""
        if not self._running_threads:
            return STATUS_INVALID_PARAMETER
        raise ThreadTerminated(ExitStatus & 0xFFFFFFFF)

    def run_ready_thread(self) -> None:
        """Give the processor to the first system thread not yet run: its start routine at
        PASSIVE_LEVEL, as the current thread, to its end."""
        thread = self.ready_threads.pop(0)
        self._check_code_not_unloaded(thread.start, "system thread start routine")
        thread.state = "running"
        previous = self.current_thread
        self.current_thread = thread.ethread
        self._running_threads.append(thread)
        status = NtStatus.STATUS_SUCCESS
        try:
            self.deferred_log.append(("thread", thread.start))
            self.call_code(thread.start, thread.context)
        except ThreadTerminated as ended:
            status = ended.status
        finally:
            self._running_threads.pop()
            self.current_thread = previous
        if self.halted:
            return
        self._end_thread(thread, status)

    def _end_thread(self, thread: SystemThread, status: int) -> None:
        """PspExitThread: the exit status kept, thread notify routines (in the thread's context),
        the object signalled, the thread's own reference dropped."""
        thread.state, thread.exit_status = "ended", status
        self.notify_thread(thread.process_id, thread.thread_id, False)
        self._put32(thread.ethread + KTHREAD_SIGNAL_STATE, 1)
        self._ob_dereference(thread.ethread)

    def thread_of_handle(self, handle: int) -> int:
        """The ETHREAD a thread handle names (for scenarios)."""
        try:
            return self._ob_handle_object(handle, "Thread")
        except NtStatusError:
            raise ValueError(f"{handle:#x} is not a thread handle") from None
