"""Run-down protection: the EX_RUNDOWN_REF routines (ExInitializeRundownProtection and the
rest), in the driver's memory as Windows keeps it.

EX_RUNDOWN_REF is one ULONG_PTR, Count (WRK ex/rundown.c, wdm.h's EX_RUNDOWN_*): bit 0,
EX_RUNDOWN_ACTIVE, says run-down has begun; while it is clear the bits above it count the
protections granted (each acquire adds EX_RUNDOWN_COUNT_INC, 2). ExWaitForRundownProtectionRelease
with protections outstanding stores the address of a wait block on the waiting thread's stack
with EX_RUNDOWN_ACTIVE (EX_RUNDOWN_WAIT_BLOCK: the count still held, a notification KEVENT the
last release sets) and waits; ExRundownCompleted then replaces that stale pointer with
EX_RUNDOWN_ACTIVE alone, and ExReInitializeRundownProtection makes it 0 again.

One thread of control: a wait with protections outstanding gives up the processor as any
wait does (queued work items run, and one may release them); still held, it can never end:
``WaitForever`` (``NativeError`` from a compiled driver), as for KeWaitForSingleObject.
"""

from __future__ import annotations

from ..constants import APC_LEVEL, DISPATCH_LEVEL
from . import layouts as L
from .ke_sync import WaitForever
from .registry import register_type, routine

EX_RUNDOWN_ACTIVE = 0x1
EX_RUNDOWN_COUNT_SHIFT = 1
EX_RUNDOWN_COUNT_INC = 1 << EX_RUNDOWN_COUNT_SHIFT
# EX_RUNDOWN_WAIT_BLOCK (x64): Count (ULONG_PTR), WakeEvent (KEVENT).
WAIT_BLOCK_COUNT = 0x00
WAIT_BLOCK_EVENT = 0x08
WAIT_BLOCK_SIZE = 0x08 + L.KEVENT_SIZE
MASK64 = (1 << 64) - 1
_DISPATCH = int(DISPATCH_LEVEL)  # a plain int: the inline paths' IRQL test takes it at once

register_type("PEX_RUNDOWN_REF", 8, pointer=True)


