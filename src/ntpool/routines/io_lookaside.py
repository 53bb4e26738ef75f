"""The I/O manager's lookaside lists for IRPs and MDLs, as Windows 7 and later keep them.

Each processor's KPRCB holds PPLookasideList[LookasideMaximumList], a pair of GENERAL_LOOKASIDE
pointers per list: ``P``, the processor's own list, and ``L``, the system-wide one behind it.
The I/O manager's are, numbered as PP_NPAGED_LOOKASIDE_NUMBER numbers them from Windows 7 (6.1)
on, LookasideSmallIrpList (IRPs of one stack location), LookasideMediumIrpList (new in 6.1:
up to IopMediumIrpStackLocations, 4), LookasideLargeIrpList (up to IopLargeIrpStackLocations,
8) and LookasideMdlList (MDLs of IOP_FIXED_SIZE_MDL_PFNS, 0x17, pages). IoInitSystem sets them
up (WRK ioinit.c, ReactOS IopInitLookasideLists; public type information and decompilations
of later kernels for the medium list): each with ExInitializeSystemLookasideList, which starts
a list at Depth 2 with the MaximumDepth given and links it at the tail of
ExSystemLookasideListHead; a large workstation's maxima are 32 (small IRPs), 64 (large) and
128 (MDLs); the medium list's is not public: ntpool gives it the large list's (a departure).

An allocation counts TotalAllocates on ``P`` and pops it; an empty ``P`` counts an
AllocateMisses and the same is done on ``L``; only when both are empty does the pool serve it
(and the IRP or MDL is still fixed size). A free counts TotalFrees on ``P`` and pushes there
while the list holds fewer than its Depth, else counts FreeMisses and tries ``L`` the same
way; a free neither keeps goes back to the pool. An entry on a list stays allocated in pool:
poolmon still counts it under "Irp " or "Mdl ". Its first QWORD is the SLIST_ENTRY's Next.

The depths are retuned by ExAdjustLookasideDepth's third scan (ExpScanSystemLookasideList):
processor n's ``P`` lists in the scan that retunes processor n's pool lists (Windows 7), the
``L`` lists with the system pool lists, by the same rule (``ntpool.pool.lookaside.target_depth``)
over a scan period of 3 x processors seconds; on the segment heap, which keeps no pool
lookasides, the same scan cycles through the I/O lists alone.

The lists live in simulated memory as the WDK lays GENERAL_LOOKASIDE out (0x80 bytes): the
``L`` lists in ntoskrnl's image after ExSystemLookasideListHead, the ``P`` lists in kernel
data (Windows takes them from one "Io  " pool block; ntpool's pool starts empty). Both pool
designs keep them: Windows 10 and 11 allocate IRPs and MDLs through the same lists.
"""

from __future__ import annotations

import struct

from ..constants import KERNEL_IMAGE_EX_SYSTEM_LOOKASIDE_LIST_HEAD, KERNEL_IMAGE_IOP_LOOKASIDE_LISTS
from ..pool.lookaside import target_depth
from ..tags import from_display
from . import layouts as L
from .runtime import (
    LA_ALLOCATE,
    LA_ALLOCATE_MISSES,
    LA_DEPTH,
    LA_LAST_ALLOCATE_MISSES,
    LA_LAST_TOTAL_ALLOCATES,
    LA_LIST_ENTRY,
    LA_TOTAL_ALLOCATES,
    LA_TOTAL_FREES,
    LA_TYPE,
    LOOKASIDE_SIZE,
)

