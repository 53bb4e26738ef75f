"""The executive resources' and the RTL bitmaps' usual calls are made inline (the structure's
QWORDs, the bits' bytes read and written at once); anything unusual takes the way they took
before. As in test_sync_fast_cases, each test runs the same steps on two machines: one as
drivers run it, and one with a MemoryWritten listener, on which every routine takes its way
through ``k.write`` (the code the inline paths replace). Every result, error, bug check and
byte must be the same, on Windows 7 and 11, for aligned and misaligned structures, ones
across a page boundary, on paged-out pages, and with any bytes a stray write left in them."""

from hypothesis import given, settings
from hypothesis import strategies as st

import ntpool
from two_ways import apply_step, common_steps, machine_with_regions, region_bytes, run_both

NP = ntpool.PoolType.NonPagedPool
PAGED = ntpool.PoolType.PagedPool
REGION = 0x3000  # three pages: structures placed anywhere in the first two, across their boundary
THREAD = 0xFFFFFA8000FF0000  # the one thread, as ExReleaseResourceForThreadLite names it


def _machine(windows: str, published: bool):
    return machine_with_regions(windows, published, "ResF", REGION)


def _state(k, regions):
    return (k.irql_by_processor[:], k.critical_region, sorted(getattr(k, "resources", ())),
            region_bytes(k, regions, REGION))


OFFSETS = st.sampled_from([0x100, 0x108, 0x104, 0x101, 0x107, 0xF98, 0xFA0, 0xFB8, 0xFC0, 0xFC8,
                           0xFD0, 0xFE5, 0xFE6, 0xFE8, 0xFF0, 0xFF8, 0xFFC, 0xFFF])
OBJECT = st.tuples(st.integers(0, 1), OFFSETS)  # (which region: nonpaged, paged; offset)


def _run_both(windows, steps):
    run_both(lambda published: _machine(windows, published), apply_step, _state, steps)


COMMON_STEPS = common_steps(OBJECT)
RESOURCE_STEPS = st.one_of(
    st.tuples(st.just("ExInitializeResourceLite"), OBJECT),
    st.tuples(st.just("ExAcquireResourceExclusiveLite"), OBJECT, st.integers(0, 1)),
    st.tuples(st.just("ExAcquireResourceSharedLite"), OBJECT, st.integers(0, 1)),
    st.tuples(st.just("ExReleaseResourceLite"), OBJECT),
    st.tuples(st.just("ExReleaseResourceForThreadLite"), OBJECT, st.just(THREAD)),
    st.tuples(st.just("ExIsResourceAcquiredExclusiveLite"), OBJECT),
    st.tuples(st.just("ExIsResourceAcquiredSharedLite"), OBJECT),
    st.tuples(st.just("KeEnterCriticalRegion")),
    st.tuples(st.just("KeLeaveCriticalRegion")),
    *COMMON_STEPS,
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["7", "11"]), st.lists(RESOURCE_STEPS, max_size=30))
def test_the_inline_resource_paths_write_what_the_way_through_write_writes(windows, steps):
    _run_both(windows, steps)


