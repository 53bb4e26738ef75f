"""Drivers' own lookaside lists as Windows keeps them: linked on ExNPagedLookasideListHead /
ExPagedLookasideListHead in ntoskrnl's image, unlinked by ExDelete*, and retuned by
ExAdjustLookasideDepth (scan 0 nonpaged, scan 1 paged, scan 2 the pool's lists) reading and
writing the GENERAL_LOOKASIDE in the driver's memory."""

import inspect
import struct

import pytest

import ntpool
from ntpool.constants import BugCheckCode
from ntpool.dump.reader import DumpReader
from ntpool.errors import MachineHung
from ntpool.routines import registry
from ntpool.routines.runtime import (
    EXP_SCAN_GENERAL_LOOKASIDE_LIST,
    LA_DEPTH,
    LA_LAST_ALLOCATE_MISSES,
    LA_LAST_TOTAL_ALLOCATES,
    LA_LIST_ENTRY,
    RuntimeRoutines,
)

NP, PG = ntpool.PoolType.NonPagedPool, ntpool.PoolType.PagedPool
MiB = 1 << 20
NPAGED_LOOKASIDE_LIST_SIZE = 0xC0


@pytest.fixture
def k():
    return ntpool.Kernel(nonpaged_pool_bytes=4 * MiB, paged_pool_bytes=4 * MiB, delayed_frees=False)


def new_list(k, paged=False, tag="Drvl"):
    lookaside = k.ExAllocatePoolWithTag(NP, NPAGED_LOOKASIDE_LIST_SIZE, "Lkas")
    init = k.ExInitializePagedLookasideList if paged else k.ExInitializeNPagedLookasideList
    init(lookaside, 0, 0, 0, 64, tag, 0)
    return lookaside


def depth(k, lookaside):
    return struct.unpack("<H", k.read(lookaside + LA_DEPTH, 2))[0]


def links(k, address):
    return struct.unpack("<QQ", k.read(address, 16))


def miss(k, lookaside, times, paged=False):
    allocate = k.ExAllocateFromPagedLookasideList if paged else k.ExAllocateFromNPagedLookasideList
    return [allocate(lookaside) for _ in range(times)]  # the list is empty: every one a miss


def test_initialize_links_onto_the_global_heads_and_delete_unlinks(k):
    head_np, head_p = k.npaged_lookaside_list_head, k.paged_lookaside_list_head
    assert links(k, head_np) == (head_np, head_np) and links(k, head_p) == (head_p, head_p)
    a, b = new_list(k), new_list(k)
    c = new_list(k, paged=True)
    assert k.listed_lookasides(NP) == [a, b] and k.listed_lookasides(PG) == [c]
    # ExInterlockedInsertTailList: the head's Blink is the newest; each entry points back.
    assert links(k, head_np) == (a + LA_LIST_ENTRY, b + LA_LIST_ENTRY)
    assert links(k, b + LA_LIST_ENTRY) == (head_np, a + LA_LIST_ENTRY)
    k.ExDeleteNPagedLookasideList(a)
    assert k.listed_lookasides(NP) == [b]
    assert links(k, head_np) == (b + LA_LIST_ENTRY, b + LA_LIST_ENTRY)
    k.ExDeleteNPagedLookasideList(b)
    k.ExDeletePagedLookasideList(c)
    assert links(k, head_np) == (head_np, head_np) and links(k, head_p) == (head_p, head_p)


