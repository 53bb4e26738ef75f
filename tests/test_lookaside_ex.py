"""The LOOKASIDE_LIST_EX family (ExInitializeLookasideListEx and its allocate, free, flush and
delete routines): a GENERAL_LOOKASIDE_POOL in the driver's memory, linked on the global head its
PoolType picks, retuned by the scan, with AllocateEx / FreeEx called with the list as their
last argument."""

import struct

import pytest

import ntpool
from ntpool.constants import (
    POOL_QUOTA_FAIL_INSTEAD_OF_RAISE,
    POOL_RAISE_IF_ALLOCATION_FAILURE,
    NtStatus,
)
from ntpool.errors import NtStatusError
from ntpool.routines.runtime import (
    EX_LOOKASIDE_LIST_EX_FLAGS_FAIL_NO_RAISE,
    EX_LOOKASIDE_LIST_EX_FLAGS_RAISE_ON_FAIL,
    LA_DEPTH,
    LA_LIST_ENTRY,
    LA_TOTAL_ALLOCATES,
    LA_TYPE,
    LOOKASIDE_LIST_EX_SIZE,
)

NP, PG = ntpool.PoolType.NonPagedPool, ntpool.PoolType.PagedPool
NX = ntpool.PoolType.NonPagedPoolNx
MiB = 1 << 20


@pytest.fixture
def k():
    return ntpool.Kernel(nonpaged_pool_bytes=4 * MiB, paged_pool_bytes=4 * MiB, delayed_frees=False)


def new_list(k, pool_type=NP, allocate=0, free=0, flags=0, size=64, tag="LkEx"):
    lookaside = k.ExAllocatePoolWithTag(NP, LOOKASIDE_LIST_EX_SIZE, "Lkas")
    status = k.ExInitializeLookasideListEx(lookaside, allocate, free, pool_type, flags, size, tag, 0)
    assert status == NtStatus.STATUS_SUCCESS
    return lookaside


def recording_free_ex(k):
    """A FreeEx routine of the driver's that frees the entry and records it with the list it
    was handed: its address and the (buffer, lookaside) pairs."""
    freed = []

    def free_ex(k, buffer, lookaside_arg):
        freed.append((buffer, lookaside_arg))
        k.ExFreePool(buffer)

    return k.code_address(free_ex), freed


def list_holding_three(k):
    """A nonpaged list with a recording FreeEx, holding three entries it allocated and was
    given back: the list, the entries, and what FreeEx has been handed (nothing yet)."""
    free_ex, freed = recording_free_ex(k)
    lookaside = new_list(k, free=free_ex)
    entries = [k.ExAllocateFromLookasideListEx(lookaside) for _ in range(3)]
    for entry in entries:
        k.ExFreeToLookasideListEx(lookaside, entry)
    return lookaside, entries, freed


def counters(k, lookaside):
    """(TotalAllocates, AllocateMisses, TotalFrees, FreeMisses)."""
    return struct.unpack("<IIII", k.read(lookaside + LA_TOTAL_ALLOCATES, 16))


def held(k, lookaside):
    return struct.unpack("<Q", k.read(lookaside, 8))[0] & 0xFFFF  # the SLIST_HEADER's Depth


def depth(k, lookaside):
    return struct.unpack("<H", k.read(lookaside + LA_DEPTH, 2))[0]


def test_allocate_free_and_hit_counts(k):
    lookaside = new_list(k, size=100, tag="LkEx")
    first = k.ExAllocateFromLookasideListEx(lookaside)  # empty: a miss, from ExAllocatePoolWithTag
    assert first and k.read(first - 0x10 + 4, 4) == b"xEkL"  # PoolTag, as 'LkEx' in C
    assert counters(k, lookaside) == (1, 1, 0, 0)
    k.ExFreeToLookasideListEx(lookaside, first)
    assert counters(k, lookaside) == (1, 1, 1, 0) and held(k, lookaside) == 1
    again = k.ExAllocateFromLookasideListEx(lookaside)  # a hit: the same entry back
    assert again == first
    total, misses, _, _ = counters(k, lookaside)
    assert (total, misses, total - misses) == (2, 1, 1) and held(k, lookaside) == 0
    k.ExFreeToLookasideListEx(lookaside, again)
    k.ExDeleteLookasideListEx(lookaside)


