"""The I/O lookaside lists of Windows 7 and later: IRPs of one stack location, of up to four and
of up to eight, and MDLs of up to 0x17 pages, kept per processor (PPLookasideList[n].P) and system-wide (.L) in
GENERAL_LOOKASIDEs linked on ExSystemLookasideListHead; their counters, depths, LIFO reuse,
what poolmon sees, Driver Verifier, the retuning and the dump."""

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ntpool
from ntpool.dump.reader import DumpReader
from ntpool.pool.lookaside import target_depth
from ntpool.routines import layouts as L
from ntpool.routines.io_lookaside import (
    FIXED_SIZE_MDL,
    LookasideLargeIrpList,
    LookasideMdlList,
    LookasideMediumIrpList,
    LookasideSmallIrpList,
)
from ntpool.routines.runtime import LOOKASIDE_SIZE
from pooltags import tags_in_use, tags_left
from two_ways import run_both

NP = ntpool.PoolType.NonPagedPool
MULTIPLE_IRP_COMPLETE_REQUESTS = 0x44
FIELDS = struct.Struct("<QQHHIIIIIII")  # ListHead, Depth, MaximumDepth, the counters, Type, Tag, Size


@pytest.fixture
def k():
    return ntpool.Kernel(delayed_frees=False)


def fields(k, lookaside) -> dict:
    low, high, depth, maximum, total, misses, frees, free_misses, pool_type, tag, size = \
        FIELDS.unpack(k.read(lookaside, FIELDS.size))
    return {"held": low & 0xFFFF, "first": high & ~0xF, "Depth": depth, "MaximumDepth": maximum,
            "TotalAllocates": total, "AllocateMisses": misses, "TotalFrees": frees,
            "FreeMisses": free_misses, "Type": pool_type, "Tag": tag, "Size": size}


def lists(k, number, processor=0):
    return k.io_lookasides[processor][number]


@pytest.mark.parametrize("windows", ["7", "10", "11"])
def test_each_processors_lists_and_the_systems_are_set_up_on_the_system_head(windows):
    k = ntpool.Kernel(processors=2, windows=windows)
    head = k.system_lookaside_list_head
    linked, entry = [], struct.unpack("<Q", k.read(head, 8))[0]
    while entry != head:
        linked.append(entry - 0x40)
        entry = struct.unpack("<Q", k.read(entry, 8))[0]
    system = [pair[1] for pair in k.io_lookasides[0]]
    assert system == [pair[1] for pair in k.io_lookasides[1]]  # one L list per kind
    order = (LookasideLargeIrpList, LookasideMediumIrpList, LookasideSmallIrpList, LookasideMdlList)
    own = [lists(k, n, cpu)[0] for cpu in (0, 1) for n in order]
    assert linked == [system[n] for n in order] + own and len(set(linked)) == 12
    expected = {LookasideSmallIrpList: ("Irps", "IrpS", L.io_size_of_irp(1), 32),
                LookasideMediumIrpList: ("Irpm", "IrpM", L.io_size_of_irp(4), 64),
                LookasideLargeIrpList: ("Irpl", "IrpL", L.io_size_of_irp(8), 64),
                LookasideMdlList: ("Mdl ", "MdlP", L.MDL.SIZE + 8 * 0x17, 128)}
    assert (LookasideSmallIrpList, LookasideMediumIrpList, LookasideLargeIrpList, LookasideMdlList) == (0, 1, 2, 3)
    for number, (system_tag, own_tag, size, maximum) in expected.items():
        for cpu in (0, 1):
            for lookaside, tag in zip(lists(k, number, cpu), (own_tag, system_tag)):
                f = fields(k, lookaside)
                assert (f["Depth"], f["MaximumDepth"], f["Size"], f["Type"]) == (2, maximum, size, 0)
                assert f["Tag"] == int.from_bytes(tag.encode(), "little") and f["held"] == 0


@pytest.mark.parametrize("stack_size, number, entries", [
    (1, LookasideSmallIrpList, 1), (2, LookasideMediumIrpList, 4), (4, LookasideMediumIrpList, 4),
    (5, LookasideLargeIrpList, 8), (8, LookasideLargeIrpList, 8)])