def test_depths_move_with_time_in_windows_scan_order(k):
    """Scan 0 (the first second) retunes the nonpaged drivers' lists, scan 1 the paged ones,
    scan 2 one set of the pool's lists; each driver list over a 3-second period."""
    np_list, p_list = new_list(k), new_list(k, paged=True)
    for lookaside, paged in ((np_list, False), (p_list, True)):
        for entry in miss(k, lookaside, 100, paged):
            k.ExFreePool(entry)
    assert depth(k, np_list) == depth(k, p_list) == 4
    scanner = k.pool.lookaside_scanner
    k.advance_time(1)  # scan 0: 100 allocations in 3 s, all misses: +min(1000 * 252 / 2000 + 5, 30)
    assert depth(k, np_list) == 34 and depth(k, p_list) == 4 and scanner.pool_scan_count == 0
    assert struct.unpack("<II", k.read(np_list + LA_LAST_TOTAL_ALLOCATES, 8)) == (100, 100)
    k.advance_time(1)  # scan 1: the paged list
    assert depth(k, np_list) == 34 and depth(k, p_list) == 34 and scanner.pool_scan_count == 0
    k.advance_time(1)  # scan 2: the pool's own lists (processor 0's set)
    assert depth(k, np_list) == depth(k, p_list) == 34 and scanner.pool_scan_count == 1
    k.advance_time(1)  # scan 0 again: no allocations since: -10
    assert depth(k, np_list) == 24 and depth(k, p_list) == 34
    # A hit rate above 99.5%: -1. 80 hits and no miss over the period.
    entries = miss(k, np_list, 20)
    for entry in entries:
        k.ExFreeToNPagedLookasideList(np_list, entry)
    for _ in range(80):
        k.ExFreeToNPagedLookasideList(np_list, k.ExAllocateFromNPagedLookasideList(np_list))
    last = struct.unpack("<I", k.read(np_list + LA_LAST_ALLOCATE_MISSES, 4))[0]
    k.write(np_list + LA_LAST_ALLOCATE_MISSES, struct.pack("<I", last + 20))  # forget the 20 misses
    k.advance_time(3)
    assert depth(k, np_list) == 23


def test_retuning_reads_the_counters_the_driver_left_in_its_memory(k):
    lookaside = new_list(k)
    # A driver that scribbled its own counters: TotalAllocates 0xFFFFFFF0, AllocateMisses
    # 0x7FFFFFFF. ULONG arithmetic as Windows': allocates wrap, misses * 1000 wraps.
    k.write(lookaside + 0x14, struct.pack("<II", 0xFFFFFFF0, 0x7FFFFFFF))
    k.advance_time(1)
    ratio = (0x7FFFFFFF * 1000 & 0xFFFFFFFF) // 0xFFFFFFF0  # 0: under 0.5%
    assert ratio < 5 and depth(k, lookaside) == 4  # -1, not below 4
    assert struct.unpack("<II", k.read(lookaside + LA_LAST_TOTAL_ALLOCATES, 8)) == (0xFFFFFFF0, 0x7FFFFFFF)


def test_the_list_heads_are_in_the_dump_and_read_back(k, tmp_path):
    a, b = new_list(k, tag="Drv1"), new_list(k, tag="Drv2")
    c = new_list(k, paged=True, tag="Drv3")
    for entry in miss(k, a, 80):
        k.ExFreeToNPagedLookasideList(a, entry)
    k.advance_time(1)
    path = tmp_path / "MEMORY.DMP"
    from ntpool.dump.writer import write_dump
    write_dump(k, str(path), "kernel")
    with DumpReader(str(path)) as reader:
        assert reader.kernel_global("ExNPagedLookasideListHead") == k.npaged_lookaside_list_head
        nonpaged = reader.lookaside_lists("ExNPagedLookasideListHead")
        paged = reader.lookaside_lists("ExPagedLookasideListHead")
    assert [entry["Address"] for entry in nonpaged] == [a, b]
    assert [entry["Address"] for entry in paged] == [c]
    first = nonpaged[0]
    assert first["Tag"] == int.from_bytes(b"Drv1", "big")  # the C constant 'Drv1' and first["Size"] == 64
    assert first["TotalAllocates"] == first["AllocateMisses"] == 80 and first["Depth"] == depth(k, a)
    assert first["LastTotalAllocates"] == 80 and first["MaximumDepth"] == 256
    assert paged[0]["Type"] == PG


def test_a_list_freed_without_delete_is_still_scanned_and_writes_into_freed_memory(k):
    """Windows 7 follows the links as they are: the scan retunes the freed memory (the list
    entry survives the free), which the next owner of that memory sees change."""
    lookaside = new_list(k)
    k.ExFreePoolWithTag(lookaside, "Lkas")  # no ExDeleteNPagedLookasideList
    k.write(lookaside + LA_DEPTH, struct.pack("<H", 200))
    k.advance_time(1)
    assert depth(k, lookaside) == 190  # the scan wrote its Depth into freed memory
    assert k.listed_lookasides(NP) == [lookaside]