# PP_NPAGED_LOOKASIDE_NUMBER, as Windows 7 (6.1) and later number it.
LookasideSmallIrpList = 0
LookasideMediumIrpList = 1
LookasideLargeIrpList = 2
LookasideMdlList = 3
IOP_MEDIUM_IRP_STACK_LOCATIONS = 4  # IopMediumIrpStackLocations
IOP_LARGE_IRP_STACK_LOCATIONS = 8  # IopLargeIrpStackLocations (DEFAULT_LARGE_IRP_LOCATIONS)
IOP_FIXED_SIZE_MDL_PFNS = 0x17
FIXED_SIZE_MDL = L.MDL.SIZE + 8 * IOP_FIXED_SIZE_MDL_PFNS  # 0xE8
SYSTEM_LOOKASIDE_DEPTH = 2  # ExInitializeSystemLookasideList's starting Depth
# Per list, by number: the system list's symbol, its tag and the processors' lists' tag (WRK
# ioinit.c: 'sprI', 'SprI'; 'lprI', 'LprI'; ' ldM', 'PldM'; the medium list's system tag
# 'mprI' from later kernels, its processors' 'MprI' by the same pattern), the entries' size,
# MaximumDepth on a large workstation (MmLargeSystem, not an AS system: WRK ioinit.c, ReactOS
# IopInitLookasideLists; the medium list's the large one's).
IO_LOOKASIDES = (
    ("IopSmallIrpLookasideList", "Irps", "IrpS", L.io_size_of_irp(1), 32),
    ("IopMediumIrpLookasideList", "Irpm", "IrpM", L.io_size_of_irp(IOP_MEDIUM_IRP_STACK_LOCATIONS), 64),
    ("IopLargeIrpLookasideList", "Irpl", "IrpL", L.io_size_of_irp(IOP_LARGE_IRP_STACK_LOCATIONS), 64),
    ("IopMdlLookasideList", "Mdl ", "MdlP", FIXED_SIZE_MDL, 128),
)
# The order IoInitSystem initializes the system lists in, and each processor's in its block
# (the completion list, not modelled, first): large, medium, small, MDL.
_INITIALIZATION_ORDER = (LookasideLargeIrpList, LookasideMediumIrpList, LookasideSmallIrpList,
                         LookasideMdlList)

_Q = struct.Struct("<Q")
_QQ = struct.Struct("<QQ")
_II = struct.Struct("<II")
_HH = struct.Struct("<HH")
_H = struct.Struct("<H")
_M32 = 0xFFFFFFFF
# A GENERAL_LOOKASIDE's DWORDs from its start: Depth (and MaximumDepth), TotalAllocates
# (AllocateMisses after it), TotalFrees (FreeMisses after it); the bytes its pop and push
# change, ListHead to FreeMisses.
_DEPTH_DWORD = LA_DEPTH // 4
_TOTAL_ALLOCATES_DWORD = LA_TOTAL_ALLOCATES // 4
_TOTAL_FREES_DWORD = LA_TOTAL_FREES // 4
_LIST_FIELDS = LA_TOTAL_FREES + 8
_M64 = (1 << 64) - 1
_NEXT_ENTRY = ((1 << 64) - 1) & ~0xF  # an SLIST_HEADER's NextEntry bits


def init_io_lookasides(k) -> None:
    """IoInitSystem's lookaside part: ExSystemLookasideListHead, the four system lists and
    each processor's four, linked there; ``k.io_lookasides[processor][list]`` is the (P, L)
    pair."""
    head = k.kernel_data.base + KERNEL_IMAGE_EX_SYSTEM_LOOKASIDE_LIST_HEAD
    k.system_lookaside_list_head = head
    k.write(head, _QQ.pack(head, head))
    k._io_dwords = memoryview(k._mem).cast("I")  # (the pop's and push's counters)
    system = [k.kernel_data.base + KERNEL_IMAGE_IOP_LOOKASIDE_LISTS + number * LOOKASIDE_SIZE
              for number in range(len(IO_LOOKASIDES))]
    for number in _INITIALIZATION_ORDER:
        _, tag, _, size, maximum = IO_LOOKASIDES[number]
        _initialize_system_lookaside(k, system[number], tag, size, maximum)
    block = k.kernel_data.reserve(len(_INITIALIZATION_ORDER) * LOOKASIDE_SIZE * k.processors, align=64)
    pairs = []
    for processor in range(k.processors):
        own = [0] * len(IO_LOOKASIDES)
        for slot, number in enumerate(_INITIALIZATION_ORDER):
            lookaside = block + (processor * len(_INITIALIZATION_ORDER) + slot) * LOOKASIDE_SIZE
            _, _, tag, size, maximum = IO_LOOKASIDES[number]
            _initialize_system_lookaside(k, lookaside, tag, size, maximum)
            own[number] = lookaside
        pairs.append(tuple(zip(own, system)))
    k.io_lookasides = tuple(pairs)
    k.io_take, k.io_give_back, k.io_take_at, k.io_give_back_at = fast_ways(k)