@pytest.mark.parametrize("windows", ["7", "11"])
def test_each_stack_size_takes_its_lists_fixed_size_and_goes_back_there(windows, stack_size, number, entries):
    k = ntpool.Kernel(windows=windows, delayed_frees=False)
    irp = k.IoAllocateIrp(stack_size, False)
    used = {row.Tag: row.NonPagedUsed for row in k.pool_tags()}
    assert used["Irp "] == L.io_size_of_irp(entries) + 0x10 + 0xF & ~0xF  # the list's size, from pool
    assert struct.unpack("<H", k.read(irp + L.IRP.Size, 2))[0] == L.io_size_of_irp(stack_size)
    k.IoFreeIrp(irp)
    own, _ = lists(k, number)
    assert fields(k, own)["first"] == irp and fields(k, own)["TotalFrees"] == 1
    others = [lists(k, n)[0] for n in (LookasideSmallIrpList, LookasideMediumIrpList, LookasideLargeIrpList)
              if n != number]
    assert all(fields(k, lookaside)["TotalFrees"] == 0 for lookaside in others)
    assert k.io_lookaside_holdings() == {"Irp ": (1, L.io_size_of_irp(entries) + 0x10 + 0xF & ~0xF)}
    assert k.IoAllocateIrp(stack_size, False) == irp


def test_an_allocation_misses_both_lists_then_a_free_keeps_the_irp_and_the_next_one_hits(k):
    own, system = lists(k, LookasideLargeIrpList)
    irp = k.IoAllocateIrp(5, False)
    assert (fields(k, own)["TotalAllocates"], fields(k, own)["AllocateMisses"]) == (1, 1)
    assert (fields(k, system)["TotalAllocates"], fields(k, system)["AllocateMisses"]) == (1, 1)
    assert k.read(irp + L.IRP.AllocationFlags, 1)[0] == L.IRP_ALLOCATED_FIXED_SIZE
    k.IoFreeIrp(irp)
    f = fields(k, own)
    assert (f["TotalFrees"], f["FreeMisses"], f["held"], f["first"]) == (1, 0, 1, irp)
    assert tags_in_use(k)["Irp "] == 1  # still allocated in pool, as poolmon shows it
    again = k.IoAllocateIrp(8, False)
    assert again == irp
    f = fields(k, own)
    assert (f["TotalAllocates"], f["AllocateMisses"], f["held"]) == (2, 1, 0)
    assert fields(k, system)["TotalAllocates"] == 1  # a hit on P: L is not asked


def test_reuse_is_lifo_and_small_medium_and_large_irps_are_separate_lists(k):
    a, b = k.IoAllocateIrp(2, False), k.IoAllocateIrp(3, False)
    small, large = k.IoAllocateIrp(1, False), k.IoAllocateIrp(6, False)
    for irp in (a, b, small, large):
        k.IoFreeIrp(irp)
    assert k.IoAllocateIrp(1, False) == small and k.IoAllocateIrp(8, False) == large
    assert k.IoAllocateIrp(4, False) == b and k.IoAllocateIrp(2, False) == a


def test_frees_past_the_depths_go_to_the_system_list_then_the_pool(k):
    own, system = lists(k, LookasideLargeIrpList)
    irps = [k.IoAllocateIrp(5, False) for _ in range(5)]
    assert tags_in_use(k)["Irp "] == 5
    for irp in irps:
        k.IoFreeIrp(irp)
    f, g = fields(k, own), fields(k, system)
    assert (f["TotalFrees"], f["FreeMisses"], f["held"]) == (5, 3, 2)  # Depth 2 each
    assert (g["TotalFrees"], g["FreeMisses"], g["held"]) == (3, 1, 2)
    assert tags_in_use(k)["Irp "] == 4 and tags_left(k) == {}
    assert k.io_lookaside_holdings() == {"Irp ": (4, 4 * (L.io_size_of_irp(8) + 0x10))}
    # LIFO from P first, then from L.
    assert [k.IoAllocateIrp(7, False) for _ in range(4)] == [irps[1], irps[0], irps[3], irps[2]]