def test_a_damaged_link_to_no_page_is_irql_not_less_or_equal_in_the_scan(k):
    lookaside = new_list(k)
    k.write(lookaside + LA_LIST_ENTRY, struct.pack("<Q", 0xFFFFFA8012345000))  # Flink: no page
    with pytest.raises(ntpool.BugCheck) as info:
        k.advance_time(1)
    assert info.value.code == BugCheckCode.IRQL_NOT_LESS_OR_EQUAL
    assert info.value.parameters == (0xFFFFFA8012345000 - LA_LIST_ENTRY + 0x18, 2, 0,
                                     EXP_SCAN_GENERAL_LOOKASIDE_LIST)


def test_a_non_canonical_link_is_a_general_protection_fault(k):
    lookaside = new_list(k, paged=True)
    k.write(lookaside + LA_LIST_ENTRY, struct.pack("<Q", 0x4141414141414141))
    k.advance_time(1)  # scan 0: the nonpaged lists are sound
    with pytest.raises(ntpool.BugCheck) as info:
        k.advance_time(1)
    assert info.value.code == BugCheckCode.KMODE_EXCEPTION_NOT_HANDLED
    assert info.value.parameters == (0xC0000005, EXP_SCAN_GENERAL_LOOKASIDE_LIST, 0, 0xFFFFFFFFFFFFFFFF)


def link_into_an_unloaded_driver(k) -> int:
    """Load and unload a driver, then point a listed lookaside list's Flink where the
    driver's global NPAGED_LOOKASIDE_LIST was (the link a live list keeps to it); its base."""

    class Careless:
        name = "careless.sys"

        def DriverEntry(self, k, path):
            return 0

    driver = k.load_driver(Careless())
    base = driver.image_base
    k.unload_driver(driver)
    lookaside = new_list(k)
    k.write(lookaside + LA_LIST_ENTRY, struct.pack("<Q", base + 0x3040))
    return base


def test_a_link_into_an_unloaded_drivers_image_is_bug_check_0xd4(k):
    base = link_into_an_unloaded_driver(k)
    with pytest.raises(ntpool.BugCheck) as info:
        k.advance_time(1)
    assert info.value.code == BugCheckCode.SYSTEM_SCAN_AT_RAISED_IRQL_CAUGHT_IMPROPER_DRIVER_UNLOAD
    assert info.value.parameters[0] == base + 0x3000 + 0x18 and info.value.parameters[1:3] == (2, 0)


def test_a_link_that_loops_away_from_the_head_hangs_with_a_clear_error(k):
    lookaside = new_list(k)
    entry = lookaside + LA_LIST_ENTRY
    k.write(entry, struct.pack("<Q", entry))  # Flink to itself: the head is never reached
    with pytest.raises(MachineHung, match="spin at DISPATCH_LEVEL forever"):
        k.advance_time(1)


def test_delete_of_a_list_whose_links_were_damaged_faults_in_the_removal(k):
    lookaside = new_list(k)
    k.write(lookaside + LA_LIST_ENTRY + 8, struct.pack("<Q", 0xFFFFFA8077777000))  # Blink
    with pytest.raises(ntpool.BugCheck) as info:
        k.ExDeleteNPagedLookasideList(lookaside)
    assert info.value.code == BugCheckCode.IRQL_NOT_LESS_OR_EQUAL
    assert info.value.parameters[:3] == (0xFFFFFA8077777000, 2, 1)


def test_segment_heap_machines_scan_the_drivers_lists_too():
    k = ntpool.Kernel(windows="11", nonpaged_pool_bytes=4 * MiB, paged_pool_bytes=4 * MiB)
    lookaside = new_list(k)
    for entry in miss(k, lookaside, 100):
        k.ExFreePool(entry)
    k.advance_time(3)
    assert depth(k, lookaside) == 34 and k.lookaside_scan_count == 0


