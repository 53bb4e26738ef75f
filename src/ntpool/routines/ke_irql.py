"""Processors, their IRQL, and spin locks (the Ke routines drivers call).

Each processor has its own IRQL; the caller runs on ``k.current_processor``, chosen with
``k.set_current_processor(n)`` (what KeSetSystemAffinityThread does for a thread). Every
IRQL change tells the allocator, which narrows its fast paths so that the IRQL rules of
the pool routines are checked on the generic path and cost nothing otherwise.

Errors follow the checked HAL: raising to a lower IRQL is IRQL_NOT_GREATER_OR_EQUAL (0x9)
and lowering to a higher IRQL IRQL_NOT_LESS_OR_EQUAL (0xA), both with (current IRQL,
requested IRQL, 0, 0).
"""

from ..constants import DISPATCH_LEVEL, HIGH_LEVEL, PASSIVE_LEVEL, BugCheckCode
from ..errors import MachineHung, allowed_when_halted
from ..hooks import IrqlRaised
from .registry import routine

SPIN_LOCK_FREE = 0
SPIN_LOCK_BIT = 1  # what x64's KxAcquireSpinLock sets with lock bts and spins on


def _checked_irql(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an IRQL (int 0..15), not {type(value).__name__}")
    if not PASSIVE_LEVEL <= value <= HIGH_LEVEL:
        raise ValueError(f"{name} {value} is not an x64 IRQL (0..15)")
    return int(value)


class IrqlRoutines:
    @property
    def current_irql(self) -> int:
        return self.irql_by_processor[self.current_processor]

    def _set_irql(self, irql: int) -> None:
        old = self.irql_by_processor[self.current_processor]
        self.irql_by_processor[self.current_processor] = irql
        self.pool.set_irql(irql)
        if irql > old:
            listeners = self.hooks.listening(IrqlRaised)
            if listeners:
                event = IrqlRaised(self.current_processor, old, irql)
                for listener in listeners:
                    listener(event)

    def set_current_processor(self, number) -> None:
        """Run the caller on processor ``number`` (its IRQL and lookaside lists apply)."""
        if isinstance(number, bool) or not isinstance(number, int) or \
                not 0 <= number < self.processors:
            raise ValueError(f"processor number must be an int from 0 to {self.processors - 1}, "
                             f"got {number!r}")
        self.current_processor = number
        for pool in (self.nonpaged_pool, self.paged_pool):
            pool.select_processor(number)
        self.pool.set_irql(self.irql_by_processor[number])
        self.pool.refresh_fast_paths()  # the fast paths hold the processor's lookaside lists

    @routine("KIRQL KeGetCurrentIrql(VOID)")
    @allowed_when_halted
    def KeGetCurrentIrql(self) -> int:
        return self.irql_by_processor[self.current_processor]

    @routine("ULONG KeGetCurrentProcessorNumber(VOID)")
    def KeGetCurrentProcessorNumber(self) -> int:
        return self.current_processor

    @routine("VOID KeRaiseIrql(_In_ KIRQL NewIrql, _Out_ PKIRQL OldIrql)")
    def KeRaiseIrql(self, NewIrql) -> int:
        """Raise the current processor's IRQL; returns the old IRQL (the OldIrql out value)."""
        new = _checked_irql("NewIrql", NewIrql)
        old = self.current_irql
        if new < old:
            self.KeBugCheckEx(BugCheckCode.IRQL_NOT_GREATER_OR_EQUAL, old, new, 0, 0,
                              detail=f"KeRaiseIrql to {new} from the higher IRQL {old}")
        self._set_irql(new)
        return old

    @routine("KIRQL KeRaiseIrqlToDpcLevel(VOID)")
    def KeRaiseIrqlToDpcLevel(self) -> int:
        return self.KeRaiseIrql(DISPATCH_LEVEL)

    @routine("VOID KeLowerIrql(_In_ KIRQL NewIrql)")
    def KeLowerIrql(self, NewIrql) -> None:
        """Lower the current processor's IRQL to ``NewIrql`` (the value KeRaiseIrql returned)."""
        new = _checked_irql("NewIrql", NewIrql)
        old = self.current_irql
        if new > old:
            self.KeBugCheckEx(BugCheckCode.IRQL_NOT_LESS_OR_EQUAL, old, new, 0, 0,
                              detail=f"KeLowerIrql to {new} from the lower IRQL {old}")
        self._set_irql(new)

    # --- spin locks: a KSPIN_LOCK is a ULONG_PTR in (nonpaged) memory -----------------------
    # Kept in the lock's own 8 bytes at its address, whatever its alignment: x64 Windows takes
    # a lock with `lock bts qword [SpinLock], 0` (WRK/ReactOS amd64 KxAcquireSpinLock,
    # InterlockedBitTestAndSet64) and frees it with a store of 0, and the CPU runs both on
    # any address; no Windows routine, checked build or Driver Verifier option refuses a
    # misaligned KSPIN_LOCK.

    @routine("VOID KeInitializeSpinLock(PKSPIN_LOCK SpinLock)")
    def KeInitializeSpinLock(self, SpinLock) -> None:
        self.write(_checked_lock(SpinLock), SPIN_LOCK_FREE.to_bytes(8, "little"))

    @routine("VOID KeAcquireSpinLock(_Inout_ PKSPIN_LOCK SpinLock, _Out_ PKIRQL OldIrql)")
    def KeAcquireSpinLock(self, SpinLock) -> int:
        """Raise to DISPATCH_LEVEL and take the lock; returns the old IRQL."""
        lock = _checked_lock(SpinLock)
        old = self.KeRaiseIrql(DISPATCH_LEVEL)
        self._take_lock(lock)
        return old

    @routine("VOID KeAcquireSpinLockAtDpcLevel(_Inout_ PKSPIN_LOCK SpinLock)")
    def KeAcquireSpinLockAtDpcLevel(self, SpinLock) -> None:
        lock = _checked_lock(SpinLock)
        irql = self.current_irql
        if irql < DISPATCH_LEVEL:
            self.KeBugCheckEx(BugCheckCode.IRQL_NOT_GREATER_OR_EQUAL, lock, irql, 0, 0,
                              detail=f"KeAcquireSpinLockAtDpcLevel at IRQL {irql}")
        self._take_lock(lock)

    @routine("VOID KeReleaseSpinLock(_Inout_ PKSPIN_LOCK SpinLock, _In_ KIRQL NewIrql)")
    def KeReleaseSpinLock(self, SpinLock, NewIrql) -> None:
        """Release the lock and lower the IRQL to ``NewIrql`` (what KeAcquireSpinLock returned)."""
        lock = _checked_lock(SpinLock)
        new = _checked_irql("NewIrql", NewIrql)
        self._drop_lock(lock)
        self.KeLowerIrql(new)

    @routine("VOID KeReleaseSpinLockFromDpcLevel(_Inout_ PKSPIN_LOCK SpinLock)")
    def KeReleaseSpinLockFromDpcLevel(self, SpinLock) -> None:
        self._drop_lock(_checked_lock(SpinLock))

    def _lock_value(self, lock: int) -> int:
        """The lock's QWORD. Taking or freeing a lock is a locked read-modify-write (or a
        store): a page of it that is not there faults as a write, whatever its alignment
        (a misaligned lock may span two pages)."""
        if (lock >> 12) not in self._tlb or lock & 0xFFF > 0xFF8:
            self._pieces(lock, 8, write=True)
        return int.from_bytes(self.read(lock, 8), "little")

    def _held_value(self) -> int:
        """A lock this processor holds: bit 0, Windows' lock bit, and above it the processor
        (ntpool's record of the owner, as a checked build records the owning thread)."""
        return self.current_processor << 1 | SPIN_LOCK_BIT

    def _take_lock(self, lock: int) -> None:
        value = self._lock_value(lock)
        me = self._held_value()
        if value == me:
            self.KeBugCheckEx(BugCheckCode.SPIN_LOCK_ALREADY_OWNED, lock, 0, 0, 0,
                              detail=f"spin lock {lock:#x} is already owned by this processor")
        if value & SPIN_LOCK_BIT:
            # x64's acquire spins while bit 0 is set. One simulated thread of control: the
            # other owner can never run to release it (a hang at DISPATCH_LEVEL, which
            # Windows 8 and later stop with their DPC watchdog: ntpool.native.refusals).
            owner = value >> 1
            held = f"held by processor {owner}" if owner < self.processors else \
                f"held (its lock bit is set: {value:#x})"
            raise MachineHung(f"spin lock {lock:#x} is {held}; acquiring it on processor "
                              f"{self.current_processor} would spin forever (release it there "
                              f"first)")
        # Bit 0 clear: the lock is free, whatever else a stray write left in its QWORD.
        self.write(lock, me.to_bytes(8, "little"))

    def _drop_lock(self, lock: int) -> None:
        owner = self._lock_value(lock)
        if owner != self._held_value():
            self.KeBugCheckEx(BugCheckCode.SPIN_LOCK_NOT_OWNED, lock, 0, 0, 0,
                              detail=f"release of spin lock {lock:#x}, which this processor "
                                     f"does not own")
        self.write(lock, SPIN_LOCK_FREE.to_bytes(8, "little"))


def _checked_lock(lock) -> int:
    if isinstance(lock, bool) or not isinstance(lock, int):
        raise TypeError(f"SpinLock must be the address of a KSPIN_LOCK (int), "
                        f"not {type(lock).__name__}")
    if not 0 < lock < 1 << 64:
        raise ValueError(f"SpinLock {lock:#x} is not an address")
    return lock
