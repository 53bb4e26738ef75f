"""The I/O manager's usual calls take short ways: IoAllocateIrp's and IoAllocateMdl's sizes
worked out at once and the pool called from the routine itself; IoFreeIrp, IoReuseIrp,
IoFreeMdl and MmBuildMdlForNonPagedPool reading and writing an IRP's or an MDL's fields on a
resident page at once. Anything unusual takes the general way.

Each test runs the same steps on two machines: one as drivers run it, and one with a
MemoryWritten listener, on which every one of these routines takes its general way (and
IoAllocateIrp is asked for StackSize + 0x100, the same CCHAR, which its general way
serves). Every result, bug check, site and byte must be the same: for IRPs and MDLs the
pool gave, ones placed anywhere in a region (across a page boundary, on a paged-out page),
and any bytes a stray write left in them."""

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

import ntpool
from ntpool.hooks import MemoryWritten
from ntpool.routines import layouts as L
from pooltags import tags_in_use
from two_ways import outcome as _outcome

NP = ntpool.PoolType.NonPagedPool
PAGED = ntpool.PoolType.PagedPool
REGION = 0x3000  # three pages: IRPs and MDLs placed anywhere in the first two, across their boundary


def _machine(published: bool):
    k = ntpool.Kernel()
    if published:
        k.hooks.subscribe(MemoryWritten, lambda event: None)
    regions = (k.ExAllocatePoolWithTag(NP, REGION, "IoFC"), k.ExAllocatePoolWithTag(PAGED, REGION, "IoFC"))
    # A device whose driver's IRP_MJ_DEVICE_CONTROL returns STATUS_SUCCESS (every other
    # major function is IopInvalidDeviceRequest's, which completes the IRP), and three
    # completion routines: one returns STATUS_SUCCESS, one STATUS_MORE_PROCESSING_REQUIRED,
    # one pages the IRP out (and returns STATUS_SUCCESS: IofCompleteRequest reads it again).
    driver = k.create_driver_object("iofc")
    k.write(driver.driver_object + L.DRIVER_OBJECT.MajorFunction + 8 * 0xE,
            k.code_address(lambda k, device, irp: 0).to_bytes(8, "little"))
    k.device = k.IoCreateDevice(driver.driver_object, 0, 0, 0x22, 0, 0)[1]
    k.completed = []  # (routine, its DeviceObject, IRP, context) as each is called

    def routine(result, step=None):
        def completion(k, device, irp, context):
            k.completed.append((result, device, irp, context))
            if step is not None:
                step(k, irp)
            return result
        return k.code_address(completion)

    def page_out(k, irp):  # and a page of nonpaged pool takes the frame the IRP's page had
        if k.page_out(irp):
            k.ExAllocatePoolWithTag(NP, 0x1000, "IoFC")

    k.completions = (routine(0), routine(0xC0000016), routine(0, page_out))
    return k, regions, []


def _state(k, regions, allocated):
    def contents(va, size):
        if any(k.pager.is_paged_out(page) for page in range(va & ~0xFFF, va + size, 0x1000)):
            return None
        return bytes(k.read(va, size))

    live = [(va, contents(va, min(0x400, 0x1000 - (va & 0xFFF))), k.allocation_site(va).lineno)
            for va in allocated if va]
    return (k.irql_by_processor[:], tags_in_use(k), live, dict(k._system_ptes), k.completed[:],
            [contents(region, REGION) for region in regions])


OFFSETS = st.sampled_from([0x100, 0x108, 0x104, 0x101, 0xF40, 0xFB8, 0xFC8, 0xFD0, 0xFE0, 0xFE8,
                           0xFF0, 0xFFE, 0xFFF])
PLACE = st.tuples(st.integers(0, 1), OFFSETS)  # (which region: nonpaged, paged; offset)
# An IRP or MDL the pool gave (an index into those allocated so far), or a place in a region.
TARGET = st.one_of(st.tuples(st.just("allocated"), st.integers(0, 7)), PLACE)
STACK_SIZES = st.sampled_from([1, 2, 3, 8, 9, 0x7F])
STATUSES = st.sampled_from([0, 0x103, 0xC0000001, -0x3FFFFFFF])