def test_windows_10_checks_the_links_at_delete_0x139():
    """Windows 8 and later remove a LIST_ENTRY only when both neighbours point back:
    __fastfail(FAST_FAIL_CORRUPT_LIST_ENTRY), KERNEL_SECURITY_CHECK_FAILURE 0x139 / 3."""
    k = ntpool.Kernel(windows="10", nonpaged_pool_bytes=4 * MiB, paged_pool_bytes=4 * MiB)
    a, b = new_list(k), new_list(k)
    k.write(b + LA_LIST_ENTRY + 8, struct.pack("<Q", a - 0x100))  # Blink: mapped, but not a's entry
    with pytest.raises(ntpool.BugCheck) as info:
        k.ExDeleteNPagedLookasideList(b)
    assert info.value.code == BugCheckCode.KERNEL_SECURITY_CHECK_FAILURE
    assert info.value.parameters[0] == 3


def test_windows_7_unlinks_a_damaged_entry_as_it_is(k):
    a, b = new_list(k), new_list(k)
    spare = k.ExAllocatePoolWithTag(NP, 64, "Sprt")
    k.write(b + LA_LIST_ENTRY + 8, struct.pack("<Q", spare))  # Blink to unrelated pool memory
    k.ExDeleteNPagedLookasideList(b)  # no check: the removal writes through the damaged link
    assert struct.unpack("<Q", k.read(spare, 8))[0] == k.npaged_lookaside_list_head
    assert links(k, k.npaged_lookaside_list_head)[1] == spare  # the head's Blink now leads there
    assert links(k, a + LA_LIST_ENTRY)[0] == b + LA_LIST_ENTRY  # a still leads to the deleted b


def test_a_compiled_driver_that_unloads_with_its_list_live_is_0xd4(k):
    """lookaside_unload.sys keeps its NPAGED_LOOKASIDE_LIST in .data and never deletes it:
    the unload unmaps the image, the list stays linked, the next nonpaged scan faults there."""
    import os

    from ntpool.native import load_native_driver, unload_native_driver
    from ntpool.native.build import SOURCE_DIRECTORY

    driver = load_native_driver(k, os.path.join(SOURCE_DIRECTORY, "lookaside_unload.sys"))
    base, end = driver.image_base, driver.image_base + driver.image_size
    (listed,) = k.listed_lookasides(NP)
    assert base <= listed < end
    assert struct.unpack("<II", k.read(listed + 0x14, 8)) == (1, 1)  # one allocation, a miss
    unload_native_driver(k, driver)  # DriverUnload, then the image is unmapped
    with pytest.raises(ntpool.BugCheck) as info:
        k.advance_time(1)
    assert info.value.code == BugCheckCode.SYSTEM_SCAN_AT_RAISED_IRQL_CAUGHT_IMPROPER_DRIVER_UNLOAD
    address, irql, access, instruction = info.value.parameters
    assert base <= address < end and (irql, access) == (2, 0)
    assert instruction == EXP_SCAN_GENERAL_LOOKASIDE_LIST
    assert "lookaside_unload.sys" in str(info.value)


def test_kd_lookaside_shows_one_list_and_every_drivers_list(k, tmp_path):
    from ntpool.debugger.session import KdSession
    from ntpool.dump.writer import write_dump

    a = new_list(k, tag="kooL")  # a C driver's 'kooL': "Look" in memory, as kd shows it
    entries = miss(k, a, 10)
    for entry in entries[:6]:
        k.ExFreeToNPagedLookasideList(a, entry)  # 4 kept (depth 4), 2 past it: free misses
    c = new_list(k, paged=True, tag="gaPL")
    path = tmp_path / "MEMORY.DMP"
    write_dump(k, str(path), "kernel")
    with DumpReader(str(path)) as reader:
        session = KdSession(reader)
        one = session.execute(f"!lookaside {a:#x}")
        every = session.execute("!lookaside -all")
        refused = session.execute(f"!lookaside {a:#x} 2 64")
    assert '"Look"' in one and "Type           =       0000  NonPagedPool" in one
    assert "Current Depth  =          4  Max Depth  =          4" in one
    assert "Size           =         64  Max Alloc  =        256" in one
    assert "AllocateMisses =         10  FreeMisses =          2" in one
    assert "TotalAllocates =         10  TotalFrees =          6" in one
    assert "Hit Rate       =          0% Hit Rate   =         66%" in one
    assert "ExNPagedLookasideListHead @ " in every and ": 1 driver lookaside list(s)" in every
    assert f"@ {c >> 32:08x}`{c & 0xFFFFFFFF:08x}" in every and "PagedPool" in every
    assert "read-only" in refused