def test_a_reused_irp_is_initialized_again_whatever_was_left_in_it(k):
    irp = k.IoAllocateIrp(2, False)
    k.write(irp, b"\xAA" * L.io_size_of_irp(4))  # the medium list's entry, whole
    k.write(irp + L.IRP.Type, struct.pack("<H", L.IO_TYPE_IRP))
    k.IoFreeIrp(irp)
    fresh_machine = ntpool.Kernel(delayed_frees=False)
    reference = fresh_machine.IoAllocateIrp(2, False)
    assert k.IoAllocateIrp(2, False) == irp == reference  # the same address on both machines
    size = L.io_size_of_irp(2)
    assert k.read(irp, size) == fresh_machine.read(reference, size)
    assert k.read(irp + size, 8) == b"\xAA" * 8  # past IoSizeOfIrp(2): not the packet's


def test_freeing_an_irp_twice_is_still_0x44_from_the_list(k):
    irp = k.IoAllocateIrp(1, False)
    k.IoFreeIrp(irp)
    with pytest.raises(ntpool.BugCheck) as caught:
        k.IoFreeIrp(irp)
    assert caught.value.code == MULTIPLE_IRP_COMPLETE_REQUESTS and caught.value.parameters[0] == irp


def test_freeing_what_is_not_an_irp_is_still_0x44(k):
    block = k.ExAllocatePoolWithTag(NP, 0x200, "NotI")
    with pytest.raises(ntpool.BugCheck) as caught:
        k.IoFreeIrp(block)
    assert caught.value.code == MULTIPLE_IRP_COMPLETE_REQUESTS


def test_quota_charged_and_many_location_irps_come_from_and_go_back_to_the_pool(k):
    for stack_size, quota in ((9, False), (2, True), (1, True)):
        irp = k.IoAllocateIrp(stack_size, quota)
        k.IoFreeIrp(irp)
        assert tags_in_use(k).get("Irp ", 0) == 0, (stack_size, quota)
    assert all(fields(k, lookaside)["TotalFrees"] == 0 for pair in k.io_lookasides[0] for lookaside in pair)


def test_small_mdls_are_fixed_size_from_the_mdl_list_and_large_ones_from_pool(k):
    buffer = k.ExAllocatePoolWithTag(NP, 0x20000, "Buff")
    own, _ = lists(k, LookasideMdlList)
    small = k.IoAllocateMdl(buffer, 100, False, False, 0)
    assert struct.unpack("<HH", k.read(small + L.MDL.Size, 4)) == (L.MDL.SIZE + 8, L.MDL_ALLOCATED_FIXED_SIZE)
    large = k.IoAllocateMdl(buffer, 0x18 * 0x1000, False, False, 0)  # 0x18 pages: past 0x17
    assert struct.unpack("<H", k.read(large + L.MDL.MdlFlags, 2))[0] == 0
    k.IoFreeMdl(large)
    assert tags_in_use(k)["Mdl "] == 1
    k.IoFreeMdl(small)
    assert tags_in_use(k)["Mdl "] == 1 and fields(k, own)["first"] == small
    assert k.io_lookaside_holdings() == {"Mdl ": (1, FIXED_SIZE_MDL + 0x10 + 0xF & ~0xF)}
    assert k.IoAllocateMdl(buffer + 0x10, 0x3000, False, False, 0) == small
    assert struct.unpack("<HHI", k.read(small + L.MDL.Size, 8))[:2] == (L.MDL.SIZE + 8 * 4, L.MDL_ALLOCATED_FIXED_SIZE)


def test_a_secondary_mdl_on_an_irp_whose_mdl_chain_loops_hangs_the_machine(k):
    """IoAllocateMdl with SecondaryBuffer follows the IRP's MDL chain to its end: a chain
    whose Next a driver pointed back into it (here the second MDL's, at the first) is
    followed forever, as in Windows: MachineHung, never a Python hang."""
    buffer = k.ExAllocatePoolWithTag(NP, 0x2000, "Buff")
    irp = k.IoAllocateIrp(2, False)
    first = k.IoAllocateMdl(buffer, 100, False, False, irp)
    second = k.IoAllocateMdl(buffer, 100, True, False, irp)
    assert struct.unpack("<Q", k.read(first + L.MDL.Next, 8))[0] == second
    k.write(second + L.MDL.Next, struct.pack("<Q", first))
    with pytest.raises(ntpool.errors.MachineHung, match="loops back"):
        k.IoAllocateMdl(buffer, 100, True, False, irp)


