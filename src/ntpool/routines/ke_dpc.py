"""Deferred work: DPCs (KeInsertQueueDpc and the rest of the KDPC routines) and work items
(ExQueueWorkItem, the IoXxxWorkItem family), for the one thread ntpool runs.

When deferred work runs, with one thread of control (README, WDM drivers, departures):

- A DPC is queued on its processor (the current one, or the one KeSetTargetProcessorDpc
  named) and runs at DISPATCH_LEVEL as soon as that processor's IRQL is below
  DISPATCH_LEVEL, as the DISPATCH software interrupt KeInsertQueueDpc requests does: at
  once if it is already below, else when the IRQL drops below it (KeLowerIrql,
  KeReleaseSpinLock, the end of a DPC...). HighImportance DPCs go to the head of the queue,
  the others to the tail (WRK ke/dpcobj.c); importance does not delay the interrupt here.
- A work item runs at PASSIVE_LEVEL, in queue priority order (hypercritical, critical,
  delayed: the worker threads' priorities, WRK ex/worker.c) then in order queued, when the
  one thread gives up the processor: a wait on an object that is not signalled
  (KeWaitForSingleObject, KeWaitForMultipleObjects), KeDelayExecutionThread, or when a
  driver's top-level call returns to the kernel (DriverEntry, DriverUnload, a request from
  user mode, an export called from a scenario). So "queue a work item, wait for the event
  it sets" works as on Windows.

Code that runs after its driver unloaded gets Windows' answer: KeBugCheckEx turns the fault
of running code where an unloaded driver was into 0xD4 at DISPATCH_LEVEL (a DPC) and 0xCE
below it (a work item), naming the driver (WRK ke/bugcheck.c, MmLocateUnloadedDriver).
"""

from __future__ import annotations

from ..constants import DISPATCH_LEVEL, PASSIVE_LEVEL, BugCheckCode
from ..machine.user_space import MM_USER_PROBE_ADDRESS
from .registry import register_type, routine

KTIMER_DPC = 0x30
# KDPC (Windows 7 x64, 0x40 bytes).
KDPC_TYPE = 0x00
KDPC_IMPORTANCE = 0x01
KDPC_NUMBER = 0x02
KDPC_LIST_ENTRY = 0x08
KDPC_DEFERRED_ROUTINE = 0x18
KDPC_DEFERRED_CONTEXT = 0x20
KDPC_SYSTEM_ARGUMENT1 = 0x28
KDPC_SYSTEM_ARGUMENT2 = 0x30
KDPC_DPC_DATA = 0x38
LOW_IMPORTANCE, MEDIUM_IMPORTANCE, HIGH_IMPORTANCE, MEDIUM_HIGH_IMPORTANCE = 0, 1, 2, 3
# KeSetTargetProcessorDpc stores MAXIMUM_PROCESSORS + Number; 0 means "the processor that
# queues it" (WRK ke/dpcobj.c; x64 Windows 7 has 64 processors to a group).
MAXIMUM_PROCESSORS = 64
# Where a queued DPC's DpcData points: the processor's KDPC_DATA in its KPRCB. ntpool has no
# KPRCB in the core: these stand for them (non-NULL is what "queued" means to KeRemoveQueueDpc).
KDPC_DATA_STAND_IN = 0xFFFFF80000A30000

# WORK_QUEUE_ITEM: List (LIST_ENTRY), WorkerRoutine, Parameter; 0x20 bytes.
WORK_QUEUE_ITEM_WORKER_ROUTINE = 0x10
WORK_QUEUE_ITEM_PARAMETER = 0x18
WORK_QUEUE_ITEM_SIZE = 0x20
CRITICAL_WORK_QUEUE, DELAYED_WORK_QUEUE, HYPER_CRITICAL_WORK_QUEUE = 0, 1, 2
MAXIMUM_WORK_QUEUE = 3
WORK_QUEUE_ORDER = (HYPER_CRITICAL_WORK_QUEUE, CRITICAL_WORK_QUEUE, DELAYED_WORK_QUEUE)
# A queued item's List.Flink points into ExWorkerQueue[QueueType]'s KQUEUE: these stand for
# the three queues' entry list heads (non-NULL: the item is queued).
EX_WORKER_QUEUE_STAND_IN = 0xFFFFF80000A30400