from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_FIELD_OFFSETS = st.sampled_from([0x0, 0x8, 0x10, 0x14, 0x18, 0x40, 0x44, 0x48, 0x50, 0x54])
_VALUES = st.one_of(st.integers(0, (1 << 64) - 1),
                    st.sampled_from([0, 8, 0x40, 0xFFFFFFFFFFFFFFFF, 0xFFFFFA8000000000,
                                     0x4141414141414141, 0xFFFFF80000000000]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(writes=st.lists(st.tuples(st.integers(0, 2), _FIELD_OFFSETS, _VALUES), max_size=4),
       seconds=st.integers(1, 4), delete=st.integers(-1, 2), windows=st.sampled_from(["7", "10"]))
def test_any_bytes_a_driver_writes_over_its_lists_end_in_windows_answer(writes, seconds, delete, windows):
    """Whatever a driver leaves in its GENERAL_LOOKASIDEs (links, counters, depths), the
    scans and ExDelete* end in a bug check, the documented hang, or success: never a Python
    error; and a dump of the result reads back."""
    k = ntpool.Kernel(windows=windows, nonpaged_pool_bytes=2 * MiB, paged_pool_bytes=2 * MiB)
    lists = [new_list(k), new_list(k), new_list(k, paged=True)]
    for index, offset, value in writes:
        k.write(lists[index] + offset, struct.pack("<Q", value))
    try:
        k.advance_time(seconds)
        if delete >= 0:
            (k.ExDeletePagedLookasideList if delete == 2 else k.ExDeleteNPagedLookasideList)(lists[delete])
            k.advance_time(3)
    except (ntpool.BugCheck, MachineHung):
        pass
    k.listed_lookasides(NP)
    k.listed_lookasides(PG)


def test_driver_verifier_turns_drivers_lookaside_lists_off(k):
    """ExDisableAllLookasideLists: listed lists get Depth 0 / MaximumDepth 0xFFFF, new ones
    start at 0 and scans keep them at 0, so every entry goes through the verifier's pool."""
    before = new_list(k)
    k.verifier.enable("other.sys", pool_tracking=True)
    assert struct.unpack("<HH", k.read(before + LA_DEPTH, 4)) == (0, 0xFFFF)
    after = new_list(k)
    assert depth(k, after) == 0
    entry = k.ExAllocateFromNPagedLookasideList(after)
    k.ExFreeToNPagedLookasideList(after, entry)  # past Depth 0: straight back to the pool
    assert struct.unpack("<II", k.read(after + 0x1C, 8)) == (1, 1)  # TotalFrees, FreeMisses
    for entry in miss(k, after, 200):
        k.ExFreePool(entry)
    k.advance_time(3)
    assert depth(k, after) == depth(k, before) == 0


def test_analyze_explains_0xd4_from_the_dump(tmp_path):
    from ntpool.debugger.session import KdSession

    path = tmp_path / "MEMORY.DMP"
    k = ntpool.Kernel(nonpaged_pool_bytes=2 * MiB, paged_pool_bytes=2 * MiB, crash_dump=str(path))

    link_into_an_unloaded_driver(k)
    with pytest.raises(ntpool.BugCheck):
        k.advance_time(1)
    with DumpReader(str(path)) as reader:
        text = KdSession(reader).execute("!analyze -v")
    assert "SYSTEM_SCAN_AT_RAISED_IRQL_CAUGHT_IMPROPER_DRIVER_UNLOAD (d4)" in text
    assert "unloaded without cancelling pending operations" in text
    assert "Memory referenced" in text and "Address which referenced memory" in text


# --- the hit and the kept free made inline (issue 18) -------------------------------------

from hypothesis import given, settings, strategies as st  # noqa: E402

LIST_KINDS = {
    "npaged": ("ExInitializeNPagedLookasideList", "ExAllocateFromNPagedLookasideList",
               "ExFreeToNPagedLookasideList"),
    "paged": ("ExInitializePagedLookasideList", "ExAllocateFromPagedLookasideList",
              "ExFreeToPagedLookasideList"),
    "ex": ("ExInitializeLookasideListEx", "ExAllocateFromLookasideListEx", "ExFreeToLookasideListEx"),
}


def _lookaside_run(kind: str, operations, watched: bool, page_offset: int):
    """Run ``operations`` on one driver list: each (what, index, value) allocates an entry,
    frees the oldest held one, or writes ``value`` over a counter (TotalAllocates,
    AllocateMisses, TotalFrees, FreeMisses by ``index``) or the Depth of the list (a stray
    write), and returns everything observable: each call's result and the list's
    bytes after it. ``watched``: a MemoryWritten listener, so every access takes the long
    way (``_allocate_from_lookaside`` / ``_free_to_lookaside``); ``sequence`` writes the
    header's Sequence (a carry from its low 16 bits, its wrap); the list starts
    ``page_offset`` bytes into its page (near the end: its fields span two pages)."""
    k = ntpool.Kernel(nonpaged_pool_bytes=4 * MiB, paged_pool_bytes=4 * MiB, delayed_frees=False)
    if watched:
        k.hooks.subscribe(ntpool.hooks.MemoryWritten, lambda event: None)
    initialize, allocate, free = (getattr(k, name) for name in LIST_KINDS[kind])
    page = k.ExAllocatePoolWithTag(NP, 0x2000, "Page")  # big: page-aligned, two pages
    lookaside = page + page_offset
    if kind == "ex":
        assert initialize(lookaside, 0, 0, NP, 0, 64, "Drvl", 0) == 0
    else:
        initialize(lookaside, 0, 0, 0, 64, "Drvl", 0)
    held, seen = [], []
    for what, index, value in operations:
        if what == "allocate":
            entry = allocate(lookaside)
            held.append(entry)
            seen.append(entry - page)  # (pool addresses: the same machine layout in both)
        elif what == "free" and held:
            free(lookaside, held.pop(0))
        elif what == "counter":
            k.write(lookaside + 0x14 + 4 * index, value.to_bytes(4, "little"))
        elif what == "depth":
            k.write(lookaside + LA_DEPTH, (value % 6).to_bytes(2, "little"))
        elif what == "sequence":  # the header's 48-bit Sequence, near a carry or its wrap
            sequence = (0xFFFF, 0xFFFFFFFFFFFF, 0x1234FFFF, value)[index]
            k.write(lookaside + 2, sequence.to_bytes(6, "little"))
        seen.append(k.read(lookaside, 0x40))
    return seen


@pytest.mark.parametrize("kind", sorted(LIST_KINDS))
@given(operations=st.lists(st.tuples(st.sampled_from(["allocate", "allocate", "free", "free",
                                                      "counter", "depth", "sequence"]),
                                     st.integers(0, 3),  # which counter
                                     st.one_of(st.sampled_from([0xFFFFFFFF, 0xFFFFFFFE, 0]),
                                               st.integers(0, 0xFFFFFFFF))), max_size=40),
       page_offset=st.sampled_from([0, 0x40, 0x1000 - 0x24, 0x1000 - 0x20]))
@settings(max_examples=40, deadline=None)
def test_the_inline_hit_and_kept_free_match_the_long_way(kind, operations, page_offset):
    """Entries handed out, and every byte of the list after each call, are the same whether
    the routines take their inline hit and kept free or the long way (a listener on the
    machine's writes sends every call there): with counters a stray write left near their
    wrap, a Depth written down so frees go to Free, and the list's fields on one page or
    spanning two."""
    assert _lookaside_run(kind, operations, False, page_offset) == \
        _lookaside_run(kind, operations, True, page_offset)


@pytest.mark.parametrize("name", [name for names in LIST_KINDS.values() for name in names[1:]])
def test_each_routine_is_the_machines_own_function_keeping_its_declaration(name):
    k = ntpool.Kernel()
    method = getattr(RuntimeRoutines, name)
    served = getattr(k, name)
    assert served is k.__dict__[name]  # made for the machine (serve_lookaside_routines_directly)
    assert (served.__name__, served.__qualname__, served.__doc__, served.__module__) == \
        (method.__name__, method.__qualname__, method.__doc__, method.__module__)
    assert list(inspect.signature(served).parameters) == list(inspect.signature(method).parameters)[1:]
    assert registry.lookup(name).function is method  # the registry still declares the method


def test_a_call_through_the_class_does_what_the_machines_function_does(k):
    lookaside = new_list(k)
    entry = ntpool.Kernel.ExAllocateFromNPagedLookasideList(k, lookaside)  # a miss: Allocate's
    ntpool.Kernel.ExFreeToNPagedLookasideList(k, lookaside, entry)  # kept
    assert depth_of_list(k, lookaside) == 1
    assert ntpool.Kernel.ExAllocateFromNPagedLookasideList(k, lookaside) == entry  # a hit
    assert depth_of_list(k, lookaside) == 0


def depth_of_list(k, lookaside):
    return struct.unpack("<H", k.read(lookaside, 2))[0]  # the SLIST_HEADER's Depth


@pytest.mark.parametrize("offset", [-8, -4, 0, 0x8, 0x10, 0x18, 0x1C, 0x20])
def test_an_entry_over_the_lists_own_fields_leaves_what_the_long_way_leaves(offset):
    """A kept free writes the entry's Next and the list's fields: an entry whose Next would
    overwrite the list's own fields (a driver's error) leaves the bytes the long way's
    writes, in Windows' order, leave."""
    def run(watched: bool) -> bytes:
        k = ntpool.Kernel(nonpaged_pool_bytes=4 * MiB, paged_pool_bytes=4 * MiB)
        if watched:  # every call the long way
            k.hooks.subscribe(ntpool.hooks.MemoryWritten, lambda event: None)
        lookaside = k.ExAllocatePoolWithTag(NP, 0x2000, "Page") + 0x100
        k.ExInitializeNPagedLookasideList(lookaside, 0, 0, 0, 64, "Drvl", 0)
        k.ExFreeToNPagedLookasideList(lookaside, lookaside + offset)
        return k.read(lookaside - 0x10, 0x50)

    assert run(False) == run(True)


def test_the_inline_hit_is_taken_and_counts_as_windows_does(k):
    """The inline path is taken (no call to the long way) and writes what wdm.h's inline
    routines write: Depth down by one, Sequence up by one, TotalAllocates up by one."""
    lookaside = new_list(k)
    entry = k.ExAllocateFromNPagedLookasideList(lookaside)  # a miss: the long way
    k.ExFreeToNPagedLookasideList(lookaside, entry)
    before = struct.unpack("<QQ", k.read(lookaside, 16)), struct.unpack("<I", k.read(lookaside + 0x14, 4))[0]
    calls = []
    long_way = type(k)._allocate_from_lookaside
    k._allocate_from_lookaside = lambda *args: (calls.append(args), long_way(k, *args))[1]
    assert k.ExAllocateFromNPagedLookasideList(lookaside) == entry and calls == []
    (low, _), total = before
    assert struct.unpack("<QQ", k.read(lookaside, 16))[0] == (low & ~0xFFFF | (low & 0xFFFF) - 1) + (1 << 16)
    assert struct.unpack("<I", k.read(lookaside + 0x14, 4))[0] == total + 1


@pytest.mark.parametrize("sequence, after", [(0xFFFF, 0x10000), (0x1234FFFF, 0x12350000),
                                             (0xFFFFFFFFFFFF, 0), (0x41, 0x42)])
def test_the_inline_hit_and_kept_free_carry_the_sequence_as_one_48_bit_count(k, sequence, after):
    lookaside = new_list(k)
    entry = k.ExAllocateFromNPagedLookasideList(lookaside)  # a miss: the long way
    for call in (lambda: k.ExFreeToNPagedLookasideList(lookaside, entry),  # a kept free
                 lambda: k.ExAllocateFromNPagedLookasideList(lookaside)):  # a hit
        k.write(lookaside + 2, sequence.to_bytes(6, "little"))
        depth = struct.unpack("<H", k.read(lookaside, 2))[0]
        call()
        assert int.from_bytes(k.read(lookaside + 2, 6), "little") == after
        assert abs(struct.unpack("<H", k.read(lookaside, 2))[0] - depth) == 1