def test_the_list_holds_at_most_its_depth_and_frees_the_rest(k):
    free_ex, freed = recording_free_ex(k)
    lookaside = new_list(k, free=free_ex)
    assert depth(k, lookaside) == 4  # ExMinimumLookasideDepth, whatever Depth said
    entries = [k.ExAllocateFromLookasideListEx(lookaside) for _ in range(6)]
    for entry in entries:
        k.ExFreeToLookasideListEx(lookaside, entry)
    assert held(k, lookaside) == 4
    assert freed == [(entries[4], lookaside), (entries[5], lookaside)]
    assert counters(k, lookaside) == (6, 6, 6, 2)
    k.ExDeleteLookasideListEx(lookaside)


def test_delete_unlinks_and_frees_what_it_holds_through_free_ex(k):
    lookaside, entries, freed = list_holding_three(k)
    assert freed == [] and k.listed_lookasides(NP) == [lookaside]
    k.ExDeleteLookasideListEx(lookaside)
    assert sorted(freed) == sorted((entry, lookaside) for entry in entries)
    assert k.listed_lookasides(NP) == []


def test_flush_frees_every_entry_and_keeps_the_list(k):
    lookaside, entries, freed = list_holding_three(k)
    k.ExFlushLookasideListEx(lookaside)
    assert sorted(freed) == sorted((entry, lookaside) for entry in entries) and held(k, lookaside) == 0
    assert k.listed_lookasides(NP) == [lookaside]  # still initialized and linked
    entry = k.ExAllocateFromLookasideListEx(lookaside)  # works on: a miss
    assert entry and counters(k, lookaside)[:2] == (4, 4)
    k.ExFreeToLookasideListEx(lookaside, entry)
    k.ExDeleteLookasideListEx(lookaside)
    assert (entry, lookaside) in freed


def test_raise_on_fail_raises_where_the_default_returns_null(k):
    quiet = new_list(k, size=64 * MiB)
    assert k.ExAllocateFromLookasideListEx(quiet) == 0
    loud = new_list(k, size=64 * MiB, flags=EX_LOOKASIDE_LIST_EX_FLAGS_RAISE_ON_FAIL)
    assert struct.unpack("<I", k.read(loud + LA_TYPE, 4))[0] == NP | POOL_RAISE_IF_ALLOCATION_FAILURE
    with pytest.raises(NtStatusError) as raised:
        k.ExAllocateFromLookasideListEx(loud)
    assert raised.value.status == NtStatus.STATUS_INSUFFICIENT_RESOURCES
    no_raise = new_list(k, PG, flags=EX_LOOKASIDE_LIST_EX_FLAGS_FAIL_NO_RAISE)
    assert struct.unpack("<I", k.read(no_raise + LA_TYPE, 4))[0] == PG | POOL_QUOTA_FAIL_INSTEAD_OF_RAISE


def test_both_flags_are_status_invalid_parameter_5_and_nothing_is_linked(k):
    lookaside = k.ExAllocatePoolWithTag(NP, LOOKASIDE_LIST_EX_SIZE, "Lkas")
    both = EX_LOOKASIDE_LIST_EX_FLAGS_RAISE_ON_FAIL | EX_LOOKASIDE_LIST_EX_FLAGS_FAIL_NO_RAISE
    assert k.ExInitializeLookasideListEx(lookaside, 0, 0, NP, both, 64, "LkEx", 0) == 0xC00000F3
    assert NtStatus.STATUS_INVALID_PARAMETER_5 == 0xC00000F3
    assert k.listed_lookasides(NP) == [] and k.listed_lookasides(PG) == []