# IO_WORKITEM (Windows 7 x64): WorkItem (WORK_QUEUE_ITEM), Routine, IoObject, Context, Type
# (0: IoQueueWorkItem's IO_WORKITEM_ROUTINE, 1: IoQueueWorkItemEx's), ActivityId (a GUID,
# Windows 7's ETW activity); what IoSizeofWorkItem returns.
IO_WORKITEM_ROUTINE = 0x20
IO_WORKITEM_IO_OBJECT = 0x28
IO_WORKITEM_CONTEXT = 0x30
IO_WORKITEM_TYPE = 0x38
IO_WORKITEM_SIZE = 0x50
# IoAllocateWorkItem's pool tag: ReactOS's TAG_IOWI ('IWOI' as a multi-character constant,
# "IOWI" in memory: ntoskrnl/include/internal/tag.h, used by io/iomgr/iowork.c).
TAG_IO_WORKITEM = int.from_bytes(b"IOWI", "little")
# What an IO_WORKITEM's WorkItem.WorkerRoutine is: IopProcessWorkItem in ntoskrnl, which
# calls the driver's routine and dereferences the IoObject. ntpool has no ntoskrnl code.
IOP_PROCESS_WORK_ITEM = 0xFFFFF80000A30800

WORKER_INVALID = BugCheckCode.WORKER_INVALID
EXECUTE_FAULT = 8
MASK64 = (1 << 64) - 1

for _name, _size, _pointer in (("PRKDPC", 8, True), ("KDPC_IMPORTANCE", 4, False),
                               ("PWORK_QUEUE_ITEM", 8, True), ("WORK_QUEUE_TYPE", 4, False),
                               ("PIO_WORKITEM", 8, True), ("PIO_WORKITEM_ROUTINE", 8, True),
                               ("PIO_WORKITEM_ROUTINE_EX", 8, True)):
    register_type(_name, _size, pointer=_pointer)