AT = (0, 0x200)  # an aligned resource in nonpaged pool
SCENARIOS = {
    "exclusive, recursively, then shared by the owner, released in turn": [
        ("ExInitializeResourceLite", AT), ("ExAcquireResourceExclusiveLite", AT, 1),
        ("ExAcquireResourceExclusiveLite", AT, 1), ("ExAcquireResourceSharedLite", AT, 1),
        ("ExIsResourceAcquiredExclusiveLite", AT), ("ExIsResourceAcquiredSharedLite", AT),
        ("ExReleaseResourceLite", AT), ("ExReleaseResourceForThreadLite", AT, THREAD),
        ("ExReleaseResourceLite", AT), ("ExIsResourceAcquiredExclusiveLite", AT),
        ("ExReleaseResourceLite", AT)],
    "shared, then exclusive without and with waiting": [
        ("ExInitializeResourceLite", AT), ("ExAcquireResourceSharedLite", AT, 0),
        ("ExAcquireResourceExclusiveLite", AT, 0), ("ExAcquireResourceExclusiveLite", AT, 1)],
    "shared at the counts' limits, beside stray bytes": [
        ("ExInitializeResourceLite", AT), ("stray", (0, 0x218), b"\xFF\xFF\x00\x00\xA5\xA5\xA5\xA5"),
        ("stray", (0, 0x238), b"\xFF\xFF\xFF\xFF\x5A\x5A\x5A\x5A"),
        ("ExAcquireResourceExclusiveLite", AT, 1), ("ExIsResourceAcquiredSharedLite", AT),
        ("ExAcquireResourceSharedLite", AT, 1), ("ExIsResourceAcquiredSharedLite", AT),
        ("ExReleaseResourceLite", AT)],
    "exclusive at the counts' limits, beside stray bytes": [
        ("ExInitializeResourceLite", AT), ("stray", (0, 0x218), b"\xFF\xFF\x80\x00\xA5\xA5\xA5\xA5"),
        ("stray", (0, 0x238), b"\xFF\xFF\xFF\xFF\x5A\x5A\x5A\x5A"),
        ("ExAcquireResourceExclusiveLite", AT, 1), ("ExIsResourceAcquiredExclusiveLite", AT),
        ("ExReleaseResourceLite", AT)],
    "released down from stray counts and flags": [
        ("ExInitializeResourceLite", AT), ("stray", (0, 0x218), b"\x02\x00\xFF\xFF\xA5\xA5\xA5\xA5"),
        ("stray", (0, 0x230), b"\x11" * 8 + b"\x07\x00\x00\x00\x5A\x5A\x5A\x5A"),
        ("ExReleaseResourceLite", AT), ("ExIsResourceAcquiredExclusiveLite", AT),
        ("ExReleaseResourceForThreadLite", AT, THREAD), ("ExIsResourceAcquiredExclusiveLite", AT),
        ("ExReleaseResourceLite", AT)],
    "across a page boundary and paged out": [
        ("ExInitializeResourceLite", (1, 0xFE0)), ("ExAcquireResourceExclusiveLite", (1, 0xFE0), 1),
        ("page_out", 0), ("ExIsResourceAcquiredExclusiveLite", (1, 0xFE0)),
        ("page_out", 1), ("ExReleaseResourceLite", (1, 0xFE0)), ("ExReleaseResourceLite", (1, 0xFE0))],
    "critical regions entered and left around the pair": [
        ("KeEnterCriticalRegion",), ("ExInitializeResourceLite", AT),
        ("ExAcquireResourceSharedLite", AT, 1), ("ExReleaseResourceLite", AT),
        ("KeLeaveCriticalRegion",), ("KeLeaveCriticalRegion",)],
}


def test_the_scenarios_end_as_on_the_way_through_write():
    for name, steps in SCENARIOS.items():
        for windows in ("7", "11"):
            try:
                _run_both(windows, steps)
            except AssertionError as error:
                raise AssertionError(f"{name} (Windows {windows}): {error}") from None


# --- RTL bitmaps: headers and buffers anywhere in the regions, bits of every kind --------------

HEADER = st.tuples(st.integers(0, 1), st.sampled_from([0x100, 0x108, 0x104, 0x101, 0xFE8, 0xFF0,
                                                      0xFF4, 0xFF8, 0xFFF]))
BUFFER = st.tuples(st.integers(0, 1), st.sampled_from([0x400, 0x404, 0x401, 0xFC0, 0xFF8, 0xFFE,
                                                      0xF00, 0x1FF0]))
