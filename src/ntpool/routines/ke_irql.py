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
_ADDRESS_END = 1 << 64
_DISPATCH = int(DISPATCH_LEVEL)  # plain ints: the checks take them at their first test
_HIGH = int(HIGH_LEVEL)
# KLOCK_QUEUE_HANDLE (x64, 0x18 bytes): LockQueue (KSPIN_LOCK_QUEUE: Next, Lock), OldIrql.
LOCK_QUEUE_NEXT = 0x00
LOCK_QUEUE_LOCK = 0x08
LOCK_QUEUE_OLD_IRQL = 0x10


def _checked_irql(name: str, value) -> int:
    if type(value) is int and PASSIVE_LEVEL <= value <= HIGH_LEVEL:  # the usual one, first
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an IRQL (int 0..15), not {type(value).__name__}")
    if not PASSIVE_LEVEL <= value <= HIGH_LEVEL:
        raise ValueError(f"{name} {value} is not an x64 IRQL (0..15)")
    return int(value)


class IrqlRoutines:
    def _init_irql(self) -> None:
        # The queued spin locks held: lock -> (processor, its owner's KLOCK_QUEUE_HANDLE).
        self._queued_lock_owners: dict[int, tuple[int, int]] = {}
        # Whether someone listens for IRQL raises (Driver Verifier's IRQL checking): the
        # spin lock pair's inline path is taken only while nobody does.
        self._irql_raises_published = bool(self.hooks.listening(IrqlRaised))
        self.hooks.watch(IrqlRaised, self._publish_irql_raises)

    def _publish_irql_raises(self, active: bool) -> None:
        self._irql_raises_published = active

    @property
    def current_irql(self) -> int:
        return self.irql_by_processor[self.current_processor]

    def _set_irql(self, irql: int) -> None:
        processor, irqls = self.current_processor, self.irql_by_processor
        old = irqls[processor]
        irqls[processor] = irql
        self.pool.set_irql(irql)
        if irql < _DISPATCH <= old:
            # The DISPATCH software interrupt: DPCs queued while the IRQL was raised run now.
            if self.dpc_queues[processor]:
                self.retire_dpcs()
        elif irql > old and self._irql_raises_published:
            event = IrqlRaised(processor, old, irql)
            for listener in self.hooks.listening(IrqlRaised):
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

    # KeRaiseIrql, KeRaiseIrqlToDpcLevel and KeLowerIrql: the usual call inline (an IRQL
    # the check passes, going the way the routine goes, nobody listening for raises or, as
    # on the tests' other machine, for memory writes), the steps of ``_set_irql`` without
    # its call. Anything else: ``_raise_irql`` / ``_lower_irql``, which bug-check, name a
    # wrong argument and publish.

    @routine("VOID KeRaiseIrql(_In_ KIRQL NewIrql, _Out_ PKIRQL OldIrql)")
    def KeRaiseIrql(self, NewIrql) -> int:
        """Raise the current processor's IRQL; returns the old IRQL (the OldIrql out value)."""
        processor, irqls = self.current_processor, self.irql_by_processor
        old = irqls[processor]
        if type(NewIrql) is int and old <= NewIrql <= _HIGH and not self._irql_raises_published \
                and not self._writes_published:
            irqls[processor] = NewIrql
            self.pool.set_irql(NewIrql)
            return old
        return self._raise_irql(_checked_irql("NewIrql", NewIrql))

    def _raise_irql(self, new: int) -> int:
        """KeRaiseIrql of an IRQL already checked (0..15)."""
        old = self.irql_by_processor[self.current_processor]
        if new < old:
            self.KeBugCheckEx(BugCheckCode.IRQL_NOT_GREATER_OR_EQUAL, old, new, 0, 0,
                              detail=f"KeRaiseIrql to {new} from the higher IRQL {old}")
        self._set_irql(new)
        return old

    @routine("KIRQL KeRaiseIrqlToDpcLevel(VOID)")
    def KeRaiseIrqlToDpcLevel(self) -> int:
        processor, irqls = self.current_processor, self.irql_by_processor
        old = irqls[processor]
        if old <= _DISPATCH and not self._irql_raises_published and not self._writes_published:
            irqls[processor] = _DISPATCH
            self.pool.set_irql(_DISPATCH)
            return old
        return self._raise_irql(_DISPATCH)

    @routine("VOID KeLowerIrql(_In_ KIRQL NewIrql)")
    def KeLowerIrql(self, NewIrql) -> None:
        """Lower the current processor's IRQL to ``NewIrql`` (the value KeRaiseIrql returned)."""
        processor, irqls = self.current_processor, self.irql_by_processor
        old = irqls[processor]
        if type(NewIrql) is int and 0 <= NewIrql <= old and not self._writes_published:
            irqls[processor] = NewIrql
            self.pool.set_irql(NewIrql)
            if NewIrql < _DISPATCH <= old and self.dpc_queues[processor]:
                self.retire_dpcs()  # the DISPATCH software interrupt
            return
        self._lower_irql(_checked_irql("NewIrql", NewIrql))

    def _lower_irql(self, new: int) -> None:
        """KeLowerIrql of an IRQL already checked (0..15)."""
        old = self.irql_by_processor[self.current_processor]
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

    # The usual pair, inline: a free lock in an aligned QWORD on a present page, taken at or
    # below DISPATCH_LEVEL and released to an IRQL at or below the current one by the
    # processor that holds it, nobody listening for memory writes or IRQL raises. The same
    # steps as the way below (``_raise_irql``, ``_set_irql``, ``_take_lock``; ``_drop_lock``,
    # ``_lower_irql``), one Python call instead of five or six. Anything else (a held lock,
    # an IRQL to bug-check, a lock to fault on or to name as a wrong argument): that way.

    @routine("VOID KeAcquireSpinLock(_Inout_ PKSPIN_LOCK SpinLock, _Out_ PKIRQL OldIrql)")
    def KeAcquireSpinLock(self, SpinLock) -> int:
        """Raise to DISPATCH_LEVEL and take the lock; returns the old IRQL."""
        processor, irqls = self.current_processor, self.irql_by_processor
        old = irqls[processor]
        if type(SpinLock) is int and old <= _DISPATCH and not SpinLock & 7 and 0 < SpinLock and \
                not self._writes_published and not self._irql_raises_published:
            base = self._tlb.get(SpinLock >> 12)
            if base is not None:
                word = (base + (SpinLock & 0xFFF)) >> 3
                if not self._words[word] & SPIN_LOCK_BIT:
                    irqls[processor] = _DISPATCH  # _set_irql's
                    self.pool.set_irql(_DISPATCH)
                    self._words[word] = processor << 1 | SPIN_LOCK_BIT  # _take_lock's
                    return old
        lock = _checked_lock(SpinLock)
        old = self._raise_irql(_DISPATCH)
        self._take_lock(lock)
        return old

    @routine("VOID KeAcquireSpinLockAtDpcLevel(_Inout_ PKSPIN_LOCK SpinLock)")
    def KeAcquireSpinLockAtDpcLevel(self, SpinLock) -> None:
        lock = _checked_lock(SpinLock)
        irql = self.irql_by_processor[self.current_processor]
        if irql < DISPATCH_LEVEL:
            self.KeBugCheckEx(BugCheckCode.IRQL_NOT_GREATER_OR_EQUAL, lock, irql, 0, 0,
                              detail=f"KeAcquireSpinLockAtDpcLevel at IRQL {irql}")
        self._take_lock(lock)

    @routine("VOID KeReleaseSpinLock(_Inout_ PKSPIN_LOCK SpinLock, _In_ KIRQL NewIrql)")
    def KeReleaseSpinLock(self, SpinLock, NewIrql) -> None:
        """Release the lock and lower the IRQL to ``NewIrql`` (what KeAcquireSpinLock returned)."""
        processor, irqls = self.current_processor, self.irql_by_processor
        old = irqls[processor]
        if type(SpinLock) is int and type(NewIrql) is int and 0 <= NewIrql <= old and \
                not SpinLock & 7 and 0 < SpinLock and not self._writes_published:
            base = self._tlb.get(SpinLock >> 12)
            if base is not None:
                word = (base + (SpinLock & 0xFFF)) >> 3
                if self._words[word] == processor << 1 | SPIN_LOCK_BIT:
                    self._words[word] = SPIN_LOCK_FREE  # _drop_lock's
                    irqls[processor] = NewIrql  # _set_irql's
                    self.pool.set_irql(NewIrql)
                    if NewIrql < _DISPATCH <= old and self.dpc_queues[processor]:
                        self.retire_dpcs()  # the DISPATCH software interrupt
                    return
        lock = _checked_lock(SpinLock)
        new = _checked_irql("NewIrql", NewIrql)
        self._drop_lock(lock)
        self._lower_irql(new)

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
        # The usual lock, taken inline: an aligned QWORD on a present page, bit 0 clear, and
        # nobody listening for memory writes (``write`` would publish this one). Anything
        # else (a held lock, a lock on no present page, a misaligned one): the way below.
        base = self._tlb.get(lock >> 12)
        if base is not None and not lock & 7 and not self._writes_published:
            word = (base + (lock & 0xFFF)) >> 3
            if not self._words[word] & SPIN_LOCK_BIT:
                self._words[word] = self.current_processor << 1 | SPIN_LOCK_BIT  # _held_value
                return
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
        # The usual release, inline (as ``_take_lock``'s): this processor's lock, freed.
        base = self._tlb.get(lock >> 12)
        if base is not None and not lock & 7 and not self._writes_published:
            word = (base + (lock & 0xFFF)) >> 3
            if self._words[word] == self.current_processor << 1 | SPIN_LOCK_BIT:  # _held_value
                self._words[word] = SPIN_LOCK_FREE
                return
        owner = self._lock_value(lock)
        if owner != self._held_value():
            self.KeBugCheckEx(BugCheckCode.SPIN_LOCK_NOT_OWNED, lock, 0, 0, 0,
                              detail=f"release of spin lock {lock:#x}, which this processor "
                                     f"does not own")
        self.write(lock, SPIN_LOCK_FREE.to_bytes(8, "little"))

    # --- in-stack queued spin locks (x64: ntoskrnl exports) ---------------------------------
    # A queued lock's KSPIN_LOCK holds the address of the last waiter's KSPIN_LOCK_QUEUE (the
    # tail of the queue), NULL when free (WRK amd64 KxAcquireQueuedSpinLock: an exchange of
    # the lock with the handle's LockQueue). With one thread of control the queue is at most
    # the owner: the lock holds the owner's handle while held.

    @routine("VOID KeAcquireInStackQueuedSpinLock(PKSPIN_LOCK SpinLock, PKLOCK_QUEUE_HANDLE LockHandle)")
    def KeAcquireInStackQueuedSpinLock(self, SpinLock, LockHandle) -> None:
        """Raise to DISPATCH_LEVEL (the old IRQL kept in the handle) and take the lock."""
        lock = _checked_lock(SpinLock)
        processor, irqls = self.current_processor, self.irql_by_processor
        old = irqls[processor]
        if old > _DISPATCH:
            self._raise_irql(_DISPATCH)  # IRQL_NOT_GREATER_OR_EQUAL
        if self._irql_raises_published or self._writes_published:
            self._set_irql(_DISPATCH)  # _raise_irql's, inline
        else:  # _set_irql's raise, with nobody to tell of it
            irqls[processor] = _DISPATCH
            self.pool.set_irql(_DISPATCH)
        # The usual acquire, inline: the lock and the whole handle aligned on present pages,
        # the lock free (NULL), nobody listening for memory writes. The same stores in the
        # same order as the way below (``_take_queued_lock``, then OldIrql), as QWORDs.
        tlb = self._tlb
        lock_base = tlb.get(lock >> 12)
        if lock_base is not None and type(LockHandle) is int and not (lock | LockHandle) & 7 \
                and LockHandle & 0xFFF <= 0xFE8 and not self._writes_published:
            handle_base = tlb.get(LockHandle >> 12)
            if handle_base is not None and 0 < LockHandle:
                words = self._words
                lock_word = (lock_base + (lock & 0xFFF)) >> 3
                if not words[lock_word]:
                    handle_word = (handle_base + (LockHandle & 0xFFF)) >> 3
                    words[handle_word] = 0  # LockQueue.Next
                    words[handle_word + 1] = lock  # LockQueue.Lock
                    words[lock_word] = LockHandle
                    self._queued_lock_owners[lock] = (self.current_processor, LockHandle)
                    self._mem[(handle_word << 3) + LOCK_QUEUE_OLD_IRQL] = old
                    return
        self._take_queued_lock(lock, LockHandle)
        self.write(LockHandle + LOCK_QUEUE_OLD_IRQL, bytes([old]))

    @routine("VOID KeAcquireInStackQueuedSpinLockAtDpcLevel(PKSPIN_LOCK SpinLock, "
             "PKLOCK_QUEUE_HANDLE LockHandle)")
    def KeAcquireInStackQueuedSpinLockAtDpcLevel(self, SpinLock, LockHandle) -> None:
        lock = _checked_lock(SpinLock)
        irql = self.current_irql
        if irql < DISPATCH_LEVEL:
            self.KeBugCheckEx(BugCheckCode.IRQL_NOT_GREATER_OR_EQUAL, lock, irql, 0, 0,
                              detail=f"KeAcquireInStackQueuedSpinLockAtDpcLevel at IRQL {irql}")
        self._take_queued_lock(lock, LockHandle)

    @routine("VOID KeReleaseInStackQueuedSpinLock(PKLOCK_QUEUE_HANDLE LockHandle)")
    def KeReleaseInStackQueuedSpinLock(self, LockHandle) -> None:
        """Release the lock the handle holds and lower the IRQL to the handle's OldIrql."""
        # The usual release, inline (as the acquire's): the handle's lock holds the handle.
        tlb = self._tlb
        handle_base = tlb.get(LockHandle >> 12) if type(LockHandle) is int else None
        if handle_base is not None and not LockHandle & 7 and LockHandle & 0xFFF <= 0xFE8 \
                and not self._writes_published:
            words = self._words
            handle_word = (handle_base + (LockHandle & 0xFFF)) >> 3
            lock = words[handle_word + 1] & ~0x3
            lock_base = tlb.get(lock >> 12)
            if lock_base is not None and lock and not lock & 7:
                lock_word = (lock_base + (lock & 0xFFF)) >> 3
                if words[lock_word] == LockHandle:
                    words[lock_word] = SPIN_LOCK_FREE
                    self._queued_lock_owners.pop(lock, None)
                    new = self._mem[(handle_word << 3) + LOCK_QUEUE_OLD_IRQL] & 0xF
                    processor, irqls = self.current_processor, self.irql_by_processor
                    old = irqls[processor]
                    if new > old:
                        self._lower_irql(new)  # IRQL_NOT_LESS_OR_EQUAL
                    irqls[processor] = new  # _lower_irql's _set_irql, inline
                    self.pool.set_irql(new)
                    if new < _DISPATCH <= old and self.dpc_queues[processor]:
                        self.retire_dpcs()  # the DISPATCH software interrupt
                    return
        self._drop_queued_lock(LockHandle)
        self._lower_irql(self.read(LockHandle + LOCK_QUEUE_OLD_IRQL, 1)[0] & 0xF)

    @routine("VOID KeReleaseInStackQueuedSpinLockFromDpcLevel(PKLOCK_QUEUE_HANDLE LockHandle)")
    def KeReleaseInStackQueuedSpinLockFromDpcLevel(self, LockHandle) -> None:
        self._drop_queued_lock(LockHandle)

    def _take_queued_lock(self, lock: int, handle: int) -> None:
        value = self._lock_value(lock)
        if value:
            owner = self._queued_lock_owners.get(lock)
            if (owner is not None and owner == (self.current_processor, value)) or value == self._held_value():
                self.KeBugCheckEx(BugCheckCode.SPIN_LOCK_ALREADY_OWNED, lock, 0, 0, 0,
                                  detail=f"queued spin lock {lock:#x} is already owned by this processor")
            held = f"held by processor {owner[0]} (handle {value:#x})" if owner is not None and \
                owner[1] == value else f"held (its value is {value:#x})"
            raise MachineHung(f"queued spin lock {lock:#x} is {held}; acquiring it on processor "
                              f"{self.current_processor} would spin forever (release it there first)")
        self.write(handle + LOCK_QUEUE_NEXT, bytes(8))
        self.write(handle + LOCK_QUEUE_LOCK, lock.to_bytes(8, "little"))
        self.write(lock, handle.to_bytes(8, "little"))
        self._queued_lock_owners[lock] = (self.current_processor, handle)

    def _drop_queued_lock(self, handle: int) -> None:
        """A handle whose lock does not hold it (released twice, never acquired, another
        handle's) is 0x10 SPIN_LOCK_NOT_OWNED (lock, 0, 0, 0): on x64 Windows the release
        would wait for a successor that never comes (departures)."""
        lock = int.from_bytes(self.read(handle + LOCK_QUEUE_LOCK, 8), "little") & ~0x3
        value = self._lock_value(lock) if 0 < lock < 1 << 64 else None
        if value != handle:
            self.KeBugCheckEx(BugCheckCode.SPIN_LOCK_NOT_OWNED, lock, 0, 0, 0,
                              detail=f"release of queued spin lock {lock:#x} through handle "
                                     f"{handle:#x}, which does not hold it")
        self.write(lock, SPIN_LOCK_FREE.to_bytes(8, "little"))
        self._queued_lock_owners.pop(lock, None)

    # --- interlocked lists: the list changed under the spin lock, the IRQL unchanged -------
    # (x64 ExInterlocked*List disable interrupts and take the lock: WRK amd64 intrlock.asm)

    def _listed_under(self, lock: int, change, *arguments):
        lock = _checked_lock(lock)
        self._take_lock(lock)
        return self._listed_locked(lock, change, *arguments)

    def _listed_locked(self, lock: int, change, *arguments):
        """``change(*arguments)`` with the lock held, then the lock dropped (unless the machine
        halted): ``_listed_under`` once the lock is taken, as the inline paths take it too."""
        try:
            return change(*arguments)
        finally:
            if not self.halted:
                self._drop_lock(lock)

    def _listed_words(self, lock, head, entry):
        """The usual ExInterlocked*List call's QWORDs (the lock's, the head's, the entry's
        indexes in ``_words``): the lock, the head and the entry ints, aligned, each LIST_ENTRY
        on one present page, the lock free, and nobody listening for memory writes. None
        sends the call the way it took before. (A SINGLE_LIST_ENTRY's call asks the same of
        its 8 bytes: more than it needs, so one ending a page goes the way before.)"""
        if type(lock) is int and type(head) is int and type(entry) is int and \
                not (lock | head | entry) & 7 and head & 0xFFF != 0xFF8 and \
                entry & 0xFFF != 0xFF8 and not self._writes_published:
            tlb = self._tlb
            lock_base, head_base = tlb.get(lock >> 12), tlb.get(head >> 12)
            entry_base = tlb.get(entry >> 12)
            if lock_base is not None and head_base is not None and entry_base is not None:
                lock_word = (lock_base + (lock & 0xFFF)) >> 3
                if not self._words[lock_word] & SPIN_LOCK_BIT:
                    return lock_word, (head_base + (head & 0xFFF)) >> 3, \
                        (entry_base + (entry & 0xFFF)) >> 3
        return None

    def _listed_done(self, lock: int, lock_word: int, held: int) -> None:
        """Release the lock of an inline ExInterlocked*List call (``_drop_lock`` when its
        QWORD no longer holds this processor's hold: a list write landed on it)."""
        if self._words[lock_word] == held:
            self._words[lock_word] = SPIN_LOCK_FREE
        else:
            self._drop_lock(lock)

    def _link(self, address: int) -> int:
        return int.from_bytes(self.read(address, 8), "little")

    def _set_link(self, address: int, value: int) -> None:
        self.write(address, value.to_bytes(8, "little"))

    def _neighbours_point_back(self, entry_word: int, entry: int) -> bool:
        """``_checked_links``' test of the LIST_ENTRY at ``entry`` (its Flink the QWORD
        ``entry_word`` of ``_words``), made inline: True when its neighbours' links are aligned
        QWORDs on present pages that point back to it. False (the check would fail, or a
        link leads off the present pages) sends the call the general way, which reads them
        again and raises Windows' bug check or fault."""
        words, tlb = self._words, self._tlb
        flink, blink = words[entry_word], words[entry_word + 1]
        if (flink | blink) & 7:
            return False
        flink_base, blink_base = tlb.get((flink + 8) >> 12), tlb.get(blink >> 12)
        return flink_base is not None and blink_base is not None and \
            words[(flink_base + ((flink + 8) & 0xFFF)) >> 3] == entry and \
            words[(blink_base + (blink & 0xFFF)) >> 3] == entry

    def _checked_links(self, entry: int, what: str) -> None:
        """Windows 10 and later check a LIST_ENTRY's neighbours before they change it
        (0x139, FAST_FAIL_CORRUPT_LIST_ENTRY); Windows 7 follows them as they are."""
        if self.windows.major >= 10:
            flink, blink = self._link(entry), self._link(entry + 8)
            self._list_entry_check(self._link(flink + 8) == entry and self._link(blink) == entry,
                                   f"{what}: {entry:#x}'s neighbours do not point back to it")

    # The usual call of each, inline: the lock taken and dropped through its QWORD, the list's
    # stores of the general way below, in its order, as QWORDs of ``_words``. Windows 10 and
    # later check the neighbours first (``_neighbours_point_back``). A neighbour on no present
    # page or misaligned, or a check that would fail: with the lock held as the inline path
    # took it, the general way (``_listed_locked``), which faults or bug-checks as Windows.

    @routine("PLIST_ENTRY ExInterlockedInsertHeadList(PLIST_ENTRY ListHead, PLIST_ENTRY ListEntry, "
             "PKSPIN_LOCK Lock)")
    def ExInterlockedInsertHeadList(self, ListHead, ListEntry, Lock) -> int:
        """Insert at the head; the entry that was first (NULL if the list was empty)."""
        listed = self._listed_words(Lock, ListHead, ListEntry)
        if listed is None:
            return self._listed_under(Lock, self._interlocked_insert_head, ListHead, ListEntry)
        lock_word, head_word, entry_word = listed
        words, held = self._words, self.current_processor << 1 | SPIN_LOCK_BIT
        words[lock_word] = held  # _take_lock
        first = words[head_word]
        first_base = self._tlb.get((first + 8) >> 12)
        if first_base is None or first & 7 or \
                self.windows.major >= 10 and not self._neighbours_point_back(head_word, ListHead):
            return self._listed_locked(Lock, self._interlocked_insert_head, ListHead, ListEntry)
        words[entry_word] = first
        words[entry_word + 1] = ListHead
        words[(first_base + ((first + 8) & 0xFFF)) >> 3] = ListEntry
        words[head_word] = ListEntry
        self._listed_done(Lock, lock_word, held)
        return 0 if first == ListHead else first

    def _interlocked_insert_head(self, head: int, entry: int) -> int:
        self._checked_links(head, "ExInterlockedInsertHeadList")
        first = self._link(head)
        self._set_link(entry, first)
        self._set_link(entry + 8, head)
        self._set_link(first + 8, entry)
        self._set_link(head, entry)
        return 0 if first == head else first

    @routine("PLIST_ENTRY ExInterlockedInsertTailList(PLIST_ENTRY ListHead, PLIST_ENTRY ListEntry, "
             "PKSPIN_LOCK Lock)")
    def ExInterlockedInsertTailList(self, ListHead, ListEntry, Lock) -> int:
        """Insert at the tail; the entry that was first (NULL if the list was empty)."""
        listed = self._listed_words(Lock, ListHead, ListEntry)
        if listed is None:
            return self._listed_under(Lock, self._interlocked_insert_tail, ListHead, ListEntry)
        lock_word, head_word, entry_word = listed
        words, held = self._words, self.current_processor << 1 | SPIN_LOCK_BIT
        words[lock_word] = held  # _take_lock
        first, last = words[head_word], words[head_word + 1]
        last_base = self._tlb.get(last >> 12)
        if last_base is None or last & 7 or \
                self.windows.major >= 10 and not self._neighbours_point_back(head_word, ListHead):
            return self._listed_locked(Lock, self._interlocked_insert_tail, ListHead, ListEntry)
        words[entry_word] = ListHead
        words[entry_word + 1] = last
        words[(last_base + (last & 0xFFF)) >> 3] = ListEntry
        words[head_word + 1] = ListEntry
        self._listed_done(Lock, lock_word, held)
        return 0 if first == ListHead else first

    def _interlocked_insert_tail(self, head: int, entry: int) -> int:
        self._checked_links(head, "ExInterlockedInsertTailList")
        first, last = self._link(head), self._link(head + 8)
        self._set_link(entry, head)
        self._set_link(entry + 8, last)
        self._set_link(last, entry)
        self._set_link(head + 8, entry)
        return 0 if first == head else first

    @routine("PLIST_ENTRY ExInterlockedRemoveHeadList(PLIST_ENTRY ListHead, PKSPIN_LOCK Lock)")
    def ExInterlockedRemoveHeadList(self, ListHead, Lock) -> int:
        """Remove the first entry and return it (NULL if the list is empty)."""
        listed = self._listed_words(Lock, ListHead, ListHead)
        if listed is None:
            return self._listed_under(Lock, self._interlocked_remove_head, ListHead)
        lock_word, head_word, _ = listed
        words, held = self._words, self.current_processor << 1 | SPIN_LOCK_BIT
        words[lock_word] = held  # _take_lock
        first = words[head_word]
        if first == ListHead:
            self._listed_done(Lock, lock_word, held)
            return 0
        tlb = self._tlb
        first_base = tlb.get(first >> 12)
        if first_base is None or first & 7:
            return self._listed_locked(Lock, self._interlocked_remove_head, ListHead)
        first_word = (first_base + (first & 0xFFF)) >> 3
        following = words[first_word]
        following_base = tlb.get((following + 8) >> 12)
        if following_base is None or following & 7 or \
                self.windows.major >= 10 and not self._neighbours_point_back(first_word, first):
            return self._listed_locked(Lock, self._interlocked_remove_head, ListHead)
        words[head_word] = following
        words[(following_base + ((following + 8) & 0xFFF)) >> 3] = ListHead
        self._listed_done(Lock, lock_word, held)
        return first

    def _interlocked_remove_head(self, head: int) -> int:
        first = self._link(head)
        if first == head:
            return 0
        self._checked_links(first, "ExInterlockedRemoveHeadList")
        following = self._link(first)
        self._set_link(head, following)
        self._set_link(following + 8, head)
        return first

    @routine("PSINGLE_LIST_ENTRY ExInterlockedPushEntryList(PSINGLE_LIST_ENTRY ListHead, "
             "PSINGLE_LIST_ENTRY ListEntry, PKSPIN_LOCK Lock)")
    def ExInterlockedPushEntryList(self, ListHead, ListEntry, Lock) -> int:
        """Push onto a singly linked list; the entry that was first (NULL if empty)."""
        listed = self._listed_words(Lock, ListHead, ListEntry)
        if listed is None:
            return self._listed_under(Lock, self._interlocked_push, ListHead, ListEntry)
        lock_word, head_word, entry_word = listed
        words, held = self._words, self.current_processor << 1 | SPIN_LOCK_BIT
        words[lock_word] = held  # _take_lock
        first = words[head_word]
        words[entry_word] = first
        words[head_word] = ListEntry
        self._listed_done(Lock, lock_word, held)
        return first

    def _interlocked_push(self, head: int, entry: int) -> int:
        first = self._link(head)
        self._set_link(entry, first)
        self._set_link(head, entry)
        return first

    @routine("PSINGLE_LIST_ENTRY ExInterlockedPopEntryList(PSINGLE_LIST_ENTRY ListHead, PKSPIN_LOCK Lock)")
    def ExInterlockedPopEntryList(self, ListHead, Lock) -> int:
        """Pop the first entry of a singly linked list (NULL if empty)."""
        listed = self._listed_words(Lock, ListHead, ListHead)
        if listed is None:
            return self._listed_under(Lock, self._interlocked_pop, ListHead)
        lock_word, head_word, _ = listed
        words, held = self._words, self.current_processor << 1 | SPIN_LOCK_BIT
        words[lock_word] = held  # _take_lock
        first = words[head_word]
        if first:
            first_base = self._tlb.get(first >> 12)
            if first_base is None or first & 7:
                return self._listed_locked(Lock, self._interlocked_pop, ListHead)
            words[head_word] = words[(first_base + (first & 0xFFF)) >> 3]
        self._listed_done(Lock, lock_word, held)
        return first

    def _interlocked_pop(self, head: int) -> int:
        first = self._link(head)
        if first:
            self._set_link(head, self._link(first))
        return first


def _checked_lock(lock) -> int:
    if type(lock) is int and 0 < lock < _ADDRESS_END:  # the usual one, first
        return lock
    if isinstance(lock, bool) or not isinstance(lock, int):
        raise TypeError(f"SpinLock must be the address of a KSPIN_LOCK (int), "
                        f"not {type(lock).__name__}")
    if not 0 < lock < _ADDRESS_END:
        raise ValueError(f"SpinLock {lock:#x} is not an address")
    return lock