STEPS = st.one_of(
    st.tuples(st.just("IoAllocateIrp"), STACK_SIZES, st.booleans()),
    st.tuples(st.just("IoFreeIrp"), TARGET),
    st.tuples(st.just("IoInitializeIrp"), TARGET, st.sampled_from([0x160, 0xD0, 0x40, 0x118]), STACK_SIZES),
    st.tuples(st.just("IoReuseIrp"), TARGET, STATUSES),
    st.tuples(st.just("IoAllocateMdl"), PLACE, st.sampled_from([1, 0x64, 0xF00, 0x1001, 0x3000])),
    st.tuples(st.just("IoFreeMdl"), TARGET),
    st.tuples(st.just("MmBuildMdlForNonPagedPool"), TARGET),
    st.tuples(st.just("MmProbeAndLockPages"), TARGET),
    st.tuples(st.just("MmMapLockedPagesSpecifyCache"), TARGET),
    st.tuples(st.just("MmUnlockPages"), TARGET),
    st.tuples(st.just("mdl_header"), PLACE, PLACE, st.sampled_from([0, 0x10, 0x1000, 0x1800, 0x2001]),
              st.sampled_from([0, 0x1, 0x2, 0x1000])),
    st.tuples(st.just("IofCallDriver"), TARGET),
    st.tuples(st.just("IofCompleteRequest"), TARGET),
    st.tuples(st.just("cancel"), TARGET),
    st.tuples(st.just("next_location"), TARGET, st.sampled_from([0, 0xE]), st.integers(0, 3),
              st.sampled_from([0, 0x01, 0x40, 0x80, 0x20, 0xE0, 0xE1])),
    st.tuples(st.just("status"), TARGET, STATUSES),
    st.tuples(st.just("stray"), PLACE, st.binary(min_size=1, max_size=0x40)),
    st.tuples(st.just("irql"), st.integers(0, 2)),
    st.tuples(st.just("page_out"), st.integers(0, 2)),
)


def _address(regions, allocated, where):
    if where[0] == "allocated":
        return allocated[where[1] % len(allocated)] if allocated else regions[0] + 0x100
    region, offset = where
    return regions[region] + offset


def _apply(k, regions, allocated, step, general):
    what, *args = step
    if what == "IoAllocateIrp":
        stack_size, charge = args
        # 0x100 more is the same CCHAR, which IoAllocateIrp's general way serves.
        irp = k.IoAllocateIrp(stack_size + 0x100 if general else stack_size, charge)
        allocated.append(irp)
        return irp
    if what == "IoAllocateMdl":
        mdl = k.IoAllocateMdl(_address(regions, allocated, args[0]), args[1], 0, 0, 0)
        allocated.append(mdl)
        return mdl
    if what == "mdl_header":  # an MDL's header (MdlFlags as given) written at a place
        place, described, length, flags = args
        va = _address(regions, allocated, described)
        header = struct.pack("<QHH4xQQQII", 0, L.MDL.SIZE + 8 * 4, flags, 0, 0, va & ~0xFFF, length, va & 0xFFF)
        return k.write(_address(regions, allocated, place), header)
    if what == "MmProbeAndLockPages":
        args.append(1)  # KernelMode, IoWriteAccess
        args.insert(1, 0)
    if what == "MmMapLockedPagesSpecifyCache":
        args += [0, 1, 0, 0, 16]  # KernelMode, MmCached, no address, no bug check on failure, normal
    if what == "IofCallDriver":
        return k.IofCallDriver(k.device, _address(regions, allocated, args[0]))
    if what == "next_location":  # IoSetCompletionRoutine's stores, and the major function
        irp = _address(regions, allocated, args[0])
        major, routine, control = args[1:]
        stack = int.from_bytes(k.read(irp + L.IRP.CurrentStackLocation, 8), "little") - 0x48
        k.write(stack, bytes([major]))
        k.write(stack + L.IO_STACK_LOCATION.Control, bytes([control]))
        address = k.completions[routine - 1] if routine else 0
        return k.write(stack + L.IO_STACK_LOCATION.CompletionRoutine, address.to_bytes(8, "little"))
    if what == "cancel":
        return k.write(_address(regions, allocated, args[0]) + L.IRP.Cancel, b"\1")
    if what == "status":
        return k.write(_address(regions, allocated, args[0]) + L.IRP.IoStatus_Status,
                       (args[1] & 0xFFFFFFFF).to_bytes(4, "little"))
    if what == "stray":
        return k.write(_address(regions, allocated, args[0]), args[1])
    if what == "irql":
        return k._set_irql(args[0])
    if what == "page_out":
        return k.page_out(regions[1] + args[0] * 0x1000)
    target = _address(regions, allocated, args[0])
    result = getattr(k, what)(target, *args[1:])
    if what in ("IoFreeIrp", "IoFreeMdl") and target in allocated:
        allocated.remove(target)
    return result