INDEX = st.one_of(st.integers(0, 700), st.sampled_from([0xFFFFFFFF, 1 << 31, 1 << 40]))
COUNT = st.one_of(st.integers(0, 80), st.integers(0, 700), st.sampled_from([0xFFFFFFFF]))
BITMAP_STEPS = st.one_of(
    st.tuples(st.just("RtlInitializeBitMap"), HEADER, BUFFER, st.integers(0, 600)),
    st.tuples(st.just("RtlSetBits"), HEADER, INDEX, COUNT),
    st.tuples(st.just("RtlClearBits"), HEADER, INDEX, COUNT),
    st.tuples(st.just("RtlSetBit"), HEADER, INDEX),
    st.tuples(st.just("RtlClearBit"), HEADER, INDEX),
    st.tuples(st.just("RtlTestBit"), HEADER, INDEX),
    st.tuples(st.just("RtlAreBitsClear"), HEADER, INDEX, COUNT),
    st.tuples(st.just("RtlAreBitsSet"), HEADER, INDEX, COUNT),
    st.tuples(st.just("RtlFindClearBits"), HEADER, COUNT, INDEX),
    st.tuples(st.just("RtlFindSetBits"), HEADER, COUNT, INDEX),
    st.tuples(st.just("RtlFindClearBitsAndSet"), HEADER, COUNT, INDEX),
    st.tuples(st.just("RtlFindSetBitsAndClear"), HEADER, COUNT, INDEX),
    st.tuples(st.just("RtlNumberOfSetBits"), HEADER),
    st.tuples(st.just("RtlNumberOfClearBits"), HEADER),
    st.tuples(st.just("RtlFindFirstRunClear"), HEADER),
    st.tuples(st.just("RtlFindNextForwardRunClear"), HEADER, INDEX),
    st.tuples(st.just("RtlClearAllBits"), HEADER),
    st.tuples(st.just("RtlSetAllBits"), HEADER),
    st.tuples(st.just("stray"), BUFFER, st.binary(min_size=1, max_size=96)),
    *COMMON_STEPS,
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["7", "11"]), st.lists(BITMAP_STEPS, max_size=30))
def test_the_inline_bitmap_paths_read_and_write_what_the_way_through_write_does(windows, steps):
    _run_both(windows, steps)