def test_pool_type_picks_the_global_head_and_the_scan_retunes_it(k):
    nonpaged, nx = new_list(k, NP), new_list(k, NX)
    paged = new_list(k, PG)
    assert k.listed_lookasides(NP) == [nonpaged, nx] and k.listed_lookasides(PG) == [paged]
    head = k.npaged_lookaside_list_head
    assert struct.unpack("<Q", k.read(head + 8, 8))[0] == nx + LA_LIST_ENTRY
    entry = k.ExAllocateFromLookasideListEx(paged)
    assert entry >> 12 in k._tlb  # paged pool, resident here
    k.ExFreeToLookasideListEx(paged, entry)
    for lookaside in (nx, paged):
        for entry in [k.ExAllocateFromLookasideListEx(lookaside) for _ in range(100)]:
            k.ExFreePool(entry)
    k.advance_time(1)  # scan 0: the nonpaged lists (100 misses in 3 s: +30)
    assert (depth(k, nonpaged), depth(k, nx), depth(k, paged)) == (4, 34, 4)
    k.advance_time(1)  # scan 1: the paged ones
    assert depth(k, paged) == 34
    for lookaside in (nonpaged, nx, paged):
        k.ExDeleteLookasideListEx(lookaside)
    assert k.listed_lookasides(NP) == [] and k.listed_lookasides(PG) == []


def test_a_driver_allocate_ex_receives_the_lookaside(k):
    calls = []

    def allocate_ex(k, pool_type, number_of_bytes, tag, lookaside_arg):
        calls.append((pool_type, number_of_bytes, tag, lookaside_arg))
        return k.ExAllocatePoolWithTag(pool_type, number_of_bytes, tag)

    lookaside = new_list(k, NX, allocate=k.code_address(allocate_ex), size=48, tag="Mine")
    entry = k.ExAllocateFromLookasideListEx(lookaside)
    tag_value = struct.unpack("<I", b"eniM")[0]  # 'Mine', as a C multi-character constant
    assert calls == [(NX, 48, tag_value, lookaside)] and entry
    k.ExFreeToLookasideListEx(lookaside, entry)
    assert k.ExAllocateFromLookasideListEx(lookaside) == entry and len(calls) == 1  # a hit
    k.ExFreeToLookasideListEx(lookaside, entry)
    k.ExDeleteLookasideListEx(lookaside)


def test_driver_verifier_turns_ex_lists_off_too(k):
    """ExDisableAllLookasideLists walks the heads, so a LOOKASIDE_LIST_EX gets Depth 0 /
    MaximumDepth 0xFFFF like the older lists, and its entries go through FreeEx."""
    free_ex, freed = recording_free_ex(k)
    before = new_list(k, PG, free=free_ex)
    k.verifier.enable("other.sys", pool_tracking=True)
    assert struct.unpack("<HH", k.read(before + LA_DEPTH, 4)) == (0, 0xFFFF)
    entry = k.ExAllocateFromLookasideListEx(before)
    k.ExFreeToLookasideListEx(before, entry)  # past Depth 0: straight to FreeEx
    assert freed == [(entry, before)] and counters(k, before)[2:] == (1, 1)
    assert depth(k, new_list(k, NX)) == 0


def test_ex_lists_read_back_from_a_dump(k, tmp_path):
    from ntpool.dump.reader import DumpReader
    from ntpool.dump.writer import write_dump

    nx, paged = new_list(k, NX, tag="NxEx"), new_list(k, PG, tag="PgEx")
    for entry in [k.ExAllocateFromLookasideListEx(nx) for _ in range(3)]:
        k.ExFreeToLookasideListEx(nx, entry)
    path = tmp_path / "MEMORY.DMP"
    write_dump(k, str(path), "kernel")
    with DumpReader(str(path)) as reader:
        nonpaged_lists = reader.lookaside_lists("ExNPagedLookasideListHead")
        paged_lists = reader.lookaside_lists("ExPagedLookasideListHead")
    assert [entry["Address"] for entry in nonpaged_lists] == [nx]
    assert [entry["Address"] for entry in paged_lists] == [paged]
    assert nonpaged_lists[0]["Type"] == NX and nonpaged_lists[0]["TotalAllocates"] == 3
    assert nonpaged_lists[0]["Tag"] == int.from_bytes(b"NxEx", "big") and paged_lists[0]["Type"] == PG