class RundownRoutines:
    def _init_rundown(self) -> None:
        # The one thread's stack frames for rundown waits, by nesting depth (a work item
        # that runs during a wait may wait on another EX_RUNDOWN_REF).
        self._rundown_wait_blocks: list[int] = []
        self._rundown_wait_depth = 0

    @routine("VOID ExInitializeRundownProtection(PEX_RUNDOWN_REF RunRef)")
    def ExInitializeRundownProtection(self, RunRef) -> None:
        self._put64(RunRef, 0)

    @routine("VOID ExReInitializeRundownProtection(PEX_RUNDOWN_REF RunRef)")
    def ExReInitializeRundownProtection(self, RunRef) -> None:
        """After a completed run-down: protections may be granted again."""
        self._put64(RunRef, 0)

    # The usual acquire and release, inline: at or below DISPATCH_LEVEL, an aligned Count on
    # a present page, run-down not begun, nobody listening for memory writes. Its QWORD is
    # read and written in ``_words`` (one index each, not ``_get64`` / ``_put64``'s calls
    # through ``read`` and ``write``). Anything else (too high an IRQL, a misaligned or
    # absent Count, run-down under way, a machine publishing writes): the way below, which
    # bug-checks, faults and publishes as before.

    @routine("BOOLEAN ExAcquireRundownProtection(PEX_RUNDOWN_REF RunRef)")
    def ExAcquireRundownProtection(self, RunRef) -> int:
        """TRUE and one more protection counted; FALSE once run-down has begun."""
        if type(RunRef) is int and not RunRef & 7 and not self._writes_published and \
                self.irql_by_processor[self.current_processor] <= _DISPATCH:
            base = self._tlb.get(RunRef >> 12)
            if base is not None:
                word = (base + (RunRef & 0xFFF)) >> 3
                value = self._words[word]
                if not value & EX_RUNDOWN_ACTIVE:
                    self._words[word] = (value + EX_RUNDOWN_COUNT_INC) & MASK64
                    return 1
        return self._acquire_rundown(RunRef, 1, "ExAcquireRundownProtection")

    @routine("BOOLEAN ExAcquireRundownProtectionEx(PEX_RUNDOWN_REF RunRef, ULONG Count)")
    def ExAcquireRundownProtectionEx(self, RunRef, Count) -> int:
        return self._acquire_rundown(RunRef, Count, "ExAcquireRundownProtectionEx")

    def _acquire_rundown(self, run_ref: int, count: int, what: str) -> int:
        self._check_irql_at_most(DISPATCH_LEVEL, what)
        value = self._get64(run_ref)
        if value & EX_RUNDOWN_ACTIVE:
            return 0
        self._put64(run_ref, value + (count << EX_RUNDOWN_COUNT_SHIFT))
        return 1

    @routine("VOID ExReleaseRundownProtection(PEX_RUNDOWN_REF RunRef)")
    def ExReleaseRundownProtection(self, RunRef) -> None:
        """One protection fewer; during a run-down wait, the wait block's count, and the
        last release sets its event. A release of none granted wraps the count, as the
        free build's subtraction does (the checked build asserts)."""
        if type(RunRef) is int and not RunRef & 7 and not self._writes_published and \
                self.irql_by_processor[self.current_processor] <= _DISPATCH:
            base = self._tlb.get(RunRef >> 12)
            if base is not None:
                word = (base + (RunRef & 0xFFF)) >> 3
                value = self._words[word]
                if not value & EX_RUNDOWN_ACTIVE:
                    self._words[word] = (value - EX_RUNDOWN_COUNT_INC) & MASK64
                    return
        self._release_rundown(RunRef, 1, "ExReleaseRundownProtection")

    @routine("VOID ExReleaseRundownProtectionEx(PEX_RUNDOWN_REF RunRef, ULONG Count)")
    def ExReleaseRundownProtectionEx(self, RunRef, Count) -> None:
        self._release_rundown(RunRef, Count, "ExReleaseRundownProtectionEx")

    def _release_rundown(self, run_ref: int, count: int, what: str) -> None:
        self._check_irql_at_most(DISPATCH_LEVEL, what)
        value = self._get64(run_ref)
        if not value & EX_RUNDOWN_ACTIVE:
            self._put64(run_ref, value - (count << EX_RUNDOWN_COUNT_SHIFT))
            return
        block = value & ~EX_RUNDOWN_ACTIVE
        if not block:
            return  # run down and completed: nothing is waiting (WRK: the free build's path)
        left = (self._get64(block + WAIT_BLOCK_COUNT) - count) & MASK64
        self._put64(block + WAIT_BLOCK_COUNT, left)
        if left == 0:
            self.KeSetEvent(block + WAIT_BLOCK_EVENT, 0, 0)

    @routine("VOID ExWaitForRundownProtectionRelease(PEX_RUNDOWN_REF RunRef)")
    def ExWaitForRundownProtectionRelease(self, RunRef) -> None:
        """Begin run-down (no protection is granted after it) and return when every one
        granted is released. Above APC_LEVEL is 0xA; protections nothing releases while
        the thread waits are ``WaitForever``."""
        self._check_irql_at_most(APC_LEVEL, "ExWaitForRundownProtectionRelease")
        value = self._get64(RunRef)
        if value in (0, EX_RUNDOWN_ACTIVE):
            self._put64(RunRef, EX_RUNDOWN_ACTIVE)
            return
        if value & EX_RUNDOWN_ACTIVE:
            block = value & ~EX_RUNDOWN_ACTIVE  # another wait's block: wait on its event
        else:
            block = self._rundown_wait_block()
            self._put64(block + WAIT_BLOCK_COUNT, value >> EX_RUNDOWN_COUNT_SHIFT)
            self.KeInitializeEvent(block + WAIT_BLOCK_EVENT, 0, 0)
            self._put64(RunRef, block | EX_RUNDOWN_ACTIVE)
        self._rundown_wait_depth += 1
        try:
            self.KeWaitForSingleObject(block + WAIT_BLOCK_EVENT, 0, 0, 0, 0)
        except WaitForever:
            held = self._get64(block + WAIT_BLOCK_COUNT)
            raise WaitForever(f"ExWaitForRundownProtectionRelease of {RunRef:#x} with {held} "
                              f"protection(s) still held and nothing left to run that could "
                              f"release them: only another thread could, and ntpool runs one "
                              f"thread") from None
        finally:
            self._rundown_wait_depth -= 1

    def _rundown_wait_block(self) -> int:
        depth = self._rundown_wait_depth
        while len(self._rundown_wait_blocks) <= depth:
            self._rundown_wait_blocks.append(self.kernel_data.reserve(WAIT_BLOCK_SIZE, align=16))
        return self._rundown_wait_blocks[depth]

    @routine("VOID ExRundownCompleted(PEX_RUNDOWN_REF RunRef)")
    def ExRundownCompleted(self, RunRef) -> None:
        """Run-down is over: Count is EX_RUNDOWN_ACTIVE alone (the wait block is gone)."""
        self._put64(RunRef, EX_RUNDOWN_ACTIVE)