def _initialize_system_lookaside(k, lookaside: int, tag: str, size: int, maximum_depth: int) -> None:
    """ExInitializeSystemLookasideList: an empty list at Depth 2, NonPagedPool, ExAllocatePoolWithTag
    and ExFreePool as its routines, linked at the tail of ExSystemLookasideListHead."""
    allocate, free = k._default_pool_routines()
    k.write(lookaside, bytes(LOOKASIDE_SIZE))
    k._set_slist(lookaside, 0, 0, 0)
    k.write(lookaside + LA_DEPTH, _HH.pack(SYSTEM_LOOKASIDE_DEPTH, maximum_depth))
    k.write(lookaside + LA_TYPE, struct.pack("<III", 0, from_display(tag), size))
    k.write(lookaside + LA_ALLOCATE, _QQ.pack(allocate, free))
    head = k.system_lookaside_list_head
    entry = lookaside + LA_LIST_ENTRY
    tail = _Q.unpack(k.read(head + 8, 8))[0]
    k.write(entry, _QQ.pack(head, tail))
    k.write(tail, _Q.pack(entry))
    k.write(head + 8, _Q.pack(entry))


def pop(k, lookaside: int) -> int:
    """One list's part of an allocation: TotalAllocates plus one, then the first entry
    (InterlockedPopEntrySList), or 0 and AllocateMisses plus one when the list is empty.
    The list resident (always: the kernel's, 64-byte aligned, its fields in one page), the
    first entry's page too, nobody listening for memory writes: its QWORDs and DWORDs read
    and written in memory (the same bytes); anything else the long way (``_pop``)."""
    if not k._writes_published:
        tlb = k._tlb
        frame = tlb.get(lookaside >> 12)
        if frame is not None:
            pa = frame + (lookaside & 0xFFF)
            qwords, dwords = k._words, k._io_dwords
            at = pa >> 3
            first = qwords[at + 1] & _NEXT_ENTRY
            counter = (pa >> 2) + _TOTAL_ALLOCATES_DWORD
            if not first:
                dwords[counter] = dwords[counter] + 1 & _M32
                dwords[counter + 1] = dwords[counter + 1] + 1 & _M32  # AllocateMisses
                return 0
            entry_frame = tlb.get(first >> 12)
            if entry_frame is not None:
                dwords[counter] = dwords[counter] + 1 & _M32
                low = qwords[at]
                # Depth less one and Sequence (48 bits) plus one, in the header's first QWORD
                # (a Depth of 0 wraps to 0xFFFF without a borrow from the Sequence); the
                # entry's Next the new first.
                qwords[at] = low + (0xFFFF if low & 0xFFFF else 0x1FFFF) & _M64
                qwords[at + 1] = qwords[(entry_frame + (first & 0xFFF)) >> 3] & _NEXT_ENTRY | 1
                return first
    return _pop(k, lookaside)


def _pop(k, lookaside: int) -> int:
    """``pop`` the long way: each field through ``read`` and ``write``."""
    total, misses = _II.unpack(k.read(lookaside + LA_TOTAL_ALLOCATES, 8))
    k.write(lookaside + LA_TOTAL_ALLOCATES, _II.pack(total + 1 & _M32, misses))
    first, held, sequence = k._slist(lookaside)
    if not first:
        k.write(lookaside + LA_ALLOCATE_MISSES, struct.pack("<I", misses + 1 & _M32))
        return 0
    following = _Q.unpack(k.read(first, 8))[0]
    k._set_slist(lookaside, following, held - 1, sequence + 1)
    return first


def push(k, lookaside: int, entry: int) -> bool:
    """One list's part of a free: TotalFrees plus one; while the list holds fewer than its
    Depth the entry is pushed (InterlockedPushEntrySList: its Next the old first), else
    FreeMisses plus one and False. In memory at once as ``pop`` (the entry's Next on a
    resident page, 8-byte aligned, not among the list's fields); anything else the long way
    (``_push``)."""
    if not k._writes_published and type(entry) is int:
        tlb = k._tlb
        frame = tlb.get(lookaside >> 12)
        if frame is not None:
            pa = frame + (lookaside & 0xFFF)
            qwords, dwords = k._words, k._io_dwords
            at = pa >> 3
            low = qwords[at]
            counter = (pa >> 2) + _TOTAL_FREES_DWORD
            if low & 0xFFFF >= dwords[(pa >> 2) + _DEPTH_DWORD] & 0xFFFF:
                dwords[counter] = dwords[counter] + 1 & _M32
                dwords[counter + 1] = dwords[counter + 1] + 1 & _M32  # FreeMisses
                return False
            entry_frame = tlb.get(entry >> 12) if not entry & 7 else None
            if entry_frame is not None:
                entry_at = entry_frame + (entry & 0xFFF)
                if entry_at + 8 <= pa or entry_at >= pa + _LIST_FIELDS:  # (not the list's own)
                    dwords[counter] = dwords[counter] + 1 & _M32
                    qwords[entry_at >> 3] = qwords[at + 1] & _NEXT_ENTRY
                    # Depth plus one and Sequence plus one (a Depth of 0xFFFF carries into
                    # the Sequence: 0 and the Sequence plus one), the entry the new first.
                    qwords[at] = low + (1 if low & 0xFFFF == 0xFFFF else 0x10001) & _M64
                    qwords[at + 1] = entry & _NEXT_ENTRY | 1
                    return True
    return _push(k, lookaside, entry)