class DeferredRoutines:
    def _init_deferred(self) -> None:
        self.dpc_queues: list[list[int]] = [[] for _ in range(self.processors)]
        self.work_queues: dict[int, list[int]] = {queue: [] for queue in WORK_QUEUE_ORDER}
        self._retiring = [False] * self.processors
        self._running_work_items = False
        self.deferred_log: list[tuple[str, int]] = []  # ("dpc" | "work item", routine), in order run
        self.deferred_queued = 0  # DPCs and work items queued: a free's checks look only when some are
        self._timer_dpcs: set[int] = set()  # queued DPCs the clock queued for a timer
        self.ready_threads: list = []  # system threads created and not yet run (ps_threads)

    # --- DPCs ----------------------------------------------------------------------------------

    @routine("BOOLEAN KeInsertQueueDpc(PRKDPC Dpc, PVOID SystemArgument1, PVOID SystemArgument2)")
    def KeInsertQueueDpc(self, Dpc, SystemArgument1, SystemArgument2) -> int:
        """Queue the DPC on its processor (FALSE if it is queued already); it runs at once
        if that processor is below DISPATCH_LEVEL, else when its IRQL drops below it."""
        return self.queue_dpc(Dpc, SystemArgument1, SystemArgument2)

    def queue_dpc(self, Dpc, SystemArgument1, SystemArgument2, timer: bool = False) -> int:
        """KeInsertQueueDpc; ``timer``: the clock's insertion of an expired timer's DPC."""
        if self._get64(Dpc + KDPC_DPC_DATA):
            return 0
        number = self._get16(Dpc + KDPC_NUMBER)
        processor = number - MAXIMUM_PROCESSORS if number >= MAXIMUM_PROCESSORS else self.current_processor
        if processor >= self.processors:
            self.KeBugCheckEx(BugCheckCode.TIMER_OR_DPC_INVALID, 3, Dpc, processor, self.processors,
                              detail=f"KeInsertQueueDpc of {Dpc:#x}, targeted at processor "
                                     f"{processor}; the machine has {self.processors}")
        self._put64(Dpc + KDPC_SYSTEM_ARGUMENT1, SystemArgument1)
        self._put64(Dpc + KDPC_SYSTEM_ARGUMENT2, SystemArgument2)
        self._put64(Dpc + KDPC_DPC_DATA, KDPC_DATA_STAND_IN + 0x40 * processor)
        queue = self.dpc_queues[processor]
        if self.read(Dpc + KDPC_IMPORTANCE, 1)[0] == HIGH_IMPORTANCE:
            queue.insert(0, Dpc)
        else:
            queue.append(Dpc)
        self.deferred_queued += 1
        if timer:
            self._timer_dpcs.add(Dpc)
        else:
            self._timer_dpcs.discard(Dpc)
        if self.irql_by_processor[processor] < DISPATCH_LEVEL:
            self.retire_dpcs(processor)
        return 1

    @routine("BOOLEAN KeRemoveQueueDpc(PRKDPC Dpc)")
    def KeRemoveQueueDpc(self, Dpc) -> int:
        """Take a queued DPC off its queue: TRUE if it was queued."""
        if not self._get64(Dpc + KDPC_DPC_DATA):
            return 0
        for queue in self.dpc_queues:
            if Dpc in queue:
                queue.remove(Dpc)
                self.deferred_queued -= 1
        self._put64(Dpc + KDPC_DPC_DATA, 0)
        return 1

    @routine("VOID KeFlushQueuedDpcs(VOID)")
    def KeFlushQueuedDpcs(self) -> None:
        """Return when every DPC queued on every processor has run (PASSIVE_LEVEL only)."""
        self._check_irql_at_most(PASSIVE_LEVEL, "KeFlushQueuedDpcs")
        for processor in range(self.processors):
            if self.dpc_queues[processor]:
                self.retire_dpcs(processor)

    @routine("VOID KeSetTargetProcessorDpc(PRKDPC Dpc, CCHAR Number)")
    def KeSetTargetProcessorDpc(self, Dpc, Number) -> None:
        self._put16(Dpc + KDPC_NUMBER, MAXIMUM_PROCESSORS + (Number & 0xFF))

    @routine("VOID KeSetImportanceDpc(PRKDPC Dpc, KDPC_IMPORTANCE Importance)")
    def KeSetImportanceDpc(self, Dpc, Importance) -> None:
        self._put8(Dpc + KDPC_IMPORTANCE, Importance & 0xFF)

    def retire_dpcs(self, processor: int | None = None) -> None:
        """Run the DPCs queued on ``processor`` (the current one by default) at
        DISPATCH_LEVEL there, in queue order, until its queue is empty (KiRetireDpcList).
        Each DPC leaves the queue (DpcData NULL) before its routine runs, so it may queue
        itself again."""
        processor = self.current_processor if processor is None else processor
        if self._retiring[processor] or self.halted:
            return
        queue = self.dpc_queues[processor]
        previous_processor = self.current_processor
        self._retiring[processor] = True
        try:
            if processor != previous_processor:
                self.set_current_processor(processor)
            old = self.irql_by_processor[processor]
            self._set_irql(DISPATCH_LEVEL)
            try:
                while queue and not self.halted:
                    dpc = queue.pop(0)
                    self.deferred_queued -= 1
                    self._put64(dpc + KDPC_DPC_DATA, 0)
                    self.run_dpc_routine(dpc, self._get64(dpc + KDPC_SYSTEM_ARGUMENT1),
                                         self._get64(dpc + KDPC_SYSTEM_ARGUMENT2),
                                         timer=dpc in self._timer_dpcs)
            finally:
                if not self.halted:
                    self._set_irql(old)
        finally:
            self._retiring[processor] = False
            if processor != previous_processor and not self.halted:
                self.set_current_processor(previous_processor)

    def run_dpc_routine(self, dpc: int, argument1: int, argument2: int, timer: bool = False) -> None:
        """Call a DPC's DeferredRoutine (Dpc, DeferredContext, SystemArgument1, 2) at the
        current IRQL (DISPATCH_LEVEL). A routine that leaves the thread's APC disable count
        changed (a KeEnterCriticalRegion with no KeLeaveCriticalRegion) is 0xC7
        TIMER_OR_DPC_INVALID (4, or 5 for a timer's DPC, routine, count before, after)."""
        self._timer_dpcs.discard(dpc)
        address = self._get64(dpc + KDPC_DEFERRED_ROUTINE)
        self._check_code_not_unloaded(address, "DPC routine")
        self.deferred_log.append(("dpc", address))
        before = self._kernel_apc_disable()
        self.call_code(address, dpc, self._get64(dpc + KDPC_DEFERRED_CONTEXT), argument1, argument2)
        after = self._kernel_apc_disable()
        if after != before and not self.halted:
            self.KeBugCheckEx(BugCheckCode.TIMER_OR_DPC_INVALID, 5 if timer else 4, address,
                              before & MASK64, after & MASK64,
                              detail=f"the {'timer ' if timer else ''}DPC routine {address:#x} "
                                     f"changed the thread's APC disable count from {before} to "
                                     f"{after} (a critical region entered and not left)")

    def _kernel_apc_disable(self) -> int:
        """KTHREAD.KernelApcDisable: 0, less one for each critical region entered."""
        return -getattr(self, "critical_region", 0)

    def _unloaded_driver_of(self, address: int) -> str | None:
        """The name of the unloaded driver whose code ``address`` was (MmLocateUnloadedDriver),
        for a compiled driver's image range or a Python driver's routine."""
        entry = self.python_code.get(address)
        if entry is not None:
            owner = entry[1]
            if owner is not None and owner not in self.drivers and \
                    getattr(owner, "name", None) in {name for name, _, _ in self.unloaded_drivers}:
                return owner.name
            return None
        for _, base, end in self._driver_images():  # a loaded image there: not "unloaded"
            if base <= address < end:
                return None
        for name, base, end in reversed(self.unloaded_drivers):
            if base <= address < end:
                return name
        return None

    def _check_code_not_unloaded(self, address: int, what: str) -> None:
        """Running code of a driver that unloaded without cancelling it: the page fault that
        KeBugCheckEx reports as 0xD4 at DISPATCH_LEVEL or above (address, IRQL, 8, address)
        and 0xCE below it (address, 8, address, 0), blaming the unloaded driver."""
        name = self._unloaded_driver_of(address)
        if name is None:
            return
        irql = self.irql_by_processor[self.current_processor]
        detail = f"{what} {address:#x} runs where {name} was: it unloaded without cancelling it"
        if irql >= DISPATCH_LEVEL:
            self.KeBugCheckEx(BugCheckCode.SYSTEM_SCAN_AT_RAISED_IRQL_CAUGHT_IMPROPER_DRIVER_UNLOAD,
                              address, irql, EXECUTE_FAULT, address, detail=detail, culprit=name)
        self.KeBugCheckEx(BugCheckCode.DRIVER_UNLOADED_WITHOUT_CANCELLING_PENDING_OPERATIONS, address,
                          EXECUTE_FAULT, address, 0, detail=detail, culprit=name)

    # --- what a free may not take with it (Driver Verifier on: ExFreePool's checks) -----------

    def check_free_for_deferred(self, start: int, size: int) -> None:
        """The checks ExFreePool makes of every block freed while Driver Verifier is on
        (WRK: ExpPoolFlags' EX_CHECK_POOL_FREES_FOR_ACTIVE_TIMERS and _WORKERS, set when
        Verifier starts): an armed timer in the block is 0xC7 TIMER_OR_DPC_INVALID (0, timer,
        start, end), a DPC in it, a timer's or a queued one, (1, DPC, start, end), a timer
        DPC's routine in it (2, routine, start, end) (KeCheckForTimer); a queued work item in
        it is 0xE4 WORKER_INVALID (0, item, start, end) (ExpCheckForWorker)."""
        if not (self.timers or self.deferred_queued):
            return
        end = start + size
        stop = BugCheckCode.TIMER_OR_DPC_INVALID
        for timer in self.timers:
            dpc = self._get64(timer + KTIMER_DPC)
            routine_address = self._get64(dpc + KDPC_DEFERRED_ROUTINE) if dpc else 0
            for kind, address, what in ((0, timer, "an armed timer"), (1, dpc, "its DPC"),
                                        (2, routine_address, "its DPC routine")):
                if address and start <= address < end:
                    self.KeBugCheckEx(stop, kind, address, start, end,
                                      detail=f"free of {start:#x}..{end:#x}, which holds {what} "
                                             f"({address:#x}; timer {timer:#x})")
        for queue in self.dpc_queues:
            for dpc in queue:
                if start <= dpc < end:
                    self.KeBugCheckEx(stop, 1, dpc, start, end,
                                      detail=f"free of {start:#x}..{end:#x}, which holds the "
                                             f"queued DPC {dpc:#x}")
        for queue_type in WORK_QUEUE_ORDER:
            for item in self.work_queues[queue_type]:
                if start <= item < end:
                    self.KeBugCheckEx(WORKER_INVALID, 0, item, start, end,
                                      detail=f"free of {start:#x}..{end:#x}, which holds the "
                                             f"queued work item {item:#x}")

    # --- executive work items ----------------------------------------------------------------

    def initialize_work_item(self, Item, Routine, Context) -> None:
        """ExInitializeWorkItem (a wdm.h macro), for Python drivers."""
        self._put64(Item, 0)
        self._put64(Item + WORK_QUEUE_ITEM_WORKER_ROUTINE, Routine)
        self._put64(Item + WORK_QUEUE_ITEM_PARAMETER, Context)

    @routine("VOID ExQueueWorkItem(PWORK_QUEUE_ITEM WorkItem, WORK_QUEUE_TYPE QueueType)")
    def ExQueueWorkItem(self, WorkItem, QueueType) -> None:
        """Queue the item for a system worker thread (it runs at PASSIVE_LEVEL when this
        thread next gives up the processor). A WorkerRoutine at or below MmUserProbeAddress
        is WORKER_INVALID (1, item, routine, 0), as WRK's ExQueueWorkItem checks; one queued
        already is (0, item, queue, 0) (ntpool's reading of the checked build's ASSERT)."""
        self._check_irql_at_most(DISPATCH_LEVEL, "ExQueueWorkItem")
        routine_address = self._get64(WorkItem + WORK_QUEUE_ITEM_WORKER_ROUTINE)
        if routine_address <= MM_USER_PROBE_ADDRESS:
            self.KeBugCheckEx(WORKER_INVALID, 1, WorkItem, routine_address, 0,
                              detail=f"ExQueueWorkItem of {WorkItem:#x}, whose WorkerRoutine "
                                     f"{routine_address:#x} is not a kernel address")
        queue_type = QueueType if 0 <= QueueType < MAXIMUM_WORK_QUEUE else DELAYED_WORK_QUEUE
        if self._work_item_queued(WorkItem):
            self.KeBugCheckEx(WORKER_INVALID, 0, WorkItem, EX_WORKER_QUEUE_STAND_IN, 0,
                              detail=f"ExQueueWorkItem of {WorkItem:#x}, which is queued already")
        self._put64(WorkItem, EX_WORKER_QUEUE_STAND_IN + 0x40 * queue_type)
        self.work_queues[queue_type].append(WorkItem)
        self.deferred_queued += 1

    def _work_item_queued(self, item: int) -> bool:
        return any(item in queue for queue in self.work_queues.values())

    def work_items_pending(self) -> int:
        """Work items queued, and system threads waiting for their first turn."""
        return sum(len(queue) for queue in self.work_queues.values()) + len(self.ready_threads)

    def run_work_items(self, io_only: bool = False) -> int:
        """What the system worker threads do when they get the processor: run every queued
        work item at PASSIVE_LEVEL (and those they queue), highest queue priority first.
        Returns how many ran (``io_only``: only I/O work items, whose IoObject reference
        holds their driver's image while DriverUnload's are run). Nothing runs while a work item is running (its own wait lets
        no other worker in: one worker thread), while the machine is halted, or above
        APC_LEVEL (a worker cannot take a processor that is at DISPATCH_LEVEL)."""
        if not (self.deferred_queued or self.ready_threads):  # the usual call: nothing queued
            return 0  # (deferred_queued counts the work items, and the DPCs a lowering would run)
        if self._running_work_items or self.halted or \
                self.irql_by_processor[self.current_processor] >= DISPATCH_LEVEL:
            return 0
        ran = 0
        old = self.irql_by_processor[self.current_processor]
        self._running_work_items = True
        try:
            if old != PASSIVE_LEVEL:
                self._set_irql(PASSIVE_LEVEL)
            while not self.halted:
                item = self._next_work_item(io_only)
                if item is None:
                    if io_only or not self.ready_threads:
                        break
                    self.run_ready_thread()  # then the system threads, in the order created
                else:
                    self._run_work_item(item)
                ran += 1
        finally:
            self._running_work_items = False
            if not self.halted and self.irql_by_processor[self.current_processor] != old:
                self._set_irql(old)
        return ran

    def _next_work_item(self, io_only: bool) -> int | None:
        """Take the next item off the highest-priority queue that has one (only I/O work
        items: ``io_only``)."""
        for queue_type in WORK_QUEUE_ORDER:
            queue = self.work_queues[queue_type]
            for index, item in enumerate(queue):
                if not io_only or self._get64(item + WORK_QUEUE_ITEM_WORKER_ROUTINE) == IOP_PROCESS_WORK_ITEM:
                    self.deferred_queued -= 1
                    return queue.pop(index)
        return None

    def _run_work_item(self, item: int) -> None:
        # The worker reads the item first (an item in memory that is gone faults here, in
        # the kernel's code: 0x50), then marks it not queued (it may be queued again).
        routine_address = self._get64(item + WORK_QUEUE_ITEM_WORKER_ROUTINE)
        parameter = self._get64(item + WORK_QUEUE_ITEM_PARAMETER)
        self._put64(item, 0)
        if routine_address == IOP_PROCESS_WORK_ITEM:
            self._process_io_work_item(parameter)
            return
        self._check_code_not_unloaded(routine_address, "work item routine")
        self.deferred_log.append(("work item", routine_address))
        self.call_code(routine_address, parameter)

    def return_to_kernel(self) -> None:
        """A driver's top-level call returned to the kernel: the worker threads run."""
        if self.work_items_pending() and not self._running_work_items:
            self.run_work_items()

    # --- I/O work items ----------------------------------------------------------------------

    @routine("PIO_WORKITEM IoAllocateWorkItem(PDEVICE_OBJECT DeviceObject)")
    def IoAllocateWorkItem(self, DeviceObject) -> int:
        """An IO_WORKITEM from nonpaged pool (tag "IOWI"), charged to the caller; NULL when
        the pool has none."""
        item = self._io_allocate(0, IO_WORKITEM_SIZE, TAG_IO_WORKITEM, True)
        if item:
            self.IoInitializeWorkItem(DeviceObject, item)
        return item or 0

    @routine("ULONG IoSizeofWorkItem(VOID)")
    def IoSizeofWorkItem(self) -> int:
        return IO_WORKITEM_SIZE

    @routine("VOID IoInitializeWorkItem(PVOID IoObject, PIO_WORKITEM IoWorkItem)")
    def IoInitializeWorkItem(self, IoObject, IoWorkItem) -> None:
        self.write(IoWorkItem, bytes(IO_WORKITEM_SIZE))
        self.initialize_work_item(IoWorkItem, IOP_PROCESS_WORK_ITEM, IoWorkItem)
        self._put64(IoWorkItem + IO_WORKITEM_IO_OBJECT, IoObject)

    @routine("VOID IoUninitializeWorkItem(PIO_WORKITEM IoWorkItem)")
    def IoUninitializeWorkItem(self, IoWorkItem) -> None:
        self._check_io_work_item_idle(IoWorkItem, "IoUninitializeWorkItem")

    @routine("VOID IoFreeWorkItem(PIO_WORKITEM IoWorkItem)")
    def IoFreeWorkItem(self, IoWorkItem) -> None:
        """Free an IoAllocateWorkItem work item; one still queued is WORKER_INVALID (0, the
        item, the block's start, its end), the answer ExFreePool's worker check gives (WRK
        ExpCheckForWorker), here whether or not Driver Verifier is on (departures)."""
        self._check_io_work_item_idle(IoWorkItem, "IoFreeWorkItem")
        self.ExFreePoolWithTag(IoWorkItem, TAG_IO_WORKITEM)

    def _check_io_work_item_idle(self, item: int, what: str) -> None:
        if self._work_item_queued(item):
            self.KeBugCheckEx(WORKER_INVALID, 0, item, item, item + IO_WORKITEM_SIZE,
                              detail=f"{what} of {item:#x}, which is still queued")

    @routine("VOID IoQueueWorkItem(PIO_WORKITEM IoWorkItem, PIO_WORKITEM_ROUTINE WorkerRoutine, "
             "WORK_QUEUE_TYPE QueueType, PVOID Context)")
    def IoQueueWorkItem(self, IoWorkItem, WorkerRoutine, QueueType, Context) -> None:
        """Queue the item; its routine gets (DeviceObject, Context). The IoObject is
        referenced until the routine returns, so its driver cannot unload before."""
        self._queue_io_work_item(IoWorkItem, WorkerRoutine, QueueType, Context, 0)

    @routine("VOID IoQueueWorkItemEx(PIO_WORKITEM IoWorkItem, PIO_WORKITEM_ROUTINE_EX WorkerRoutine, "
             "WORK_QUEUE_TYPE QueueType, PVOID Context)")
    def IoQueueWorkItemEx(self, IoWorkItem, WorkerRoutine, QueueType, Context) -> None:
        """As IoQueueWorkItem; the routine gets (IoObject, Context, IoWorkItem)."""
        self._queue_io_work_item(IoWorkItem, WorkerRoutine, QueueType, Context, 1)

    def _queue_io_work_item(self, item, worker, queue_type, context, kind) -> None:
        self._check_irql_at_most(DISPATCH_LEVEL, "IoQueueWorkItem")
        if self._work_item_queued(item):
            self.KeBugCheckEx(WORKER_INVALID, 0, item, EX_WORKER_QUEUE_STAND_IN, 0,
                              detail=f"IoQueueWorkItem of {item:#x}, which is queued already")
        self._put64(item + IO_WORKITEM_ROUTINE, worker)
        self._put64(item + IO_WORKITEM_CONTEXT, context)
        self._put32(item + IO_WORKITEM_TYPE, kind)
        io_object = self._get64(item + IO_WORKITEM_IO_OBJECT)
        if io_object:
            self.ObfReferenceObject(io_object)
        self.ExQueueWorkItem(item, queue_type)

    def _process_io_work_item(self, item: int) -> None:
        """IopProcessWorkItem: the driver's routine, then the IoObject's reference dropped."""
        worker = self._get64(item + IO_WORKITEM_ROUTINE)
        io_object = self._get64(item + IO_WORKITEM_IO_OBJECT)
        context = self._get64(item + IO_WORKITEM_CONTEXT)
        self._check_code_not_unloaded(worker, "work item routine")
        self.deferred_log.append(("work item", worker))
        if self._get32(item + IO_WORKITEM_TYPE):
            self.call_code(worker, io_object, context, item)
        else:
            self.call_code(worker, io_object, context)
        if io_object and not self.halted:
            self.ObfDereferenceObject(io_object)