def _same_steps(steps):
    usual, usual_regions, usual_allocated = _machine(published=False)
    general, general_regions, general_allocated = _machine(published=True)
    assert usual_regions == general_regions
    for step in steps:
        a = _outcome(lambda: _apply(usual, usual_regions, usual_allocated, step, False))
        b = _outcome(lambda: _apply(general, general_regions, general_allocated, step, True))
        assert a == b, step
        assert _state(usual, usual_regions, usual_allocated) == \
            _state(general, general_regions, general_allocated), step
        if a[0] == "bugcheck":
            break


@settings(max_examples=300, deadline=None)
@given(st.lists(STEPS, max_size=25))
def test_the_io_managers_usual_calls_do_what_their_general_way_does(steps):
    _same_steps(steps)


IRP = ("allocated", 0)
SCENARIOS = {
    "an IRP allocated, reused, freed, freed again": [
        ("IoAllocateIrp", 2, False), ("IoReuseIrp", IRP, 0xC0000001), ("IoFreeIrp", IRP), ("IoFreeIrp", IRP)],
    "a large IRP with quota, reused after stray bytes": [
        ("IoAllocateIrp", 9, True), ("stray", (0, 0x100), b"\xAA"), ("IoReuseIrp", IRP, -0x3FFFFFFF)],
    "an IRP whose Size a stray write shrank, reused": [
        ("IoInitializeIrp", (0, 0x100), 0x160, 2), ("stray", (0, 0x102), b"\x40\x00"),
        ("IoReuseIrp", (0, 0x100), 0x103)],
    "an IRP across a page boundary, reused and freed": [
        ("IoInitializeIrp", (0, 0xFD0), 0x160, 2), ("IoReuseIrp", (0, 0xFD0), 0), ("IoFreeIrp", (0, 0xFD0))],
    "an IRP on a paged-out page, reused and freed": [
        ("IoInitializeIrp", (1, 0x100), 0x160, 2), ("page_out", 0), ("IoReuseIrp", (1, 0x100), 0),
        ("page_out", 0), ("IoFreeIrp", (1, 0x100))],
    "not an IRP, freed": [("stray", (0, 0x100), b"\x06\x01"), ("IoFreeIrp", (0, 0x100))],
    "an IRP sent down and completed through two completion routines": [
        ("IoAllocateIrp", 3, False), ("next_location", IRP, 0xE, 1, 0xE0), ("IofCallDriver", IRP),
        ("next_location", IRP, 0xE, 2, 0xE1), ("IofCallDriver", IRP), ("status", IRP, 0xC0000001),
        ("IofCompleteRequest", IRP), ("IofCompleteRequest", IRP)],
    "a cancelled IRP completed through a routine for cancels only": [
        ("IoAllocateIrp", 2, False), ("next_location", IRP, 0xE, 2, 0x20), ("IofCallDriver", IRP),
        ("cancel", IRP), ("IofCompleteRequest", IRP), ("IofCompleteRequest", IRP)],
    "a pending return marked on the caller's location": [
        ("IoAllocateIrp", 3, False), ("next_location", IRP, 0xE, 0, 0), ("IofCallDriver", IRP),
        ("next_location", IRP, 0xE, 0, 0x01), ("IofCallDriver", IRP), ("IofCompleteRequest", IRP)],
    "an IRP of one stack location sent down twice": [
        ("IoAllocateIrp", 1, False), ("next_location", IRP, 0xE, 0, 0), ("IofCallDriver", IRP),
        ("IofCallDriver", IRP)],
    "an IRP its completion routine pages out, its next stack location on the next page": [
        ("IoInitializeIrp", (1, 0xF00), 0x1A8, 3), ("next_location", (1, 0xF00), 0xE, 0, 0),
        ("IofCallDriver", (1, 0xF00)), ("next_location", (1, 0xF00), 0xE, 3, 0xE0),
        ("IofCallDriver", (1, 0xF00)), ("IofCompleteRequest", (1, 0xF00))],
    "an IRP sent to IopInvalidDeviceRequest, completed, completed again": [
        ("IoAllocateIrp", 2, False), ("IofCallDriver", IRP), ("IofCallDriver", IRP),
        ("IofCompleteRequest", IRP)],
    "an IRP across a page boundary, sent and completed pending": [
        ("IoInitializeIrp", (0, 0xFD0), 0x160, 2), ("next_location", (0, 0xFD0), 0xE, 0, 0x01),
        ("IofCallDriver", (0, 0xFD0)), ("IofCompleteRequest", (0, 0xFD0))],
    "an IRP whose stack locations are paged out, sent and completed": [
        ("IoInitializeIrp", (1, 0xF00), 0x160, 2), ("next_location", (1, 0xF00), 0xE, 1, 0xE1),
        ("page_out", 1), ("IofCallDriver", (1, 0xF00)), ("page_out", 1), ("IofCompleteRequest", (1, 0xF00))],
    "an MDL built and freed": [
        ("IoAllocateMdl", (0, 0x100), 0x1001), ("MmBuildMdlForNonPagedPool", IRP), ("IoFreeMdl", IRP)],
    "an MDL of paged pool built after its page went": [
        ("IoAllocateMdl", (1, 0xFE8), 0x64), ("page_out", 1), ("MmBuildMdlForNonPagedPool", IRP)],
    "an MDL at a page's end, built": [
        ("stray", (0, 0xFD0), bytes(0x20)), ("MmBuildMdlForNonPagedPool", (0, 0xFD0))],
    "an MDL whose PFN array crosses its page": [
        ("mdl_header", (0, 0xFC8), (0, 0x100), 0x1800, 0), ("MmBuildMdlForNonPagedPool", (0, 0xFC8)),
        ("mdl_header", (0, 0xFD0), (0, 0x100), 0x10, 0), ("MmBuildMdlForNonPagedPool", (0, 0xFD0)),
        ("mdl_header", (1, 0xFC8), (0, 0x100), 0x1800, 0), ("page_out", 1),
        ("MmBuildMdlForNonPagedPool", (1, 0xFC8))],
    "an MDL locked, mapped and freed": [
        ("IoAllocateMdl", (1, 0x100), 0x1001), ("MmProbeAndLockPages", IRP),
        ("MmMapLockedPagesSpecifyCache", IRP), ("IoFreeMdl", IRP)],
    "an IRP whose Size a stray write made tiny, reused with a zero status": [
        ("IoInitializeIrp", (0, 0x100), 0x160, 2), ("stray", (0, 0x102), b"\x10\x00"),
        ("stray", (0, 0x130), b"\x55" * 8), ("IoReuseIrp", (0, 0x100), 0)],
    "MDLs and IRPs at DISPATCH_LEVEL": [
        ("irql", 2), ("IoAllocateMdl", (1, 0x100), 0x64), ("IoAllocateIrp", 1, False),
        ("MmBuildMdlForNonPagedPool", IRP), ("IoFreeMdl", IRP), ("IoFreeIrp", ("allocated", 1))],
}