def _push(k, lookaside: int, entry: int) -> bool:
    """``push`` the long way: each field through ``read`` and ``write``."""
    frees, free_misses = _II.unpack(k.read(lookaside + LA_TOTAL_FREES, 8))
    first, held, sequence = k._slist(lookaside)
    depth = _H.unpack(k.read(lookaside + LA_DEPTH, 2))[0]
    if held >= depth:
        k.write(lookaside + LA_TOTAL_FREES, _II.pack(frees + 1 & _M32, free_misses + 1 & _M32))
        return False
    k.write(lookaside + LA_TOTAL_FREES, _II.pack(frees + 1 & _M32, free_misses))
    k.write(entry, _Q.pack(first))
    k._set_slist(lookaside, entry, held + 1, sequence + 1)
    return True


def take(k, number: int) -> int:
    """An entry of list ``number`` from the current processor's ``P`` list, else ``L``; 0
    when both are empty, and while Driver Verifier is on (ExMinimumLookasideDepth 0): then
    every IRP and MDL comes from the pool, where its tracking sees it (Windows' IovAllocateIrp
    allocates a verified driver's IRPs itself, and verification turns lookaside lists off,
    WRK lookasid.c; ntpool does so for every caller). (What ``k.io_take`` does, the long way:
    ``fast_ways`` makes that.)"""
    if not k.minimum_lookaside_depth:
        return 0
    own, system = k.io_lookasides[k.current_processor][number]
    return pop(k, own) or pop(k, system)


def give_back(k, number: int, entry: int) -> bool:
    """Keep a freed entry on list ``number`` (``P``, else ``L``); False: it goes to the pool.
    (What ``k.io_give_back`` does, the long way.)"""
    own, system = k.io_lookasides[k.current_processor][number]
    return push(k, own, entry) or push(k, system, entry)


