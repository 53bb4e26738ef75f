"""The spin lock pair's, run-down protection's and the timers' usual calls are made inline (the structure's QWORDs
read and written at once); anything unusual takes the way they took before. As in
test_sync_fast_cases, each test runs the same steps on two machines: one as drivers run it,
and one with a MemoryWritten listener, on which every routine takes its way through
``k.write`` (the code the inline paths replace). Every result, error, bug check and byte
must be the same, on Windows 7 and 11, for aligned and misaligned structures, ones across a
page boundary, on paged-out pages, at any IRQL, and with any bytes a stray write left."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ntpool.hooks import IrqlRaised
from two_ways import PAGED, address, apply_step, common_steps, machine_with_regions, region_bytes, run_both

REGION = 0x3000  # three pages: structures placed anywhere in the first two, across their boundary


DPC = (0, 0x2F00)  # a KDPC past where the steps' objects go: its routine records the IRQL


def _machine(windows: str, published: bool):
    k, regions = machine_with_regions(windows, published, "RouF", REGION)
    k.ran = []
    routine = k.code_address(lambda k, dpc, context, a1, a2: k.ran.append(("dpc", k.current_irql)))
    k.KeInitializeDpc(address(regions, DPC), routine, 0)
    return k, regions


def _state(k, regions):
    return (k.irql_by_processor[:], sorted(k.timers.items()), k.system_time, k.ran,
            k.pool.irql, dict(k._queued_lock_owners), region_bytes(k, regions, REGION))


OFFSETS = st.sampled_from([0x100, 0x108, 0x104, 0x101, 0x107, 0xF98, 0xFA0, 0xFB8, 0xFC0, 0xFC4,
                           0xFC8, 0xFD0, 0xFE8, 0xFF0, 0xFF8, 0xFFC, 0xFFF])
OBJECT = st.tuples(st.integers(0, 1), OFFSETS)  # (which region: nonpaged, paged; offset)


ROUTINE_STEPS = {  # the steps of this file's own, beside two_ways.apply_step's
    "advance": lambda k, regions, hundred_ns: k.advance_clock(hundred_ns),
    "queue_dpc": lambda k, regions: k.KeInsertQueueDpc(address(regions, DPC), 0, 0),
    # at DISPATCH_LEVEL: the pool's IRQL check (0xC2)
    "allocate_paged": lambda k, regions: k.ExAllocatePoolWithTag(PAGED, 100, "RouF"),
    # Driver Verifier's way in: the pair's inline path stops
    "listen_irql": lambda k, regions: k.hooks.subscribe(IrqlRaised, lambda event: k.ran.append(
        ("raised", event.processor, event.old, event.new))),
}


def _apply(k, regions, step):
    return apply_step(k, regions, step, ROUTINE_STEPS)


def _run_both(windows, steps):
    run_both(lambda published: _machine(windows, published), _apply, _state, steps)


COMMON_STEPS = common_steps(OBJECT)

# --- spin locks -----------------------------------------------------------------------------

IRQL = st.one_of(st.integers(0, 3), st.sampled_from([15, 16, -1]))
SPIN_LOCK_STEPS = st.one_of(
    st.tuples(st.just("KeInitializeSpinLock"), OBJECT),
    st.tuples(st.just("KeAcquireSpinLock"), OBJECT),
    st.tuples(st.just("KeReleaseSpinLock"), OBJECT, IRQL),
    st.tuples(st.just("KeAcquireSpinLockAtDpcLevel"), OBJECT),
    st.tuples(st.just("KeReleaseSpinLockFromDpcLevel"), OBJECT),
    st.tuples(st.just("KeRaiseIrql"), IRQL),
    st.tuples(st.just("KeLowerIrql"), IRQL),
    st.tuples(st.just("KeRaiseIrqlToDpcLevel")),
    st.tuples(st.just("KeAcquireInStackQueuedSpinLock"), OBJECT, OBJECT),
    st.tuples(st.just("KeReleaseInStackQueuedSpinLock"), OBJECT),
    st.tuples(st.just("queue_dpc")),
    st.tuples(st.just("allocate_paged")),
    st.tuples(st.just("listen_irql")),
    *COMMON_STEPS,
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["7", "11"]), st.lists(SPIN_LOCK_STEPS, max_size=30))
def test_the_inline_spin_lock_pair_does_what_the_way_through_write_does(windows, steps):
    _run_both(windows, steps)


AT = (0, 0x200)  # an aligned object in nonpaged pool
SPIN_LOCK_SCENARIOS = {
    "taken and released, a DPC queued under it, the paged pool asked for under it": [
        ("KeInitializeSpinLock", AT), ("KeAcquireSpinLock", AT), ("queue_dpc",), ("allocate_paged",)],
    "taken, released, again at APC_LEVEL, released to it": [
        ("stray", AT, b"\xFE" * 8), ("KeAcquireSpinLock", AT), ("queue_dpc",),
        ("KeReleaseSpinLock", AT, 0), ("irql", 1), ("KeAcquireSpinLock", AT),
        ("KeReleaseSpinLock", AT, 1), ("allocate_paged",)],
    "taken twice; released twice; released to a higher IRQL": [
        ("KeInitializeSpinLock", AT), ("KeAcquireSpinLock", AT), ("KeReleaseSpinLock", AT, 0),
        ("KeReleaseSpinLock", AT, 0)],
    "released to a higher IRQL": [
        ("KeInitializeSpinLock", AT), ("KeAcquireSpinLock", AT), ("KeReleaseSpinLock", AT, 3)],
    "taken again by its owner": [
        ("KeInitializeSpinLock", AT), ("KeAcquireSpinLock", AT), ("KeAcquireSpinLock", AT)],
    "held by another processor's value": [
        ("stray", AT, b"\x03" + bytes(7)), ("KeAcquireSpinLock", AT)],
    "taken above DISPATCH_LEVEL": [("KeInitializeSpinLock", AT), ("irql", 3), ("KeAcquireSpinLock", AT)],
    "released with an IRQL that is not one": [
        ("KeInitializeSpinLock", AT), ("KeAcquireSpinLock", AT), ("KeReleaseSpinLock", AT, 16),
        ("KeReleaseSpinLock", AT, -1), ("KeReleaseSpinLock", AT, 0)],
    "misaligned, across a page boundary, paged out": [
        ("KeInitializeSpinLock", (0, 0x104)), ("KeAcquireSpinLock", (0, 0x104)),
        ("KeReleaseSpinLock", (0, 0x104), 0), ("KeInitializeSpinLock", (1, 0xFFC)),
        ("KeAcquireSpinLock", (1, 0xFFC)), ("KeReleaseSpinLock", (1, 0xFFC), 0),
        ("KeInitializeSpinLock", (1, 0x100)), ("page_out", 0), ("KeAcquireSpinLock", (1, 0x100))],
    "released after its page went out": [
        ("KeInitializeSpinLock", (1, 0x100)), ("KeAcquireSpinLock", (1, 0x100)), ("irql", 0),
        ("page_out", 0), ("KeReleaseSpinLock", (1, 0x100), 0)],
    "Driver Verifier listening for raises": [
        ("listen_irql",), ("KeInitializeSpinLock", AT), ("KeAcquireSpinLock", AT), ("queue_dpc",),
        ("KeReleaseSpinLock", AT, 0), ("KeRaiseIrql", 1), ("KeAcquireSpinLock", AT)],
    "raised and lowered, a DPC queued between": [
        ("KeRaiseIrql", 1), ("KeRaiseIrqlToDpcLevel",), ("queue_dpc",), ("allocate_paged",),
        ("KeLowerIrql", 1), ("allocate_paged",), ("KeRaiseIrql", 15), ("KeLowerIrql", 0),
        ("KeRaiseIrql", 16), ("KeRaiseIrql", 2), ("KeRaiseIrql", 1), ("KeLowerIrql", 3)],
    "queued spin lock pair, a DPC queued under it, at PASSIVE_LEVEL and APC_LEVEL": [
        ("KeInitializeSpinLock", AT), ("KeAcquireInStackQueuedSpinLock", AT, (0, 0x220)),
        ("queue_dpc",), ("allocate_paged",)],
    "queued spin lock pair released, then taken at APC_LEVEL": [
        ("KeInitializeSpinLock", AT), ("KeAcquireInStackQueuedSpinLock", AT, (0, 0x220)),
        ("queue_dpc",), ("KeReleaseInStackQueuedSpinLock", (0, 0x220)), ("allocate_paged",),
        ("irql", 1), ("listen_irql",), ("KeAcquireInStackQueuedSpinLock", AT, (0, 0x220)),
        ("KeReleaseInStackQueuedSpinLock", (0, 0x220)), ("allocate_paged",)],
    "raised with Driver Verifier listening": [
        ("listen_irql",), ("KeRaiseIrql", 1), ("KeRaiseIrqlToDpcLevel",), ("KeRaiseIrql", 2),
        ("KeLowerIrql", 0), ("KeRaiseIrqlToDpcLevel",)],
}

# --- run-down protection -------------------------------------------------------------------

RUNDOWN_STEPS = st.one_of(
    st.tuples(st.just("ExInitializeRundownProtection"), OBJECT),
    st.tuples(st.just("ExAcquireRundownProtection"), OBJECT),
    st.tuples(st.just("ExReleaseRundownProtection"), OBJECT),
    st.tuples(st.just("ExAcquireRundownProtectionEx"), OBJECT, st.integers(0, 3)),
    st.tuples(st.just("ExReleaseRundownProtectionEx"), OBJECT, st.integers(0, 3)),
    st.tuples(st.just("ExWaitForRundownProtectionRelease"), OBJECT),
    st.tuples(st.just("ExRundownCompleted"), OBJECT),
    st.tuples(st.just("ExReInitializeRundownProtection"), OBJECT),
    *COMMON_STEPS,
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["7", "11"]), st.lists(RUNDOWN_STEPS, max_size=30))
def test_the_inline_rundown_paths_write_what_the_way_through_write_writes(windows, steps):
    _run_both(windows, steps)


RUNDOWN_SCENARIOS = {
    "acquired twice, released three times (the count wraps)": [
        ("ExInitializeRundownProtection", AT), ("ExAcquireRundownProtection", AT),
        ("ExAcquireRundownProtection", AT), ("ExReleaseRundownProtection", AT),
        ("ExReleaseRundownProtection", AT), ("ExReleaseRundownProtection", AT),
        ("ExAcquireRundownProtection", AT)],
    "run-down begun, then completed, then re-initialized": [
        ("ExInitializeRundownProtection", AT), ("ExWaitForRundownProtectionRelease", AT),
        ("ExAcquireRundownProtection", AT), ("ExReleaseRundownProtection", AT),
        ("ExRundownCompleted", AT), ("ExReleaseRundownProtection", AT),
        ("ExReInitializeRundownProtection", AT), ("ExAcquireRundownProtection", AT)],
    "a stray count with the active bit, and all ones": [
        ("stray", AT, b"\x07" + bytes(7)), ("ExAcquireRundownProtection", AT),
        ("stray", AT, b"\xFE" * 8), ("ExAcquireRundownProtection", AT),
        ("ExReleaseRundownProtection", AT), ("stray", AT, bytes(8)), ("ExReleaseRundownProtection", AT)],
    "misaligned, across a page boundary, paged out": [
        ("ExInitializeRundownProtection", (0, 0x104)), ("ExAcquireRundownProtection", (0, 0x104)),
        ("ExReleaseRundownProtection", (0, 0x104)), ("ExInitializeRundownProtection", (1, 0xFFC)),
        ("ExAcquireRundownProtection", (1, 0xFFC)), ("ExInitializeRundownProtection", (1, 0x100)),
        ("page_out", 0), ("ExAcquireRundownProtection", (1, 0x100)), ("page_out", 0),
        ("ExReleaseRundownProtection", (1, 0x100)), ("page_out", 0), ("irql", 2),
        ("ExAcquireRundownProtection", (1, 0x100))],
    "above DISPATCH_LEVEL": [
        ("ExInitializeRundownProtection", AT), ("irql", 3), ("ExAcquireRundownProtection", AT)],
    "released above DISPATCH_LEVEL": [
        ("ExInitializeRundownProtection", AT), ("ExAcquireRundownProtection", AT), ("irql", 3),
        ("ExReleaseRundownProtection", AT)],
}

# --- timers ---------------------------------------------------------------------------------

DUE = st.one_of(st.integers(-(10 ** 8), 10 ** 8), st.sampled_from([0, -1, 1 << 63, (1 << 64) - 1,
                                                                  133485408000000000 + 10 ** 7]))
TIMER_STEPS = st.one_of(
    st.tuples(st.just("KeInitializeTimer"), OBJECT),
    st.tuples(st.just("KeInitializeTimerEx"), OBJECT, st.integers(0, 1)),
    st.tuples(st.just("KeSetTimer"), OBJECT, DUE, st.just(0)),
    st.tuples(st.just("KeSetTimerEx"), OBJECT, DUE, st.sampled_from([0, 1, 1000, -1, 1 << 32]),
              st.just(0)),
    st.tuples(st.just("KeCancelTimer"), OBJECT),
    st.tuples(st.just("KeReadStateTimer"), OBJECT),
    st.tuples(st.just("advance"), st.integers(0, 2 * 10 ** 7)),
    *COMMON_STEPS,
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["7", "11"]), st.lists(TIMER_STEPS, max_size=30))
def test_the_inline_timer_paths_write_what_the_way_through_write_writes(windows, steps):
    _run_both(windows, steps)


TIMER_SCENARIOS = {
    "set, set again, expired, cancelled": [
        ("stray", AT, b"\xA5" * 24), ("KeInitializeTimer", AT), ("stray", (0, 0x238), b"\x5A" * 8),
        ("KeSetTimer", AT, -10000, 0), ("KeSetTimerEx", AT, -20000, 1, 0), ("KeReadStateTimer", AT),
        ("advance", 30000), ("KeReadStateTimer", AT), ("KeCancelTimer", AT), ("KeCancelTimer", AT)],
    "a stray DPC pointer and period, then set over them": [
        ("KeInitializeTimer", AT), ("stray", (0, 0x230), b"\x11" * 16),
        ("KeSetTimerEx", AT, -5, -1, 0), ("KeSetTimer", AT, 1 << 63, 0), ("advance", 10)],
    "misaligned, the last bytes on the next page, paged out": [
        ("KeInitializeTimer", (0, 0x104)), ("KeSetTimer", (0, 0x104), -1, 0),
        ("KeInitializeTimer", (0, 0xFC0)), ("KeSetTimer", (0, 0xFC0), -1, 0),
        ("KeSetTimer", (0, 0xFC8), -1, 0), ("KeInitializeTimer", (1, 0x100)), ("page_out", 0),
        ("KeSetTimer", (1, 0x100), -1, 0), ("page_out", 0), ("irql", 2),
        ("KeSetTimer", (1, 0x100), -1, 0)],
    "above DISPATCH_LEVEL": [
        ("KeInitializeTimer", AT), ("irql", 3), ("KeSetTimer", AT, -1, 0)],
}


@pytest.mark.parametrize("windows", ["7", "11"])
def test_the_scenarios_end_as_on_the_way_through_write(windows):
    for name, steps in {**SPIN_LOCK_SCENARIOS, **RUNDOWN_SCENARIOS, **TIMER_SCENARIOS}.items():
        try:
            _run_both(windows, steps)
        except AssertionError as error:
            raise AssertionError(f"{name}: {error}") from None


# --- system PTEs mapped and unmapped a page table's share at a time ---------------------------
# MmAllocateNonCachedMemory / MmFreeNonCachedMemory, MmMapIoSpace / MmUnmapIoSpace and the MDL
# mappings write each page table's share of PTEs at once (``map_pages`` with the cache bits,
# ``unmap_pages``), zero and free a run of frames with one slice. The other machine does it
# page by page, as they did before: map_page then set_pte_bits, unmap_page, zero_frame and
# free_frame for each. Every result, bug check, PTE, TLB entry, frame and byte must match.

from ntpool.hooks import MappingChanged  # noqa: E402
from ntpool.routines.io import SYSTEM_PTE_BASE  # noqa: E402


def _page_by_page(k) -> None:
    space, physical = k.space, k.physical

    def map_pages(va, frames, executable=False, bits=0):
        for index, pfn in enumerate(frames):
            space.map_page(va + (index << 12), pfn, executable=executable)
            if bits:
                space.set_pte_bits(va + (index << 12), bits)

    space.map_pages = map_pages
    space.unmap_pages = lambda va, count: [space.unmap_page(va + (index << 12))
                                           for index in range(count)]
    physical.zero_frames = lambda frames: [physical.zero_frame(pfn) for pfn in frames]
    physical.free_frames = lambda frames: [physical.free_frame(pfn) for pfn in frames]


def _mapping_machine(windows: str, page_by_page: bool):
    k, regions = machine_with_regions(windows, False, "RouM", REGION)
    if page_by_page:
        _page_by_page(k)
    k.made = []  # (base address, bytes) of each mapping made
    k.unmapped = []
    k.hooks.subscribe(MappingChanged, lambda event: k.unmapped.append(event.address))
    return k, regions


def _mapping_state(k, regions):
    vas = range(SYSTEM_PTE_BASE, k._next_system_pte, 0x1000)
    return (k.made, sorted(k.unmapped), [k.space.pte(va) for va in vas],
            [k.space.tlb.get(va >> 12) for va in vas], bytes(k.physical.frame_in_use),
            k.physical.frames_used, k.physical._hint, dict(k._system_ptes),
            [_mapped_bytes(k, base, size) for base, size in k.made], region_bytes(k, regions, REGION))


def _mapped_bytes(k, base, size):
    """A mapping's bytes, page by page (None for a page no longer mapped)."""
    pages = range(base & ~0xFFF, base + size, 0x1000) if base else ()
    return [bytes(k.read(page, 0x1000)) if k.space.translate(page) is not None else None
            for page in pages]