def test_the_io_managers_unusual_calls_do_what_their_general_way_does():
    for name, steps in SCENARIOS.items():
        _same_steps(steps)


def test_irps_and_mdls_are_charged_to_the_line_that_asked_for_them():
    k = ntpool.Kernel()
    buffer = k.ExAllocatePoolWithTag(NP, 0x100, "IoFC")
    irp = k.IoAllocateIrp(2, False); irp_line = _line()  # noqa: E702
    general_irp = k.IoAllocateIrp(0x102, False); general_irp_line = _line()  # noqa: E702
    mdl = k.IoAllocateMdl(buffer, 0x64, 0, 0, 0); mdl_line = _line()  # noqa: E702
    assert (k.allocation_site(irp).lineno, k.allocation_site(general_irp).lineno, k.allocation_site(mdl).lineno) \
        == (irp_line, general_irp_line, mdl_line)
    assert k.allocation_site(irp).filename == __file__
    assert k.read(irp, 0xD0) == k.read(general_irp, 0xD0)[:0x20] + \
        (irp + L.IRP.ThreadListEntry).to_bytes(8, "little") * 2 + k.read(general_irp, 0xD0)[0x30:0xB8] + \
        (irp + L.IRP.SIZE + 2 * L.IO_STACK_LOCATION.SIZE).to_bytes(8, "little") + bytes(0x10)


def _line() -> int:
    import sys
    return sys._getframe(1).f_lineno
