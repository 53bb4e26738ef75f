"""The synchronization routines' usual calls are made inline (fewer Python calls, the
object's QWORDs read and written at once); anything unusual takes the way they took before.
Each test runs the same steps on two machines: one as drivers run it, and one with a
MemoryWritten listener, on which every routine takes its way through ``k.write`` (the code
the inline paths replace). Every result, error, bug check, IRQL and byte must be the same,
for aligned and misaligned objects, objects across a page boundary, paged-out pages, and
any bytes a stray write left in them."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ntpool
from two_ways import apply_step, common_steps, machine_with_regions, region_bytes, run_both

NP = ntpool.PoolType.NonPagedPool
PAGED = ntpool.PoolType.PagedPool
REGION = 0x3000  # three pages: objects placed anywhere in the first two, across their boundary


def _machine(published: bool, windows: str = "7"):
    return machine_with_regions(windows, published, "Sync", REGION)


def _state(k, regions):
    return (k.irql_by_processor[:], dict(k._queued_lock_owners), getattr(k, "guarded_region", 0),
            region_bytes(k, regions, REGION))


OFFSETS = st.sampled_from([0x100, 0x108, 0x104, 0x101, 0x107, 0xFC8, 0xFD0, 0xFE8, 0xFE0,
                           0xFF0, 0xFF8, 0xFFC, 0xFFF])
OBJECT = st.tuples(st.integers(0, 1), OFFSETS)  # (which region: nonpaged, paged; offset)

STEPS = st.one_of(
    st.tuples(st.just("init_fast_mutex"), OBJECT),
    st.tuples(st.just("ExAcquireFastMutex"), OBJECT),
    st.tuples(st.just("ExReleaseFastMutex"), OBJECT),
    st.tuples(st.just("ExTryToAcquireFastMutex"), OBJECT),
    st.tuples(st.just("KeInitializeGuardedMutex"), OBJECT),
    st.tuples(st.just("KeAcquireGuardedMutex"), OBJECT),
    st.tuples(st.just("KeReleaseGuardedMutex"), OBJECT),
    st.tuples(st.just("KeInitializeEvent"), OBJECT, st.integers(0, 1), st.integers(0, 1)),
    st.tuples(st.just("KeInitializeSemaphore"), OBJECT, st.integers(0, 3)),
    st.tuples(st.just("KeSetEvent"), OBJECT),
    st.tuples(st.just("KeResetEvent"), OBJECT),
    st.tuples(st.just("KeClearEvent"), OBJECT),
    st.tuples(st.just("KeWaitForSingleObject"), OBJECT),
    st.tuples(st.just("KeInitializeSpinLock"), OBJECT),
    st.tuples(st.just("KeAcquireInStackQueuedSpinLock"), OBJECT, OBJECT),
    st.tuples(st.just("KeReleaseInStackQueuedSpinLock"), OBJECT),
    st.tuples(st.just("RtlInitUnicodeString"), OBJECT, OBJECT),
    st.tuples(st.just("init_list"), OBJECT),
    st.tuples(st.just("ExInterlockedInsertTailList"), OBJECT, OBJECT, OBJECT),
    st.tuples(st.just("ExInterlockedInsertHeadList"), OBJECT, OBJECT, OBJECT),
    st.tuples(st.just("ExInterlockedRemoveHeadList"), OBJECT, OBJECT),
    st.tuples(st.just("ExInterlockedPushEntryList"), OBJECT, OBJECT, OBJECT),
    st.tuples(st.just("ExInterlockedPopEntryList"), OBJECT, OBJECT),
    *common_steps(OBJECT),
)


SYNC_STEPS = {  # the steps of this file's own, beside two_ways.apply_step's
    "init_fast_mutex": lambda k, regions, at: k.initialize_fast_mutex(at),
    "KeInitializeSemaphore": lambda k, regions, at, count: k.KeInitializeSemaphore(at, count, 3),
    "KeSetEvent": lambda k, regions, at: k.KeSetEvent(at, 0, 0),
    "KeWaitForSingleObject": lambda k, regions, at: k.KeWaitForSingleObject(at, 0, 0, 0, 0),
    "init_list": lambda k, regions, at: k.write(at, at.to_bytes(8, "little") * 2),  # InitializeListHead, an inline
}


def _apply(k, regions, step):
    return apply_step(k, regions, step, SYNC_STEPS)


@pytest.mark.parametrize("windows", ["7", "11"])  # Windows 10 and later check list neighbours
@settings(max_examples=400, deadline=None)
@given(st.lists(STEPS, max_size=30))
def test_the_inline_synchronization_paths_write_what_the_way_through_write_writes(windows, steps):
    run_both(lambda published: _machine(published, windows), _apply, _state, steps)


AT = (0, 0x200)  # an aligned object in nonpaged pool
STRAY = ("stray", AT, b"\xA5" * 0x40)
SCENARIOS = {
    "fast mutex, stray bytes between its fields": [
        STRAY, ("init_fast_mutex", AT), ("ExAcquireFastMutex", AT), ("ExReleaseFastMutex", AT),
        ("ExTryToAcquireFastMutex", AT), ("ExAcquireFastMutex", AT)],
    "fast mutex released twice": [
        ("init_fast_mutex", AT), ("ExAcquireFastMutex", AT), ("ExReleaseFastMutex", AT),
        ("ExReleaseFastMutex", AT)],
    "fast mutex at APC_LEVEL and above": [
        ("init_fast_mutex", AT), ("irql", 1), ("ExAcquireFastMutex", AT), ("ExReleaseFastMutex", AT),
        ("irql", 2), ("ExAcquireFastMutex", AT)],
    "guarded mutex, stray bytes beside Count": [
        ("KeInitializeGuardedMutex", AT), ("stray", (0, 0x204), b"\x5A\x5A\x5A\x5A"),
        ("KeAcquireGuardedMutex", AT), ("KeReleaseGuardedMutex", AT), ("KeAcquireGuardedMutex", AT),
        ("KeAcquireGuardedMutex", AT)],
    "guarded mutex released twice": [
        ("KeInitializeGuardedMutex", AT), ("KeAcquireGuardedMutex", AT),
        ("KeReleaseGuardedMutex", AT), ("KeReleaseGuardedMutex", AT)],
    "semaphore taken to zero": [
        ("KeInitializeSemaphore", AT, 2), ("KeWaitForSingleObject", AT),
        ("KeWaitForSingleObject", AT), ("KeWaitForSingleObject", AT)],
    "synchronization event, stray bytes in its header": [
        ("KeInitializeEvent", AT, 1, 0), ("stray", (0, 0x201), b"\x77\x66\x55"),
        ("KeSetEvent", AT), ("KeSetEvent", AT), ("KeWaitForSingleObject", AT),
        ("KeWaitForSingleObject", AT)],
    "notification event, a negative SignalState": [
        ("KeInitializeEvent", AT, 0, 1), ("KeWaitForSingleObject", AT), ("KeWaitForSingleObject", AT),
        ("stray", (0, 0x204), b"\xFE\xFF\xFF\xFF"), ("KeSetEvent", AT), ("KeWaitForSingleObject", AT),
        ("stray", (0, 0x200), b"\x11" * 16), ("KeResetEvent", AT), ("KeSetEvent", AT),
        ("stray", (0, 0x204), b"\xFD\xFF\xFF\xFF"), ("KeResetEvent", AT), ("KeResetEvent", AT),
        ("stray", (0, 0x200), b"\x22" * 16), ("KeClearEvent", AT), ("KeClearEvent", (0, 0x204)),
        ("KeResetEvent", (0, 0x204)), ("KeClearEvent", (0, 0xFFC)), ("KeResetEvent", (0, 0xFFC)),
        ("irql", 3), ("KeClearEvent", AT), ("KeResetEvent", AT)],
    "queued spin lock, held twice, released twice": [
        STRAY, ("KeInitializeSpinLock", AT), ("KeAcquireInStackQueuedSpinLock", AT, (0, 0x220)),
        ("KeReleaseInStackQueuedSpinLock", (0, 0x220)), ("KeReleaseInStackQueuedSpinLock", (0, 0x220))],
    "queued spin lock whose handle is its lock": [
        ("KeInitializeSpinLock", (0, 0x208)), ("KeAcquireInStackQueuedSpinLock", (0, 0x208), AT),
        ("KeReleaseInStackQueuedSpinLock", AT)],
    "queued spin lock above DISPATCH_LEVEL": [
        ("KeInitializeSpinLock", AT), ("irql", 3), ("KeAcquireInStackQueuedSpinLock", AT, (0, 0x220))],
    "queued spin lock whose handle's OldIrql is above DISPATCH_LEVEL": [
        ("KeInitializeSpinLock", AT), ("KeAcquireInStackQueuedSpinLock", AT, (0, 0x220)),
        ("stray", (0, 0x230), b"\x05"), ("KeReleaseInStackQueuedSpinLock", (0, 0x220))],
    "queued spin lock released to APC_LEVEL": [
        ("KeInitializeSpinLock", AT), ("irql", 1), ("KeAcquireInStackQueuedSpinLock", AT, (0, 0x220)),
        ("KeReleaseInStackQueuedSpinLock", (0, 0x220))],
    "queued spin lock taken again": [
        ("KeInitializeSpinLock", AT), ("KeAcquireInStackQueuedSpinLock", AT, (0, 0x220)),
        ("KeAcquireInStackQueuedSpinLock", AT, (0, 0x240))],
    "queued spin lock on a paged-out page": [
        ("KeInitializeSpinLock", (1, 0x200)), ("page_out", 0),
        ("KeAcquireInStackQueuedSpinLock", (1, 0x200), (0, 0x220))],
    "interlocked list: two in, two out, one more out": [
        ("init_list", AT), ("KeInitializeSpinLock", (0, 0x100)),
        ("ExInterlockedInsertTailList", AT, (0, 0x300), (0, 0x100)),
        ("ExInterlockedInsertHeadList", AT, (1, 0x300), (0, 0x100)),
        ("ExInterlockedRemoveHeadList", AT, (0, 0x100)), ("ExInterlockedRemoveHeadList", AT, (0, 0x100)),
        ("ExInterlockedRemoveHeadList", AT, (0, 0x100))],
    "interlocked list whose entries are paged out": [
        ("init_list", AT), ("KeInitializeSpinLock", (0, 0x100)),
        ("ExInterlockedInsertTailList", AT, (1, 0x300), (0, 0x100)), ("page_out", 0),
        ("ExInterlockedInsertTailList", AT, (1, 0x1300), (0, 0x100)), ("page_out", 0),
        ("page_out", 1), ("ExInterlockedInsertHeadList", AT, (0, 0x400), (0, 0x100)),
        ("page_out", 0), ("ExInterlockedRemoveHeadList", AT, (0, 0x100)),
        ("ExInterlockedRemoveHeadList", AT, (0, 0x100)), ("page_out", 1),
        ("ExInterlockedRemoveHeadList", AT, (0, 0x100))],
    "interlocked list whose entry is its lock": [
        ("init_list", AT), ("KeInitializeSpinLock", (0, 0x300)),
        ("ExInterlockedInsertTailList", AT, (0, 0x300), (0, 0x300))],
    "interlocked list whose lock is held": [
        ("init_list", AT), ("KeInitializeSpinLock", (0, 0x100)), ("stray", (0, 0x100), b"\1"),
        ("ExInterlockedInsertTailList", AT, (0, 0x300), (0, 0x100))],
    "interlocked list with a NULL and a misaligned link": [
        ("init_list", AT), ("KeInitializeSpinLock", (0, 0x100)), ("stray", (0, 0x208), bytes(8)),
        ("ExInterlockedInsertTailList", AT, (0, 0x300), (0, 0x100))],
    "interlocked list with a misaligned first entry": [
        ("init_list", AT), ("KeInitializeSpinLock", (0, 0x100)),
        ("ExInterlockedInsertTailList", AT, (0, 0x301), (0, 0x100)),
        ("ExInterlockedRemoveHeadList", AT, (0, 0x100))],
    "interlocked list whose neighbours do not point back (Windows 10 and later: 0x139)": [
        ("init_list", AT), ("KeInitializeSpinLock", (0, 0x100)),
        ("ExInterlockedInsertTailList", AT, (0, 0x300), (0, 0x100)),
        ("ExInterlockedInsertTailList", AT, (0, 0x400), (0, 0x100)),
        ("stray", (0, 0x308), bytes(8)), ("ExInterlockedInsertHeadList", AT, (0, 0x500), (0, 0x100)),
        ("ExInterlockedRemoveHeadList", AT, (0, 0x100)), ("ExInterlockedRemoveHeadList", AT, (0, 0x100))],
    "interlocked list whose last entry's Flink is stray (Windows 10 and later: 0x139)": [
        ("init_list", AT), ("KeInitializeSpinLock", (0, 0x100)),
        ("ExInterlockedInsertTailList", AT, (0, 0x300), (0, 0x100)), ("stray", (0, 0x300), bytes(8)),
        ("ExInterlockedInsertTailList", AT, (0, 0x400), (0, 0x100))],
    "interlocked list whose second entry's Blink is stray": [
        ("init_list", AT), ("KeInitializeSpinLock", (0, 0x100)),
        ("ExInterlockedInsertTailList", AT, (0, 0x300), (0, 0x100)),
        ("ExInterlockedInsertTailList", AT, (0, 0x400), (0, 0x100)),
        ("stray", (0, 0x408), (0x1234 << 4).to_bytes(8, "little")),
        ("ExInterlockedRemoveHeadList", AT, (0, 0x100)), ("ExInterlockedRemoveHeadList", AT, (0, 0x100))],
    "interlocked list whose last entry is paged out (Windows 10 checks it first)": [
        ("init_list", AT), ("KeInitializeSpinLock", (0, 0x100)),
        ("ExInterlockedInsertTailList", AT, (1, 0x300), (0, 0x100)), ("page_out", 0),
        ("ExInterlockedInsertHeadList", AT, (0, 0x400), (0, 0x100)),
        ("ExInterlockedRemoveHeadList", AT, (0, 0x100)), ("ExInterlockedRemoveHeadList", AT, (0, 0x100))],
    "singly linked list: pushes and pops, empty at the end": [
        ("stray", AT, bytes(8)), ("KeInitializeSpinLock", (0, 0x100)),
        ("ExInterlockedPushEntryList", AT, (0, 0x300), (0, 0x100)),
        ("ExInterlockedPushEntryList", AT, (1, 0x300), (0, 0x100)),
        ("ExInterlockedPopEntryList", AT, (0, 0x100)), ("ExInterlockedPopEntryList", AT, (0, 0x100)),
        ("ExInterlockedPopEntryList", AT, (0, 0x100))],
    "singly linked list whose entry is paged out, or its lock, or misaligned": [
        ("stray", AT, bytes(8)), ("KeInitializeSpinLock", (0, 0x100)),
        ("ExInterlockedPushEntryList", AT, (1, 0x300), (0, 0x100)), ("page_out", 0),
        ("ExInterlockedPopEntryList", AT, (0, 0x100)),
        ("ExInterlockedPushEntryList", AT, (0, 0x304), (0, 0x100)),
        ("ExInterlockedPopEntryList", AT, (0, 0x100)),
        ("ExInterlockedPushEntryList", AT, (0, 0x308), (0, 0x100)),
        ("ExInterlockedPushEntryList", AT, (0, 0x418), (0, 0x100)),
        ("ExInterlockedPopEntryList", AT, (0, 0x100)), ("ExInterlockedPopEntryList", AT, (0, 0x100)),
        ("ExInterlockedPushEntryList", AT, (0, 0x100), (0, 0x100))],
    "unicode strings: a surrogate pair, a lone surrogate, no NUL on the page": [
        ("stray", (0, 0x300), "a\U0001F600b".encode("utf-16-le") + b"\0\0"),
        ("RtlInitUnicodeString", AT, (0, 0x300)),
        ("stray", (0, 0x300), b"\x00\xD8a\x00\x00\x00"), ("RtlInitUnicodeString", AT, (0, 0x300)),
        ("stray", (0, 0xFF0), b"\x41" * 0x10), ("stray", (0, 0x1000), b"B\0\0\0"),
        ("RtlInitUnicodeString", AT, (0, 0xFF0)), ("RtlInitUnicodeString", (0, 0x204), (0, 0x300)),
        ("RtlInitUnicodeString", (0, 0xFF8), (0, 0x300)), ("RtlInitUnicodeString", AT, (0, 0x301)),
        ("RtlInitUnicodeString", AT, (0, 0)), ("stray", (0, 0x300), b"\x00\x41\x00\x00\x00"),
        ("RtlInitUnicodeString", AT, (0, 0x300))],
    "fast mutex on a paged-out page": [
        ("init_fast_mutex", (1, 0x200)), ("page_out", 0), ("ExAcquireFastMutex", (1, 0x200)),
        ("page_out", 0), ("ExReleaseFastMutex", (1, 0x200))],
}


@pytest.mark.parametrize("windows", ["7", "11"])
def test_the_scenarios_cover_each_inline_path_and_its_ways_out(windows):
    for name, steps in SCENARIOS.items():
        run_both(lambda published: _machine(published, windows), _apply, _state, steps, name)


def test_a_fast_mutex_acquired_inline_keeps_the_bytes_between_its_fields(k):
    """Count is a LONG and OldIrql a ULONG: the QWORD stores keep the four bytes after each."""
    from ntpool.routines.ke_sync import THREAD_STAND_IN

    mutex = k.ExAllocatePoolWithTag(NP, 0x40, "Sync")
    k.write(mutex, b"\xA5" * 0x38)
    k.initialize_fast_mutex(mutex)
    k.ExAcquireFastMutex(mutex)
    assert k.read(mutex, 8) == b"\0\0\0\0\xA5\xA5\xA5\xA5"
    assert int.from_bytes(k.read(mutex + 8, 8), "little") == THREAD_STAND_IN
    assert k.read(mutex + 0x30, 8) == b"\0\0\0\0\xA5\xA5\xA5\xA5"
    assert k.KeGetCurrentIrql() == 1
    k.ExReleaseFastMutex(mutex)
    assert k.read(mutex, 16) == b"\1\0\0\0\xA5\xA5\xA5\xA5" + bytes(8)
    assert k.KeGetCurrentIrql() == 0


def test_a_queued_spin_lock_taken_inline_raises_and_lowers_the_irql_and_fills_its_handle(k):
    lock = k.ExAllocatePoolWithTag(NP, 0x40, "Sync")
    handle = lock + 0x10
    k.write(lock, b"\xA5" * 0x30)
    k.KeInitializeSpinLock(lock)
    k.KeAcquireInStackQueuedSpinLock(lock, handle)
    assert k.KeGetCurrentIrql() == 2
    assert int.from_bytes(k.read(lock, 8), "little") == handle
    assert k.read(handle, 0x18) == bytes(8) + lock.to_bytes(8, "little") + b"\0" + b"\xA5" * 7
    assert k._queued_lock_owners == {lock: (0, handle)}
    k.KeReleaseInStackQueuedSpinLock(handle)
    assert k.KeGetCurrentIrql() == 0
    assert int.from_bytes(k.read(lock, 8), "little") == 0
    assert k._queued_lock_owners == {}