def fast_ways(k):
    """``take`` and ``give_back`` made for ``k`` as the usual call runs them, and the same two
    with the entry's physical address (``take_at``, ``give_back_at``: a routine that writes
    or has translated the entry itself then needs no translation of its own). The lists'
    physical addresses are worked out once (they are the kernel's, resident and 64-byte
    aligned: their fields in one page), the machine's memory views and TLB cells are the
    closures'; a pop and a push each read and write the same bytes as ``pop`` and ``push``.

    The usual pop and push change the header's Depth (a USHORT: a pop from a header whose
    Depth is 0 goes on), the Sequence's low byte and TotalAllocates' or TotalFrees' low byte,
    none of which carries (a byte at 0xFF: the QWORD and DWORD arithmetic of ``take_listed``
    / ``give_listed``). Each memory read and each computed value is a new int object in
    CPython unless it is a small one (-5 to 256: shared): a byte, a small Depth and the
    indexes worked out here make none, which is most of what the usual calls save. Nobody
    listening for memory writes; anything else ``take`` / ``give_back``."""
    tlb, qwords, dwords, mem = k._tlb, k._words, k._io_dwords, k._mem
    ushorts = memoryview(mem).cast("H")
    at = tuple(tuple((k.space.translate(own) >> 3, k.space.translate(system) >> 3) for own, system in pairs)
               for pairs in k.io_lookasides)
    vas = k.io_lookasides
    assert LA_DEPTH == 0x10 and LA_TOTAL_ALLOCATES == 0x14 and LA_TOTAL_FREES == 0x1C  # (the QWORDs used)
    next_entry, m32, m64 = _NEXT_ENTRY, _M32, _M64
    allocates, depth_dword, frees, fields = _TOTAL_ALLOCATES_DWORD, _DEPTH_DWORD, _TOTAL_FREES_DWORD, _LIST_FIELDS

    def usual_fields(index: int) -> tuple:
        """What the usual pop and push of the list at QWORD ``index`` use, by index into
        their views: the header's NextEntry QWORD, its Depth USHORT, the list's Depth
        USHORT, the Sequence's low byte, TotalAllocates' and TotalFrees' low bytes; and the
        physical addresses an entry pushed must be outside of (the list's fields)."""
        pa = index << 3
        return (index + 1, pa >> 1, (pa + LA_DEPTH) >> 1, pa + 2, pa + LA_TOTAL_ALLOCATES,
                pa + LA_TOTAL_FREES, pa - 8, pa + fields)

    own_fields = tuple(tuple(usual_fields(own) for own, _ in pairs) for pairs in at)
    no_entry = (0, None)

    def io_take_at(number: int) -> tuple:
        # The usual call: the processor's list holds an entry on a resident page, and no
        # byte changed carries. (entry, its physical address), or (entry, None) from the
        # long way.
        if not k._writes_published and k.minimum_lookaside_depth:
            region, held_at, _, sequence_at, total_at, _, _, _ = own_fields[k.current_processor][number]
            first = qwords[region] & next_entry
            if first:
                entry_frame = tlb.get(first >> 12)
                held = ushorts[held_at]
                sequence = mem[sequence_at]
                total = mem[total_at]
                if entry_frame is not None and held and sequence != 0xFF and total != 0xFF:
                    mem[total_at] = total + 1
                    ushorts[held_at] = held - 1
                    mem[sequence_at] = sequence + 1
                    entry_at = entry_frame + (first & 0xFFF)
                    qwords[region] = qwords[entry_at >> 3] & next_entry | 1
                    return first, entry_at
        entry = take_listed(number)
        return (entry, None) if entry else no_entry

    def io_take(number: int) -> int:
        return io_take_at(number)[0]

    def io_give_back_at(number: int, entry: int, entry_at: int) -> bool:
        # The usual call: the caller's entry at physical ``entry_at``, 16-byte aligned (its
        # VA's low bits the same), outside the list's fields; the processor's list below its
        # Depth, and no byte changed carries.
        if not k._writes_published and not entry_at & 0xF:
            region, held_at, depth_at, sequence_at, _, total_at, low, high = \
                own_fields[k.current_processor][number]
            held = ushorts[held_at]
            if held < ushorts[depth_at] and not low < entry_at < high:
                sequence = mem[sequence_at]
                total = mem[total_at]
                if sequence != 0xFF and total != 0xFF:
                    mem[total_at] = total + 1
                    qwords[entry_at >> 3] = qwords[region] & next_entry
                    ushorts[held_at] = held + 1  # (below Depth, a USHORT: no carry)
                    mem[sequence_at] = sequence + 1
                    qwords[region] = entry + 1  # (16-byte aligned: NextEntry, and HeaderType 1)
                    return True
        return give_listed(number, entry)

    def io_give_back(number: int, entry: int) -> bool:
        # The usual call: an aligned entry on a resident page.
        if type(entry) is int and not entry & 7:
            entry_frame = tlb.get(entry >> 12)
            if entry_frame is not None and not entry & 0xF:
                return io_give_back_at(number, entry, entry_frame + (entry & 0xFFF))
        return give_listed(number, entry)

    def take_listed(number: int) -> int:
        if k._writes_published or not k.minimum_lookaside_depth:
            return take(k, number)
        processor = k.current_processor
        for which, index in enumerate(at[processor][number]):
            first = qwords[index + 1] & next_entry
            counter = (index << 1) + allocates
            if first:
                entry_frame = tlb.get(first >> 12)
                if entry_frame is None:
                    return pop(k, vas[processor][number][which]) or (
                        pop(k, vas[processor][number][1]) if not which else 0)
                dwords[counter] = dwords[counter] + 1 & m32
                low = qwords[index]
                qwords[index] = low + (0xFFFF if low & 0xFFFF else 0x1FFFF) & m64
                qwords[index + 1] = qwords[(entry_frame + (first & 0xFFF)) >> 3] & next_entry | 1
                return first
            dwords[counter] = dwords[counter] + 1 & m32
            dwords[counter + 1] = dwords[counter + 1] + 1 & m32  # AllocateMisses
        return 0

    def give_listed(number: int, entry: int) -> bool:
        if k._writes_published or type(entry) is not int or entry & 7:
            return give_back(k, number, entry)
        processor = k.current_processor
        for which, index in enumerate(at[processor][number]):
            low = qwords[index]
            counter = (index << 1) + frees
            if low & 0xFFFF >= dwords[(index << 1) + depth_dword] & 0xFFFF:
                dwords[counter] = dwords[counter] + 1 & m32
                dwords[counter + 1] = dwords[counter + 1] + 1 & m32  # FreeMisses
                continue
            entry_frame = tlb.get(entry >> 12)
            entry_at = entry_frame + (entry & 0xFFF) if entry_frame is not None else None
            if entry_at is None or (index << 3) - 8 < entry_at < (index << 3) + fields:
                return push(k, vas[processor][number][which], entry) or (
                    push(k, vas[processor][number][1], entry) if not which else False)
            dwords[counter] = dwords[counter] + 1 & m32
            qwords[entry_at >> 3] = qwords[index + 1] & next_entry
            qwords[index] = low + (1 if low & 0xFFFF == 0xFFFF else 0x10001) & m64
            qwords[index + 1] = entry & next_entry | 1
            return True
        return False

    return io_take, io_give_back, io_take_at, io_give_back_at