def _apply_mapping(k, regions, step):
    what, *args = step
    if what == "noncached":
        size = args[0]
        base = k.MmAllocateNonCachedMemory(size)
        k.made.append((base, size))
        return base
    if what == "map_io":
        where, size, cache = args
        base = k.MmMapIoSpace(where, size, cache)
        k.made.append((base, size))
        return base
    if what == "map_region":  # an MDL of paged pool, locked and mapped again at system PTEs
        mdl = k.IoAllocateMdl(regions[1], args[0], 0, 0, 0)
        k.MmProbeAndLockPages(mdl, 0, 1)
        base = k.MmMapLockedPagesSpecifyCache(mdl, 0, args[1], 0, 0, 0)
        k.made.append((base, args[0]))
        return base
    if not k.made:
        return None
    base, size = k.made[args[0] % len(k.made)]
    if what == "free_noncached":
        return k.MmFreeNonCachedMemory(base, size + args[1])
    if what == "unmap_io":
        return k.MmUnmapIoSpace(base, size + args[1])
    if what == "write":
        return k.write(base + args[1], args[2])
    raise AssertionError(what)


SIZE = st.one_of(st.integers(1, 6 * 0x1000), st.sampled_from([0x1000, 0x2000, 0x4000, 0x200 * 0x1000]))
MAPPING_STEPS = st.one_of(
    st.tuples(st.just("noncached"), SIZE),
    st.tuples(st.just("map_io"), st.integers(0x100000, 0x180000), SIZE, st.integers(0, 3)),
    st.tuples(st.just("map_region"), st.integers(1, REGION), st.integers(0, 2)),
    st.tuples(st.just("free_noncached"), st.integers(0, 9), st.sampled_from([0, 0, 0, 0x1000, -1])),
    st.tuples(st.just("unmap_io"), st.integers(0, 9), st.sampled_from([0, 0, 0, 0x1000, -1])),
    st.tuples(st.just("write"), st.integers(0, 9), st.integers(0, 0x3000), st.binary(min_size=1, max_size=16)),
)