HDR = (0, 0x100)  # an aligned header in nonpaged pool, its bits at 0x400
BITMAP_SCENARIOS = {
    "runs found near the hint, past it, wrapped to the start, and none": [
        ("RtlInitializeBitMap", HDR, (0, 0x400), 600), ("RtlSetBits", HDR, 0, 300),
        ("RtlFindClearBits", HDR, 4, 0), ("RtlFindClearBits", HDR, 200, 5), ("RtlFindSetBits", HDR, 64, 290),
        ("RtlFindSetBits", HDR, 64, 250), ("RtlFindClearBitsAndSet", HDR, 64, 500),
        ("RtlFindClearBitsAndSet", HDR, 300, 0), ("RtlFindSetBitsAndClear", HDR, 3, 599),
        ("RtlFindClearBits", HDR, 1, 700), ("RtlNumberOfSetBits", HDR)],
    "stray bits: runs that end exactly at the window's edge": [
        ("RtlInitializeBitMap", HDR, (0, 0x400), 400), ("stray", (0, 0x400), b"\xFF" * 16 + b"\x00" * 8),
        ("stray", (0, 0x40F), b"\x0F"), ("RtlFindClearBits", HDR, 4, 0), ("RtlFindClearBits", HDR, 5, 0),
        ("RtlFindSetBits", HDR, 64, 0), ("RtlFindSetBits", HDR, 64, 1), ("RtlFindSetBits", HDR, 60, 68),
        ("RtlTestBit", HDR, 127), ("RtlTestBit", HDR, 128), ("RtlAreBitsSet", HDR, 0, 124)],
    "bits changed across a page boundary and past the buffer": [
        ("RtlInitializeBitMap", HDR, (0, 0xFF8), 4000), ("RtlSetBits", HDR, 60, 10),
        ("RtlClearBits", HDR, 62, 3), ("RtlSetBit", HDR, 3999), ("RtlFindSetBits", HDR, 2, 50),
        ("RtlClearBit", HDR, 3999), ("RtlNumberOfSetBits", HDR)],
    "a header across a page boundary, then on a paged-out page": [
        ("RtlInitializeBitMap", (1, 0xFF8), (0, 0x400), 100), ("RtlSetBits", (1, 0xFF8), 1, 2),
        ("RtlTestBit", (1, 0xFF8), 2), ("RtlInitializeBitMap", (1, 0x100), (1, 0x1400), 100),
        ("RtlSetBits", (1, 0x100), 1, 2), ("page_out", 0), ("RtlTestBit", (1, 0x100), 2),
        ("page_out", 1), ("RtlSetBits", (1, 0x100), 5, 1), ("RtlTestBit", (1, 0x100), 5)],
    "runs of exactly the length asked for, between set bits": [
        ("RtlInitializeBitMap", HDR, (0, 0x400), 200), ("stray", (0, 0x400), b"\x11\xE1\x07\xFF"),
        ("RtlFindClearBits", HDR, 3, 0), ("RtlFindClearBits", HDR, 4, 0), ("RtlFindClearBits", HDR, 5, 0),
        ("RtlFindSetBits", HDR, 3, 0), ("RtlFindSetBits", HDR, 11, 0), ("RtlFindSetBits", HDR, 12, 0),
        ("RtlTestBit", HDR, 0), ("RtlTestBit", HDR, 4), ("RtlTestBit", HDR, 13)],
    "bits one byte across a page boundary, the next page paged out": [
        ("RtlInitializeBitMap", HDR, (1, 0xFFF), 64), ("RtlSetBits", HDR, 0, 8),
        ("page_out", 1), ("irql", 2), ("RtlSetBits", HDR, 4, 8), ("RtlTestBit", HDR, 4)],
    "a run that would go on past SizeOfBitMap, near its end": [
        ("RtlInitializeBitMap", HDR, (0, 0x400), 100), ("stray", (0, 0x40C), bytes(4)),
        ("RtlSetBits", HDR, 0, 97), ("RtlFindClearBits", HDR, 4, 97), ("RtlFindClearBitsAndSet", HDR, 4, 98),
        ("RtlFindSetBitsAndClear", HDR, 2, 99), ("RtlFindClearBitsAndSet", HDR, 3, 97),
        ("RtlFindClearBits", HDR, 1, 99), ("RtlNumberOfSetBits", HDR)],
    "bits up to and across a QWORD's end": [
        ("RtlInitializeBitMap", HDR, (0, 0x400), 300), ("RtlSetBits", HDR, 60, 10),
        ("RtlSetBits", HDR, 120, 8), ("RtlClearBits", HDR, 62, 3), ("RtlClearBits", HDR, 56, 16),
        ("RtlSetBits", HDR, 0, 64), ("RtlClearBits", HDR, 1, 63), ("RtlNumberOfSetBits", HDR)],
    "a header whose last bytes are on a paged-out page, at DISPATCH_LEVEL": [
        ("RtlInitializeBitMap", (1, 0xFF4), (0, 0x400), 100), ("page_out", 1), ("irql", 2),
        ("RtlNumberOfSetBits", (1, 0xFF4))],
    "bits past the end of memory": [
        ("RtlInitializeBitMap", HDR, (0, 0x400), 100), ("stray", (0, 0x108), b"\xFF" * 8),
        ("RtlTestBit", HDR, 5), ("RtlSetBits", HDR, 5, 1)],
}


def test_the_bitmap_scenarios_end_as_on_the_way_through_write():
    for name, steps in BITMAP_SCENARIOS.items():
        for windows in ("7", "11"):
            try:
                _run_both(windows, steps)
            except AssertionError as error:
                raise AssertionError(f"{name} (Windows {windows}): {error}") from None