def retune(k, index: int) -> None:
    """ExpScanSystemLookasideList's part for the I/O lists: processor ``index``'s ``P`` lists,
    or the ``L`` lists when ``index`` is the processor count (ExpPoolScanCount)."""
    scan_period = 3 * k.processors
    if index == k.processors:
        lists = [system for _, system in k.io_lookasides[0]]
    else:
        lists = [own for own, _ in k.io_lookasides[index]]
    for lookaside in lists:
        total, misses = _II.unpack(k.read(lookaside + LA_TOTAL_ALLOCATES, 8))
        last_total, last_misses = _II.unpack(k.read(lookaside + LA_LAST_TOTAL_ALLOCATES, 8))
        k.write(lookaside + LA_LAST_TOTAL_ALLOCATES, _II.pack(total, misses))
        depth, maximum_depth = _HH.unpack(k.read(lookaside + LA_DEPTH, 4))
        if k.minimum_lookaside_depth == 0:  # Driver Verifier: lookasides off
            depth = 0
        else:
            depth = target_depth(depth, maximum_depth, total - last_total & _M32,
                                 misses - last_misses & _M32, scan_period)
        k.write(lookaside + LA_DEPTH, _H.pack(depth))


def disable(k) -> None:
    """ExDisableAllLookasideLists' part for the kernel's own lists: each I/O list's Depth 0,
    so that every free from now on goes to the pool."""
    for pairs in k.io_lookasides:
        for own, system in pairs:
            for lookaside in (own, system):
                k.write(lookaside + LA_DEPTH, _H.pack(0))


assert LA_LAST_ALLOCATE_MISSES == LA_LAST_TOTAL_ALLOCATES + 4


def held(k, number: int) -> int:
    """How many entries list ``number`` keeps, on every processor's ``P`` list and on ``L``
    (each list's SLIST_HEADER Depth)."""
    lists = {lookaside for pairs in k.io_lookasides for lookaside in pairs[number]}
    return sum(k._slist(lookaside)[1] for lookaside in lists)


def holdings(k) -> dict[str, tuple[int, int]]:
    """What the I/O lookaside lists keep, as poolmon counts it: tag -> (allocations, bytes),
    each entry a pool block of its list's Size and a POOL_HEADER ("Irp " for both IRP lists,
    "Mdl "). These are the I/O manager's, not leaks of whoever allocated them first."""
    found: dict[str, tuple[int, int]] = {}
    for number, tag in ((LookasideSmallIrpList, "Irp "), (LookasideMediumIrpList, "Irp "),
                        (LookasideLargeIrpList, "Irp "), (LookasideMdlList, "Mdl ")):
        count = held(k, number)
        if count:
            block = IO_LOOKASIDES[number][3] + 0x10 + 0xF & ~0xF
            allocations, size = found.get(tag, (0, 0))
            found[tag] = (allocations + count, size + count * block)
    return found