def _run_mapping_both(windows, steps):
    run_both(lambda page_by_page: _mapping_machine(windows, page_by_page), _apply_mapping,
             _mapping_state, steps)


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(["7", "11"]), st.lists(MAPPING_STEPS, max_size=20))
def test_mappings_made_a_page_table_at_a_time_are_the_page_by_page_ones(windows, steps):
    _run_mapping_both(windows, steps)


MAPPING_SCENARIOS = {
    "noncached runs freed out of order, then a mapping of frames that are no run": [
        ("noncached", 0x3000), ("noncached", 0x1000), ("noncached", 0x2000),
        ("write", 0, 0x2FF0, b"\x77" * 16), ("free_noncached", 0, 0), ("free_noncached", 2, 0),
        ("noncached", 0x4000), ("write", 3, 0x3FF8, b"\xA5" * 8), ("free_noncached", 3, 0),
        ("free_noncached", 1, 0), ("noncached", 0x1000), ("noncached", 0x3000)],
    "I/O space over a page table's end, every cache type, freed with the wrong size": [
        ("map_io", 0x100800, 0x200 * 0x1000, 0), ("map_io", 0x101000, 0x3000, 1),
        ("map_io", 0x101000, 0x3001, 2), ("map_io", 0x101000, 0x1000, 3),
        ("unmap_io", 1, 0), ("unmap_io", 2, 0x1000)],
    "pool pages mapped again through an MDL": [
        ("map_region", 0x2800, 1), ("map_region", 0x10, 0), ("write", 0, 0x1000, b"\x5A" * 16)],
}


@pytest.mark.parametrize("windows", ["7", "11"])
def test_the_mapping_scenarios_end_as_page_by_page(windows):
    for name, steps in MAPPING_SCENARIOS.items():
        try:
            _run_mapping_both(windows, steps)
        except AssertionError as error:
            raise AssertionError(f"{name}: {error}") from None