def test_driver_verifier_takes_no_irp_from_the_lists_and_keeps_none(k):
    kept = k.IoAllocateIrp(5, False)
    k.IoFreeIrp(kept)
    k.verifier.enable("anything.sys", pool_tracking=True)
    assert all(fields(k, lookaside)["Depth"] == 0 for pair in k.io_lookasides[0] for lookaside in pair)
    fresh = k.IoAllocateIrp(5, False)
    assert fresh != kept  # IovAllocateIrp's own allocation: from the pool, tracked
    k.IoFreeIrp(fresh)
    own, system = lists(k, LookasideLargeIrpList)
    assert fields(k, own)["held"] == 1 and fields(k, system)["held"] == 0  # the one kept before
    assert tags_in_use(k)["Irp "] == 1


def test_the_depths_are_retuned_with_the_pools_lists(k):
    own, system = lists(k, LookasideLargeIrpList)
    irps = [k.IoAllocateIrp(5, False) for _ in range(100)]  # 100 misses on P and on L
    k.advance_time(2)  # scans 0 and 1: drivers' lists only
    assert fields(k, own)["Depth"] == fields(k, system)["Depth"] == 2
    k.advance_time(1)  # scan 2: processor 0's set (one processor: period 3 s)
    f = fields(k, own)
    assert f["Depth"] == target_depth(2, 64, 100, 100, 3) == 2 + min(1000 * 62 // 2000 + 5, 30)
    assert fields(k, system)["Depth"] == 2
    assert struct.unpack("<II", k.read(own + 0x50, 8)) == (100, 100)  # LastTotalAllocates, LastAllocateMisses
    k.advance_time(3)  # the system set
    assert fields(k, system)["Depth"] == target_depth(2, 64, 100, 100, 3)
    for irp in irps:
        k.IoFreeIrp(irp)
    assert fields(k, own)["held"] == fields(k, own)["Depth"]
    k.advance_time(3)  # processor 0's set again: no allocations since: -10
    assert fields(k, own)["Depth"] == target_depth(2, 64, 100, 100, 3) - 10


def test_ntpool_kd_lookaside_lists_the_io_lists_from_a_dump(k, tmp_path):
    irp = k.IoAllocateIrp(1, False)
    k.IoFreeIrp(irp)
    path = tmp_path / "MEMORY.DMP"
    from ntpool.dump.writer import write_dump
    write_dump(k, str(path), "kernel")
    with DumpReader(str(path)) as reader:
        assert reader.kernel_global("ExSystemLookasideListHead") == k.system_lookaside_list_head
        found = reader.lookaside_lists("ExSystemLookasideListHead")
        from ntpool.debugger.session import KdSession
        text = KdSession(reader).execute("!lookaside")
    own, system = lists(k, LookasideSmallIrpList)
    by_address = {entry["Address"]: entry for entry in found}
    assert len(found) == 8 and by_address[own]["TotalFrees"] == 1 and by_address[own]["TotalAllocates"] == 1
    assert by_address[system]["MaximumDepth"] == 32
    assert "ExSystemLookasideListHead" in text and '"IrpS"' in text and '"Mdl "' in text


@pytest.mark.parametrize("windows", ["10", "11"])
def test_segment_heap_machines_keep_irps_and_mdls_on_the_lists_and_retune_them(windows):
    k = ntpool.Kernel(windows=windows)
    irp = k.IoAllocateIrp(2, False)
    k.IoFreeIrp(irp)
    assert tags_in_use(k)["Irp "] == 1 and k.IoAllocateIrp(3, False) == irp
    buffer = k.ExAllocatePoolWithTag(NP, 0x2000, "Buff")
    mdl = k.IoAllocateMdl(buffer, 100, False, False, 0)
    k.IoFreeMdl(mdl)
    assert tags_in_use(k)["Mdl "] == 1 and k.io_lookaside_holdings()["Mdl "][0] == 1
    # No pool lists to scan with: scan 2 retunes the I/O lists alone, processor 0's set, then
    # the system's.
    own, system = lists(k, LookasideMediumIrpList)
    irps = [k.IoAllocateIrp(2, False) for _ in range(100)]
    k.advance_time(3)
    assert fields(k, own)["Depth"] == target_depth(2, 64, 101, 100, 3) and fields(k, system)["Depth"] == 2
    k.advance_time(3)
    assert fields(k, system)["Depth"] == target_depth(2, 64, 100, 100, 3)
    for irp in irps:
        k.IoFreeIrp(irp)
    assert fields(k, own)["held"] == fields(k, own)["Depth"]


def _lists_bytes(k):
    return [bytes(k.read(lookaside, LOOKASIDE_SIZE)) for pair in k.io_lookasides[0] for lookaside in pair]


STEPS = st.lists(st.one_of(
    st.tuples(st.just("irp"), st.sampled_from([1, 2, 4, 5, 8, 9]), st.booleans()),
    st.tuples(st.just("mdl"), st.sampled_from([1, 0x1000, 0x17000, 0x18000])),
    st.tuples(st.just("free"), st.integers(0, 15)),
    st.tuples(st.just("depth"), st.integers(0, 8), st.integers(0, 5)),  # a list's Depth set
), max_size=40)


def _machine_with_buffer(published):
    """A machine (and its one 128 KiB buffer) for the two-ways tests below: with a
    MemoryWritten listener (``published``), every list operation goes the general way."""
    from ntpool.hooks import MemoryWritten

    k = ntpool.Kernel(delayed_frees=False)
    if published:
        k.hooks.subscribe(MemoryWritten, lambda event: None)
    k.held_objects = []
    buffer = k.ExAllocatePoolWithTag(NP, 0x20000, "Buff")
    return k, (buffer,)


@settings(max_examples=60, deadline=None)
@given(STEPS)
def test_the_lists_fast_ways_leave_what_their_general_ways_leave(steps):
    """Every pop and push made in memory at once (``io_lookaside.pop`` / ``push``) against a
    machine where a MemoryWritten listener sends each the long way: the same IRPs and MDLs,
    bug checks and list bytes after every step (double frees included)."""

    def apply(k, regions, step):
        if step[0] == "irp":
            irp = k.IoAllocateIrp(step[1], step[2])
            k.held_objects.append(("irp", irp))
            return irp
        if step[0] == "mdl":
            mdl = k.IoAllocateMdl(regions[0] + 0x10, step[1], False, False, 0)
            k.held_objects.append(("mdl", mdl))
            return mdl
        if step[0] == "depth":
            flat = [lookaside for pair in k.io_lookasides[0] for lookaside in pair]
            k.write(flat[step[1] % len(flat)] + 0x10, struct.pack("<H", step[2]))
            return None
        if not k.held_objects:
            return None
        kind, va = k.held_objects[step[1] % len(k.held_objects)]  # (twice, sometimes)
        return k.IoFreeIrp(va) if kind == "irp" else k.IoFreeMdl(va)

    def state(k, regions):
        return _lists_bytes(k), tags_in_use(k)

    run_both(_machine_with_buffer, apply, state, steps)


# A list field the usual pop and push change, set to a value at the edge of its carry: the
# header's Depth and Sequence (its first QWORD), TotalAllocates, TotalFrees.
EDGES = st.tuples(st.just("edge"), st.integers(0, 7), st.sampled_from([0x0, 0x14, 0x1C, 0x2]),
                  st.sampled_from([0, 1, 0xFE, 0xFF, 0x100, 0xFFFE, 0xFFFF, 0x1FFFF, 0xFFFFFFFF]))
ROUTINE_STEPS = st.lists(st.one_of(
    st.tuples(st.just("irp"), st.sampled_from([1, 2, 3, 4, 5, 8, 9, 0x7F, 0, -1]), st.booleans()),
    st.tuples(st.just("mdl"), st.integers(0, 0x1FFF), st.sampled_from([1, 0x100, 0x16001, 0x17000, 0x18000]),
              st.sampled_from([0, 1, 2])),  # (for no IRP, as Irp->MdlAddress, chained after it)
    st.tuples(st.just("free"), st.integers(0, 15)),
    st.tuples(st.just("depth"), st.integers(0, 7), st.integers(0, 5)),
    st.tuples(st.just("stray"), st.integers(0, 15), st.integers(0, 0x60), st.binary(min_size=1, max_size=8)),
    EDGES,
    # A list's NextEntry written over: into the buffer (aligned or not), unmapped, NULL.
    st.tuples(st.just("next"), st.integers(0, 7), st.sampled_from([0x100, 0x108, 0x1FF8, -1, 0])),
), max_size=50)


def _edge_steps(which, offset, value):
    """Objects allocated and freed with list ``which``'s field at ``offset`` set to ``value``
    on the way (a field of the processor's own lists, flat indexes 0, 2, 4 and 6, or the
    system's): every carry of the usual pop and push, and the step past it."""
    allocate = ("mdl", 0x10, 0x100, 0) if which >= 6 else ("irp", (1, 2, 8)[which // 2 % 3], False)
    return [allocate, allocate, allocate, ("free", 0), ("edge", which, offset, value), ("free", 1),
            ("free", 2), allocate, allocate, allocate, ("free", 3), ("free", 4), ("free", 5), allocate,
            ("edge", which, offset, value), allocate, allocate, ("free", 6), ("free", 7)]


@pytest.mark.parametrize("which", [0, 2, 3, 6, 7])
@pytest.mark.parametrize("offset, value", [(0x2, 0xFE), (0x2, 0xFF), (0x2, 0xFFFF), (0x14, 0xFE),
                                           (0x14, 0xFF), (0x14, 0xFFFFFFFF), (0x1C, 0xFF),
                                           (0x1C, 0xFFFFFFFE), (0x0, 0x100), (0x0, 0)])
def test_the_usual_calls_carry_as_the_general_ways(which, offset, value):
    test_the_routines_usual_calls_leave_what_their_general_ways_leave.hypothesis.inner_test(
        _edge_steps(which, offset, value))


@settings(max_examples=80, deadline=None)
@given(ROUTINE_STEPS)
def test_the_routines_usual_calls_leave_what_their_general_ways_leave(steps):
    """IoAllocateIrp / IoFreeIrp and IoAllocateMdl / IoFreeMdl's usual calls (the IRP packet
    from a template, the MDL header packed in place, the lists' pop and push on bytes, with
    the entry's physical address) against a machine where a MemoryWritten listener sends
    every call the general way: the same results, bug checks, list bytes, tags and bytes of
    every IRP and MDL after every step, with the lists' fields at the edges of their carries,
    stray writes over the objects, double frees and depths changed."""

    def apply(k, regions, step):
        what = step[0]
        flat = [lookaside for pair in k.io_lookasides[0] for lookaside in pair]
        if what == "irp":
            irp = k.IoAllocateIrp(step[1], step[2])
            if irp:
                k.held_objects.append(("irp", irp))
            return irp
        if what == "mdl":
            irps = [va for kind, va in k.held_objects if kind == "irp"]
            irp = irps[-1] if irps and step[3] else 0
            mdl = k.IoAllocateMdl(regions[0] + step[1], step[2], step[3] == 2, False, irp)
            if mdl:
                k.held_objects.append(("mdl", mdl))
            return mdl
        if what == "depth":
            return k.write(flat[step[1]] + 0x10, struct.pack("<H", step[2]))
        if what == "next":
            target = regions[0] + step[2] if step[2] > 0 else 0xFFFFF90000000000 if step[2] else 0
            return k.write(flat[step[1]] + 8, struct.pack("<Q", target | 1))
        if what == "edge":
            _, which, offset, value = step
            size = 2 if offset == 0 else 4
            value = value & 0xFFFF if offset == 0 else value
            if offset == 0x2:  # the Sequence's low 32 bits
                return k.write(flat[which] + 2, struct.pack("<I", value))
            return k.write(flat[which] + offset, value.to_bytes(size, "little"))
        if not k.held_objects:
            return None
        kind, va = k.held_objects[step[1] % len(k.held_objects)]  # (twice, sometimes)
        if what == "stray":
            return k.write(va + step[2], step[3])
        return k.IoFreeIrp(va) if kind == "irp" else k.IoFreeMdl(va)

    def state(k, regions):
        objects = [bytes(k.read(va, min(0x1F0 if kind == "irp" else FIXED_SIZE_MDL, 0x1000 - (va & 0xFFF))))
                   if k._tlb.get(va >> 12) is not None else None
                   for kind, va in k.held_objects]  # (each object's bytes on its first page, if mapped)
        return _lists_bytes(k), tags_in_use(k), objects

    run_both(_machine_with_buffer, apply, state, steps)
