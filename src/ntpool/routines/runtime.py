"""The kernel's runtime basics drivers link against: the C runtime exports of ntoskrnl
(memcpy, memmove, memset, memcmp; the string ones are rtl_strings'), DbgPrint, ExRaiseStatus,
KeAcquireSpinLockRaiseToDpc, interlocked singly linked lists and the executive's
lookaside lists (ExInitialize/Delete(N)PagedLookasideList, the LOOKASIDE_LIST_EX family of
ExInitializeLookasideListEx, and their allocate/free paths).

Everything works on simulated memory by address, so Python drivers and compiled ones call
the same routines. The lookaside lists are the WDK's structures at Windows 7 x64 offsets
(GENERAL_LOOKASIDE, 0x80 bytes; SLIST_HEADER in the 16-byte x64 format): a compiled
driver's inlined ExAllocateFromNPagedLookasideList pops the list itself and calls
``Allocate`` through the pointer ntpool stored (ExAllocatePoolWithTag by default), exactly
as on Windows; Python drivers call the same paths as routines.

DbgPrint writes to ``k.debug_output`` (a list of lines) and publishes ``DebugPrinted``.
"""

import struct

from ..packing import x64_struct
from ..constants import (
    BASE_POOL_TYPE_MASK,
    DISPATCH_LEVEL,
    POOL_QUOTA_FAIL_INSTEAD_OF_RAISE,
    POOL_RAISE_IF_ALLOCATION_FAILURE,
    BugCheckCode,
    NtStatus,
    PoolType,
)
from ..drivers import LDR_DLL_BASE
from ..errors import MachineHung, NtStatusError, allowed_when_halted
from ..hooks import DebugPrinted, PageFault
from ..packing import QWORD_VIEW
from ..machine.memory import canonical
from ..pool.lookaside import target_depth
from .registry import register_type, routine, serve_directly

MAX_STRING = 0x10000  # bytes read of a C string before giving up on its terminator


def read_c_string(kernel, address: int, limit: int = MAX_STRING) -> bytes:
    """The bytes of a NUL-terminated string in simulated memory (at most ``limit``), read a
    64-byte-aligned piece at a time: a piece never crosses a page, so a string that ends
    just before an unmapped page does not fault, and one that runs into it faults there."""
    out = bytearray()
    while len(out) < limit:
        chunk = kernel.read(address + len(out), 64 - ((address + len(out)) & 63))
        end = chunk.find(b"\0")
        if end >= 0:
            out += chunk[:end]
            return bytes(out)
        out += chunk
    return bytes(out[:limit])

for _name in ("PALLOCATE_FUNCTION", "PFREE_FUNCTION", "PALLOCATE_FUNCTION_EX", "PFREE_FUNCTION_EX",
              "PSLIST_HEADER", "PSLIST_ENTRY"):
    register_type(_name, 8, pointer=True)

_Q = x64_struct("<Q")
_QQ = x64_struct("<QQ")
# A GENERAL_LOOKASIDE from its ListHead to FreeMisses: the SLIST_HEADER's two QWORDs, Depth,
# MaximumDepth, TotalAllocates, AllocateMisses, TotalFrees, FreeMisses.
_HEAD_TO_FREE_MISSES = x64_struct("<QQHHIIII")
# What a hit reads and writes of it, in one struct each way: the header, Depth, MaximumDepth
# and TotalAllocates; a kept free, the same, AllocateMisses and TotalFrees (the fields between
# those it changes are written back as read: one pack where two would cost a call more). The
# header's first QWORD as its Depth (16 bits) and its Sequence's low 16 and high 32 bits,
# small ints (as one 64-bit int each change of Depth and Sequence would be several
# operations on a 3-digit int); its second QWORD, NextEntry (bits 4-63: the first entry's
# address) and the header type (bit 0), as one.
_HIT = x64_struct("<HHIQHHI")
_KEPT_FREE = x64_struct("<HHIQHHIII")
assert _HIT.size < _KEPT_FREE.size < _HEAD_TO_FREE_MISSES.size
_KEPT_FREE_BYTES = _KEPT_FREE.size
_NEXT_ENTRY = ((1 << 64) - 1) & ~0xF  # an SLIST_HEADER's NextEntry bits: the entry's address
# GENERAL_LOOKASIDE (Windows 7 x64).
LOOKASIDE_SIZE = 0x80
LA_DEPTH = 0x10
LA_MAXIMUM_DEPTH = 0x12
LA_TOTAL_ALLOCATES = 0x14
LA_ALLOCATE_MISSES = 0x18
LA_TOTAL_FREES = 0x1C
LA_FREE_MISSES = 0x20
LA_TYPE = 0x24
LA_TAG = 0x28
LA_SIZE = 0x2C
LA_ALLOCATE = 0x30
LA_FREE = 0x38
LA_LIST_ENTRY = 0x40
LA_LAST_TOTAL_ALLOCATES = 0x50
LA_LAST_ALLOCATE_MISSES = 0x54
# LOOKASIDE_LIST_EX (Vista and later) is one GENERAL_LOOKASIDE_POOL, L: the same fields at the
# same offsets (AllocateEx / FreeEx where Allocate / Free are), without the cache alignment
# that pads GENERAL_LOOKASIDE to 0x80: 0x60 bytes on x64.
LOOKASIDE_LIST_EX_SIZE = 0x60
EX_LOOKASIDE_LIST_EX_FLAGS_RAISE_ON_FAIL = 1
EX_LOOKASIDE_LIST_EX_FLAGS_FAIL_NO_RAISE = 2
MINIMUM_LOOKASIDE_DEPTH = 4  # ExMinimumLookasideDepth
MAXIMUM_LOOKASIDE_DEPTH = 256
# Stands for "the default routine" in a lookaside list when no native CPU exists to give
# ExAllocatePoolWithTag / ExFreePool an address (Python-only machines).
DEFAULT_ALLOCATE = 0xFFFFF80000A10000
DEFAULT_FREE = 0xFFFFF80000A10010
# Stand for ntoskrnl's code in bug check parameters (ntpool has no kernel code addresses):
# the instruction of ExpScanGeneralLookasideList, and of the list insert / removal that
# ExInitialize*LookasideList / ExDelete*LookasideList make under the list's lock.
EXP_SCAN_GENERAL_LOOKASIDE_LIST = 0xFFFFF80000A10020
EX_INSERT_LOOKASIDE_LIST = 0xFFFFF80000A10030
EX_REMOVE_LOOKASIDE_LIST = 0xFFFFF80000A10040
FAST_FAIL_CORRUPT_LIST_ENTRY = 3  # KERNEL_SECURITY_CHECK_FAILURE's parameter 1 (winnt.h)
GENERAL_LOOKASIDE_SCAN_PERIOD = 3  # seconds between two scans of one list (WRK lookasid.c)
MAX_LISTED_LOOKASIDES = 1 << 20  # links followed before a walk is taken to loop forever
ADDRESS_MASK = (1 << 64) - 1  # list code's pointer arithmetic wraps as the CPU's does


def _int(name, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    return value


def _base_pool_type(pool_type: int) -> PoolType:
    """The list head a lookaside of this POOL_TYPE joins: paged for PagedPool and its
    variants (session, cache-aligned), nonpaged for the rest (NX included)."""
    return PoolType.PagedPool if pool_type & BASE_POOL_TYPE_MASK else PoolType.NonPagedPool


# A GENERAL_LOOKASIDE's fields the hit and the kept free read, ListHead..FreeMisses, lie on
# one page when it starts at most this far into it.
_LAST_ONE_PAGE_OFFSET = 0x1000 - _HEAD_TO_FREE_MISSES.size


def _lookaside_routines(allocate_name: str, free_name: str, allocate_doc: str, free_doc: str):
    """A kind of lookaside list's allocation and free routines, as the class declares them:
    each calls the machine's function of that name (``_lookaside_functions``), so a call
    through the class does what the machine's does."""

    def allocate_from(self, Lookaside) -> int:
        return self.__dict__[allocate_name](Lookaside)

    def free_to(self, Lookaside, Entry) -> None:
        return self.__dict__[free_name](Lookaside, Entry)

    for function, name, doc in ((allocate_from, allocate_name, allocate_doc),
                                (free_to, free_name, free_doc)):
        function.__name__, function.__doc__ = name, doc
        function.__qualname__ = f"RuntimeRoutines.{name}"
    return allocate_from, free_to


# The lookaside routines of each kind: (allocation, free, extended).
LOOKASIDE_ROUTINES = (
    ("ExAllocateFromNPagedLookasideList", "ExFreeToNPagedLookasideList", False),
    ("ExAllocateFromPagedLookasideList", "ExFreeToPagedLookasideList", False),
    ("ExAllocateFromLookasideListEx", "ExFreeToLookasideListEx", True),
)


def serve_lookaside_routines_directly(kernel) -> None:
    """Make ``kernel``'s lookaside list routines (``_lookaside_functions``) and serve them
    as its own (``registry.serve_directly``), as ExAllocatePoolWithTag is served: what they
    use on every call (the machine's memory and TLB, the allocator's ``writes_watched``) is
    a cell of their closure, where the methods loaded it from ``self`` (issue 18: a
    driver's list pair 1.27-1.30x the Ex pair before, in CPU time). Needs ``_mem``,
    ``_tlb`` and the allocator."""
    for allocate_name, free_name, extended in LOOKASIDE_ROUTINES:
        allocate_from, free_to = _lookaside_functions(kernel, extended)
        serve_directly(kernel, getattr(RuntimeRoutines, allocate_name), allocate_from)
        serve_directly(kernel, getattr(RuntimeRoutines, free_name), free_to)


def _lookaside_functions(kernel, extended: bool):
    """One kind of lookaside list's allocation and free routines for ``kernel``, made as
    wdm.h makes them inline: a hit (the list holds an entry) and a kept free (the list is
    below its Depth) read and write the list where the driver keeps it, translated once,
    when ListHead to FreeMisses lie on one resident page, the entry's page is resident and
    no one watches the machine's writes (each write would have to be published); anything
    else takes ``_allocate_from_lookaside`` / ``_free_to_lookaside``, each access through
    ``read`` / ``write`` (where a page not present faults as on Windows: nothing was written
    before). Both leave what the long way leaves: a hit, the header (as
    ExpInterlockedPopEntrySList) and TotalAllocates; a kept free, TotalFrees, the entry's
    Next and the header. (The long way writes them in that order; here no one sees the
    order, and an entry whose Next would overwrite the list's own fields takes the long
    way.)"""
    allocator, tlb, mem = kernel.pool, kernel._tlb, kernel._mem
    qwords = memoryview(mem).cast(QWORD_VIEW)  # qwords[pa // 8]: the QWORD at an 8-aligned pa
    unpack_hit, pack_hit = _HIT.unpack_from, _HIT.pack_into
    unpack_kept_free, pack_kept_free = _KEPT_FREE.unpack_from, _KEPT_FREE.pack_into
    pack_qword = _Q.pack_into

    def allocate_from(Lookaside):
        if type(Lookaside) is int and not allocator.writes_watched:
            offset = Lookaside & 0xFFF
            try:  # (KeyError: a page the TLB does not hold, for the long way)
                if offset <= _LAST_ONE_PAGE_OFFSET:
                    pa = tlb[Lookaside >> 12] + offset
                    depth, sequence_low, sequence_high, high, depth_limit, maximum_depth, total = \
                        unpack_hit(mem, pa)
                    first = high & _NEXT_ENTRY
                    if first:
                        # The entry's Next, its first QWORD (NextEntry is 16-byte aligned: the
                        # QWORD lies in its page).
                        following = qwords[(tlb[first >> 12] + (first & 0xFFF)) // 8]
                        # Depth less one, Sequence (48 bits) plus one, the entry's Next the new
                        # first; TotalAllocates plus one (ULONGs wrap, as ``+= 1`` does).
                        sequence_low += 1
                        if sequence_low == 0x10000:  # (a carry into the Sequence's high 32 bits)
                            sequence_low, sequence_high = 0, sequence_high + 1 & 0xFFFFFFFF
                        pack_hit(mem, pa, depth - 1 & 0xFFFF, sequence_low, sequence_high,
                                 following & _NEXT_ENTRY | 1, depth_limit, maximum_depth,
                                 total + 1 & 0xFFFFFFFF)
                        return first
            except KeyError:
                pass
        return kernel._allocate_from_lookaside(Lookaside, extended)

    def free_to(Lookaside, Entry):
        if type(Lookaside) is int and type(Entry) is int and not allocator.writes_watched:
            offset = Lookaside & 0xFFF
            try:  # (KeyError: a page the TLB does not hold, for the long way)
                if offset <= _LAST_ONE_PAGE_OFFSET:
                    pa = tlb[Lookaside >> 12] + offset
                    depth, sequence_low, sequence_high, high, depth_limit, maximum_depth, allocates, \
                        allocate_misses, frees = unpack_kept_free(mem, pa)
                    entry_offset = Entry & 0xFFF
                    if depth < depth_limit and entry_offset <= 0xFF8:
                        entry = tlb[Entry >> 12] + entry_offset
                        if entry + 8 <= pa or entry >= pa + _KEPT_FREE_BYTES:  # (not the list's own fields)
                            pack_qword(mem, entry, high & _NEXT_ENTRY)  # the entry's Next: the first
                            # Depth plus one, Sequence (48 bits) plus one, the entry the new
                            # first; TotalFrees plus one.
                            sequence_low += 1
                            if sequence_low == 0x10000:  # (a carry into the Sequence's high 32 bits)
                                sequence_low, sequence_high = 0, sequence_high + 1 & 0xFFFFFFFF
                            pack_kept_free(mem, pa, depth + 1 & 0xFFFF, sequence_low, sequence_high,
                                           Entry & _NEXT_ENTRY | 1, depth_limit, maximum_depth,
                                           allocates, allocate_misses, frees + 1 & 0xFFFFFFFF)
                            return
            except KeyError:
                pass
        kernel._free_to_lookaside(Lookaside, Entry, extended)

    return allocate_from, free_to


class RuntimeRoutines:
    # --- the debugger's output -----------------------------------------------------------------

    @property
    def debug_output(self) -> list:
        """Every line drivers printed with DbgPrint/DbgPrintEx, in order."""
        return self.__dict__.setdefault("_debug_output", [])

    @routine("ULONG DbgPrint(_In_ PCSTR Format)")
    def DbgPrint(self, Format) -> int:
        """Print to the debugger (a compiled driver's format and arguments are formatted first)."""
        text = Format if isinstance(Format, str) else self._c_string(_int("Format", Format))
        for line in text.rstrip("\n").split("\n"):
            self.debug_output.append(line)
            self.hooks.publish(DebugPrinted(line))
        return NtStatus.STATUS_SUCCESS

    @routine("ULONG DbgPrintEx(_In_ ULONG ComponentId, _In_ ULONG Level, _In_ PCSTR Format)")
    def DbgPrintEx(self, ComponentId, Level, Format) -> int:
        return self.DbgPrint(Format)

    def _c_string(self, address: int, limit: int = MAX_STRING) -> str:
        return read_c_string(self, address, limit).decode("latin-1")

    # --- the C runtime -------------------------------------------------------------------------

    @routine("PVOID memcpy(_Out_writes_bytes_all_(Count) PVOID Destination, "
             "_In_ const VOID *Source, _In_ SIZE_T Count)")
    def memcpy(self, Destination, Source, Count) -> int:
        self.RtlCopyMemory(Destination, Source, Count)
        return Destination

    @routine("PVOID memmove(_Out_writes_bytes_all_(Count) PVOID Destination, "
             "_In_ const VOID *Source, _In_ SIZE_T Count)")
    def memmove(self, Destination, Source, Count) -> int:
        self.RtlMoveMemory(Destination, Source, Count)
        return Destination

    @routine("PVOID memset(_Out_writes_bytes_all_(Count) PVOID Destination, _In_ INT Value, "
             "_In_ SIZE_T Count)")
    def memset(self, Destination, Value, Count) -> int:
        self.RtlFillMemory(Destination, Count, Value & 0xFF)
        return Destination

    @routine("INT memcmp(_In_ const VOID *Buffer1, _In_ const VOID *Buffer2, _In_ SIZE_T Count)")
    def memcmp(self, Buffer1, Buffer2, Count) -> int:
        a, b = self.read(Buffer1, Count), self.read(Buffer2, Count)
        return 0 if a == b else (-1 if a < b else 1)

    # --- exceptions ----------------------------------------------------------------------------

    @routine("VOID ExRaiseStatus(_In_ NTSTATUS Status)")
    def ExRaiseStatus(self, Status) -> None:
        """Raise ``Status`` as an exception (NtStatusError; a compiled driver's __except)."""
        raise NtStatusError(_int("Status", Status) & 0xFFFFFFFF, "ExRaiseStatus")

    # --- spin locks as x64 drivers import them -------------------------------------------------

    @routine("KIRQL KeAcquireSpinLockRaiseToDpc(_Inout_ PKSPIN_LOCK SpinLock)")
    def KeAcquireSpinLockRaiseToDpc(self, SpinLock) -> int:
        """What x64 wdm.h's KeAcquireSpinLock calls: raise to DISPATCH_LEVEL, take, old IRQL."""
        return self.KeAcquireSpinLock(SpinLock)

    # --- interlocked singly linked lists (x64 16-byte SLIST_HEADER) -----------------------------

    def _slist(self, head: int) -> tuple[int, int, int]:
        """(first entry, depth, sequence) of an SLIST_HEADER."""
        low, high = _QQ.unpack(self.read(head, 16))
        return (high >> 4) << 4, low & 0xFFFF, (low >> 16) & 0xFFFFFFFFFFFF

    def _set_slist(self, head: int, first: int, depth: int, sequence: int) -> None:
        low = (depth & 0xFFFF) | ((sequence & 0xFFFFFFFFFFFF) << 16)
        high = ((first >> 4) << 4) | 1  # HeaderType 1: the 16-byte format
        self.write(head, _QQ.pack(low, high))

    @routine("PSLIST_ENTRY ExpInterlockedPopEntrySList(_Inout_ PSLIST_HEADER ListHead)")
    def ExpInterlockedPopEntrySList(self, ListHead) -> int:
        first, depth, sequence = self._slist(_int("ListHead", ListHead))
        if not first:
            return 0
        following = _Q.unpack(self.read(first, 8))[0]
        self._set_slist(ListHead, following, depth - 1, sequence + 1)
        return first

    @routine("PSLIST_ENTRY ExpInterlockedPushEntrySList(_Inout_ PSLIST_HEADER ListHead, "
             "_Inout_ PSLIST_ENTRY ListEntry)")
    def ExpInterlockedPushEntrySList(self, ListHead, ListEntry) -> int:
        first, depth, sequence = self._slist(_int("ListHead", ListHead))
        self.write(_int("ListEntry", ListEntry), _Q.pack(first))
        self._set_slist(ListHead, ListEntry, depth + 1, sequence + 1)
        return first

    @routine("PSLIST_ENTRY ExpInterlockedFlushSList(_Inout_ PSLIST_HEADER ListHead)")
    def ExpInterlockedFlushSList(self, ListHead) -> int:
        first, _, sequence = self._slist(_int("ListHead", ListHead))
        self._set_slist(ListHead, 0, 0, sequence + 1)
        return first

    # --- lookaside lists -----------------------------------------------------------------------

    def _default_pool_routines(self) -> tuple[int, int]:
        native = self.__dict__.get("_native")
        if native is None:
            return DEFAULT_ALLOCATE, DEFAULT_FREE
        return native.bindings.stub("ExAllocatePoolWithTag"), native.bindings.stub("ExFreePool")

    def _set_up_lookaside(self, lookaside, allocate, free, flags, size, tag, base_type,
                          structure_size: int = LOOKASIDE_SIZE) -> None:
        lookaside = _int("Lookaside", lookaside)
        size = _int("Size", size) & 0xFFFFFFFF  # a SIZE_T kept in the list's ULONG Size
        if size < 8:
            raise ValueError(f"Size {size} is smaller than an SLIST_ENTRY (8 bytes)")
        default_allocate, default_free = self._default_pool_routines()
        tag_value = self.pool.validate_tag(tag)
        self.write(lookaside, bytes(structure_size))
        self._set_slist(lookaside, 0, 0, 0)
        self.write(lookaside + LA_DEPTH, struct.pack("<HH", self.minimum_lookaside_depth,
                                                     MAXIMUM_LOOKASIDE_DEPTH))
        self.write(lookaside + LA_TYPE, struct.pack("<III", (base_type | _int("Flags", flags)) & 0xFFFFFFFF,
                                                    tag_value, size))
        self.write(lookaside + LA_ALLOCATE, _QQ.pack(allocate or default_allocate,
                                                     free or default_free))
        self._insert_lookaside(lookaside + LA_LIST_ENTRY, base_type)

    @routine("VOID ExInitializeNPagedLookasideList(_Inout_ PNPAGED_LOOKASIDE_LIST Lookaside, "
             "_In_opt_ PALLOCATE_FUNCTION Allocate, _In_opt_ PFREE_FUNCTION Free, "
             "_In_ ULONG Flags, _In_ SIZE_T Size, _In_ ULONG Tag, _In_ USHORT Depth)")
    def ExInitializeNPagedLookasideList(self, Lookaside, Allocate, Free, Flags, Size, Tag,
                                        Depth) -> None:
        """Initialize a nonpaged lookaside list in the caller's memory (``Lookaside``)."""
        self._set_up_lookaside(Lookaside, Allocate, Free, Flags, Size, Tag, PoolType.NonPagedPool)

    @routine("VOID ExInitializePagedLookasideList(_Inout_ PPAGED_LOOKASIDE_LIST Lookaside, "
             "_In_opt_ PALLOCATE_FUNCTION Allocate, _In_opt_ PFREE_FUNCTION Free, "
             "_In_ ULONG Flags, _In_ SIZE_T Size, _In_ ULONG Tag, _In_ USHORT Depth)")
    def ExInitializePagedLookasideList(self, Lookaside, Allocate, Free, Flags, Size, Tag,
                                       Depth) -> None:
        self._set_up_lookaside(Lookaside, Allocate, Free, Flags, Size, Tag, PoolType.PagedPool)

    def _lookaside_field(self, lookaside: int, offset: int, fmt: str):
        return struct.unpack(fmt, self.read(lookaside + offset, struct.calcsize(fmt)))

    def _call_pool_routine(self, address: int, *args) -> int:
        default_allocate, default_free = self._default_pool_routines()
        # The default routines take what PALLOCATE_FUNCTION / PFREE_FUNCTION pass; a
        # LOOKASIDE_LIST_EX's extra Lookaside argument is in a register they never read.
        if address in (default_allocate, DEFAULT_ALLOCATE):
            return self.ExAllocatePoolWithTag(*args[:3])
        if address in (default_free, DEFAULT_FREE):
            self.ExFreePool(args[0])
            return 0
        # Anything else is a routine the driver gave, or a pointer it overwrote: called as
        # Windows calls it (a Python function, native code, or the fault of jumping there).
        return self.call_code(address, *args)

    def _delete_lookaside(self, lookaside, base_type, extended: bool = False) -> None:
        lookaside = _int("Lookaside", lookaside)
        self._remove_lookaside(lookaside + LA_LIST_ENTRY, base_type)
        self._flush_lookaside(lookaside, extended)

    def _flush_lookaside(self, lookaside: int, extended: bool) -> None:
        """Free every entry the list holds with its Free (FreeEx: with the list) routine."""
        free = self._lookaside_field(lookaside, LA_FREE, "<Q")[0]
        extra = (lookaside,) if extended else ()
        entry = self.ExpInterlockedFlushSList(lookaside)
        while entry:
            following = _Q.unpack(self.read(entry, 8))[0]
            self._call_pool_routine(free, entry, *extra)
            entry = following

    @routine("VOID ExDeleteNPagedLookasideList(_Inout_ PNPAGED_LOOKASIDE_LIST Lookaside)")
    def ExDeleteNPagedLookasideList(self, Lookaside) -> None:
        """Unlink the list from ExNPagedLookasideListHead, then free every entry it still
        holds (with its Free routine)."""
        self._delete_lookaside(Lookaside, PoolType.NonPagedPool)

    @routine("VOID ExDeletePagedLookasideList(_Inout_ PPAGED_LOOKASIDE_LIST Lookaside)")
    def ExDeletePagedLookasideList(self, Lookaside) -> None:
        self._delete_lookaside(Lookaside, PoolType.PagedPool)

    def _allocate_from_lookaside(self, lookaside, extended: bool = False) -> int:
        lookaside = _int("Lookaside", lookaside)
        total, misses = self._lookaside_field(lookaside, LA_TOTAL_ALLOCATES, "<II")
        # The counters are ULONGs in the driver's own memory, counted as wdm.h's inline
        # routines count them (+= 1): whatever a stray write left there wraps.
        total = (total + 1) & 0xFFFFFFFF
        entry = self.ExpInterlockedPopEntrySList(lookaside)
        if not entry:
            misses = (misses + 1) & 0xFFFFFFFF
            pool_type, tag, size = self._lookaside_field(lookaside, LA_TYPE, "<III")
            allocate = self._lookaside_field(lookaside, LA_ALLOCATE, "<Q")[0]
            self.write(lookaside + LA_TOTAL_ALLOCATES, struct.pack("<II", total, misses))
            extra = (lookaside,) if extended else ()
            return self._call_pool_routine(allocate, pool_type, size, tag, *extra)
        self.write(lookaside + LA_TOTAL_ALLOCATES, struct.pack("<II", total, misses))
        return entry

    def _free_to_lookaside(self, lookaside, entry, extended: bool = False) -> None:
        lookaside = _int("Lookaside", lookaside)
        frees, free_misses = self._lookaside_field(lookaside, LA_TOTAL_FREES, "<II")
        frees = (frees + 1) & 0xFFFFFFFF  # ULONGs, wrapping (see _allocate_from_lookaside)
        _, depth, _ = self._slist(lookaside)
        if depth >= self._lookaside_field(lookaside, LA_DEPTH, "<H")[0]:
            self.write(lookaside + LA_TOTAL_FREES, struct.pack("<II", frees, (free_misses + 1) & 0xFFFFFFFF))
            extra = (lookaside,) if extended else ()
            self._call_pool_routine(self._lookaside_field(lookaside, LA_FREE, "<Q")[0], entry, *extra)
            return
        self.write(lookaside + LA_TOTAL_FREES, struct.pack("<II", frees, free_misses))
        self.ExpInterlockedPushEntrySList(lookaside, entry)

    ExAllocateFromNPagedLookasideList, ExFreeToNPagedLookasideList = _lookaside_routines(
        "ExAllocateFromNPagedLookasideList", "ExFreeToNPagedLookasideList",
        allocate_doc="An entry from the list, or a new one from its Allocate routine (NULL if none).",
        free_doc="Keep the entry while the list is below its depth, else give it to Free.")
    ExAllocateFromNPagedLookasideList = routine(
        "PVOID ExAllocateFromNPagedLookasideList(_Inout_ PNPAGED_LOOKASIDE_LIST Lookaside)")(
        ExAllocateFromNPagedLookasideList)
    ExFreeToNPagedLookasideList = routine(
        "VOID ExFreeToNPagedLookasideList(_Inout_ PNPAGED_LOOKASIDE_LIST Lookaside, "
        "_In_ PVOID Entry)")(ExFreeToNPagedLookasideList)

    ExAllocateFromPagedLookasideList, ExFreeToPagedLookasideList = _lookaside_routines(
        "ExAllocateFromPagedLookasideList", "ExFreeToPagedLookasideList",
        allocate_doc="An entry from the list, or a new one from its Allocate routine (NULL if none).",
        free_doc="Keep the entry while the list is below its depth, else give it to Free.")
    ExAllocateFromPagedLookasideList = routine(
        "PVOID ExAllocateFromPagedLookasideList(_Inout_ PPAGED_LOOKASIDE_LIST Lookaside)")(
        ExAllocateFromPagedLookasideList)
    ExFreeToPagedLookasideList = routine(
        "VOID ExFreeToPagedLookasideList(_Inout_ PPAGED_LOOKASIDE_LIST Lookaside, "
        "_In_ PVOID Entry)")(ExFreeToPagedLookasideList)

    # --- LOOKASIDE_LIST_EX (Vista and later) ----------------------------------------------------

    @routine("NTSTATUS ExInitializeLookasideListEx(_Inout_ PLOOKASIDE_LIST_EX Lookaside, "
             "_In_opt_ PALLOCATE_FUNCTION_EX Allocate, _In_opt_ PFREE_FUNCTION_EX Free, "
             "_In_ POOL_TYPE PoolType, _In_ ULONG Flags, _In_ SIZE_T Size, _In_ ULONG Tag, "
             "_In_ USHORT Depth)")
    def ExInitializeLookasideListEx(self, Lookaside, Allocate, Free, PoolType, Flags, Size, Tag,
                                    Depth) -> int:
        """Initialize a LOOKASIDE_LIST_EX for entries of ``PoolType`` (paged, nonpaged, NX,
        with its modifiers): linked on ExPagedLookasideListHead when the type is paged, else on
        ExNPagedLookasideListHead. RAISE_ON_FAIL and FAIL_NO_RAISE (exclusive:
        STATUS_INVALID_PARAMETER_5) become POOL_RAISE_IF_ALLOCATION_FAILURE and
        POOL_QUOTA_FAIL_INSTEAD_OF_RAISE in L.Type, the PoolType AllocateEx is passed."""
        flags = _int("Flags", Flags) & 0xFFFFFFFF
        both = EX_LOOKASIDE_LIST_EX_FLAGS_RAISE_ON_FAIL | EX_LOOKASIDE_LIST_EX_FLAGS_FAIL_NO_RAISE
        if flags & both == both:
            return NtStatus.STATUS_INVALID_PARAMETER_5
        pool_type = _int("PoolType", PoolType) & 0xFFFFFFFF
        if flags & EX_LOOKASIDE_LIST_EX_FLAGS_RAISE_ON_FAIL:
            pool_type |= POOL_RAISE_IF_ALLOCATION_FAILURE
        if flags & EX_LOOKASIDE_LIST_EX_FLAGS_FAIL_NO_RAISE:
            pool_type |= POOL_QUOTA_FAIL_INSTEAD_OF_RAISE
        base_type = _base_pool_type(pool_type)
        self._set_up_lookaside(Lookaside, Allocate, Free, pool_type & ~BASE_POOL_TYPE_MASK, Size,
                               Tag, base_type, LOOKASIDE_LIST_EX_SIZE)
        return NtStatus.STATUS_SUCCESS

    ExAllocateFromLookasideListEx, ExFreeToLookasideListEx = _lookaside_routines(
        "ExAllocateFromLookasideListEx", "ExFreeToLookasideListEx",
        allocate_doc="An entry from the list, or AllocateEx(L.Type, L.Size, L.Tag, Lookaside)'s: "
                     "NULL, or raised with RAISE_ON_FAIL, when that fails (wdm.h's inline routine).",
        free_doc="Keep the entry while the list is below its depth, else FreeEx(Entry, Lookaside).")
    ExAllocateFromLookasideListEx = routine(
        "PVOID ExAllocateFromLookasideListEx(_Inout_ PLOOKASIDE_LIST_EX Lookaside)")(
        ExAllocateFromLookasideListEx)
    ExFreeToLookasideListEx = routine(
        "VOID ExFreeToLookasideListEx(_Inout_ PLOOKASIDE_LIST_EX Lookaside, _In_ PVOID Entry)")(
        ExFreeToLookasideListEx)

    @routine("VOID ExDeleteLookasideListEx(_Inout_ PLOOKASIDE_LIST_EX Lookaside)")
    def ExDeleteLookasideListEx(self, Lookaside) -> None:
        """Unlink the list from its global head, then give every entry it holds to FreeEx."""
        lookaside = _int("Lookaside", Lookaside)
        pool_type = self._lookaside_field(lookaside, LA_TYPE, "<I")[0]
        base_type = _base_pool_type(pool_type)
        self._delete_lookaside(lookaside, base_type, extended=True)

    @routine("VOID ExFlushLookasideListEx(_Inout_ PLOOKASIDE_LIST_EX Lookaside)")
    def ExFlushLookasideListEx(self, Lookaside) -> None:
        """Give every entry the list holds to FreeEx; the list stays initialized and linked."""
        self._flush_lookaside(_int("Lookaside", Lookaside), extended=True)

    # --- the system's lists of lookaside lists, and their retuning ----------------------------

    def _lookaside_list_head(self, base_type) -> int:
        return self.npaged_lookaside_list_head if base_type == PoolType.NonPagedPool \
            else self.paged_lookaside_list_head

    def _listed(self, address: int, size: int, write: bool, instruction: int) -> None:
        """Check an access that list code makes under a lookaside list lock (DISPATCH_LEVEL,
        ntoskrnl's code) to memory a driver owns: what Windows 7 raises when it faults.

        A non-canonical address is a general-protection fault no handler catches: 0x1E
        (0xC0000005, instruction, 0, -1). Otherwise a page that is not resident cannot be
        brought in at DISPATCH_LEVEL: IRQL_NOT_LESS_OR_EQUAL (0xA: address, IRQL, 0 read /
        1 write, instruction), which KeBugCheckEx turns, because the faulting code is the
        kernel's, into DRIVER_PORTION_MUST_BE_NONPAGED (0xD3) when the address lies in a
        loaded driver's image and SYSTEM_SCAN_AT_RAISED_IRQL_CAUGHT_IMPROPER_DRIVER_UNLOAD
        (0xD4) when it lies where a driver that has unloaded was (WRK ke/bugcheck.c, ReactOS
        ke/bug.c: "a driver that has unloaded without deleting its lookaside lists")."""
        access = "write to" if write else "read of"
        if canonical(address) != address:
            self.KeBugCheckEx(BugCheckCode.KMODE_EXCEPTION_NOT_HANDLED, NtStatus.STATUS_ACCESS_VIOLATION,
                              instruction, 0, 0xFFFFFFFFFFFFFFFF,
                              detail=f"a lookaside list link's {access} the non-canonical address "
                                     f"{address:#x}: general protection fault")
        tlb = self._tlb
        last = (address + size - 1) & ADDRESS_MASK  # an access at the top of memory wraps
        for page, va in ((address >> 12, address), (last >> 12, last & ~0xFFF)):
            if page in tlb:
                continue
            if self.hooks.listening(PageFault) and \
                    self.hooks.ask(PageFault(va, write)) is not None:  # special pool's pages
                continue
            code, where, culprit = BugCheckCode.IRQL_NOT_LESS_OR_EQUAL, "not resident", None
            for name, base, end in self._driver_images():
                if base <= va < end:
                    code = BugCheckCode.DRIVER_PORTION_MUST_BE_NONPAGED
                    where = f"in {name}'s image, not resident"
                    break
            else:
                for name, base, end in reversed(self.unloaded_drivers):
                    if base <= va < end:
                        code = BugCheckCode.SYSTEM_SCAN_AT_RAISED_IRQL_CAUGHT_IMPROPER_DRIVER_UNLOAD
                        where = f"where {name} was before it unloaded (its lookaside list was never deleted)"
                        culprit = name  # the unloaded driver is blamed, whoever's call found it
                        break
            self.KeBugCheckEx(code, va, DISPATCH_LEVEL, int(write), instruction,
                              detail=f"a lookaside list's {access} {va:#x} at IRQL {DISPATCH_LEVEL}: "
                                     f"{where}", culprit=culprit)

    def _driver_images(self):
        for driver in self.drivers:
            base, _, size = struct.unpack("<QQQ", self.read(driver.entry_va + LDR_DLL_BASE, 24))
            yield driver.name, base, base + size

    def _listed_read(self, address: int, size: int, instruction: int) -> bytes:
        address &= ADDRESS_MASK
        self._listed(address, size, False, instruction)
        return self.read(address, size)

    def _listed_write(self, address: int, data: bytes, instruction: int) -> None:
        address &= ADDRESS_MASK
        self._listed(address, len(data), True, instruction)
        self.write(address, data)

    def _insert_lookaside(self, entry: int, base_type) -> None:
        """ExInterlockedInsertTailList(&Ex(N)PagedLookasideListHead, &L.ListEntry, lock).
        Windows 7 follows the links as they are; from Windows 8 the list code checks the
        tail's Flink first (``_list_entry_check``)."""
        head = self._lookaside_list_head(base_type)
        at = EX_INSERT_LOOKASIDE_LIST
        blink = _Q.unpack(self._listed_read(head + 8, 8, at))[0]
        if self.windows.major >= 10:
            self._list_entry_check(_Q.unpack(self._listed_read(blink, 8, at))[0] == head,
                                   f"the list tail {blink:#x}'s Flink is not the head {head:#x}")
        self._listed_write(entry, _QQ.pack(head, blink), at)
        self._listed_write(blink, _Q.pack(entry), at)
        self._listed_write(head + 8, _Q.pack(entry), at)

    def _remove_lookaside(self, entry: int, base_type) -> None:
        """RemoveEntryList(&L.ListEntry) under the list's lock: links as they are on
        Windows 7, checked both ways from Windows 8 (``_list_entry_check``)."""
        at = EX_REMOVE_LOOKASIDE_LIST
        flink, blink = _QQ.unpack(self._listed_read(entry, 16, at))
        if self.windows.major >= 10:
            self._list_entry_check(
                _Q.unpack(self._listed_read(flink + 8, 8, at))[0] == entry
                and _Q.unpack(self._listed_read(blink, 8, at))[0] == entry,
                f"the lookaside list at {entry - LA_LIST_ENTRY:#x} is not linked both ways "
                f"(Flink {flink:#x}, Blink {blink:#x})")
        self._listed_write(blink, _Q.pack(flink), at)
        self._listed_write(flink + 8, _Q.pack(blink), at)

    def _list_entry_check(self, sound: bool, what: str) -> None:
        """The inline list routines of Windows 8 and later (wdm.h's RemoveEntryList and
        InsertTailList): a LIST_ENTRY whose neighbours do not point back is
        __fastfail(FAST_FAIL_CORRUPT_LIST_ENTRY), bug check 0x139 with parameter 1 = 3
        (the trap frame and exception record, parameters 2 and 3, are not modelled: 0)."""
        if not sound:
            self.KeBugCheckEx(BugCheckCode.KERNEL_SECURITY_CHECK_FAILURE, FAST_FAIL_CORRUPT_LIST_ENTRY,
                              0, 0, 0, detail=f"corrupt LIST_ENTRY: {what}")

    @allowed_when_halted
    def listed_lookasides(self, base_type) -> list[int]:
        """Addresses of the lookaside lists linked on ExNPagedLookasideListHead (NonPagedPool)
        or ExPagedLookasideListHead (PagedPool), in list order (an inspection: stops at a
        link it cannot follow)."""
        head = self._lookaside_list_head(base_type)
        found, seen = [], {head}
        entry = _Q.unpack(self.read(head, 8))[0]
        while entry not in seen and len(found) < MAX_LISTED_LOOKASIDES:
            if canonical(entry) != entry or any(page not in self._tlb for page in (entry >> 12, entry + 7 >> 12)):
                break
            seen.add(entry)
            found.append((entry - LA_LIST_ENTRY) & ADDRESS_MASK)
            entry = _Q.unpack(self.read(entry, 8))[0]
        return found

    def disable_all_lookaside_lists(self) -> None:
        """ExDisableAllLookasideLists, which Driver Verifier calls when it is turned on: from
        now on ExMinimumLookasideDepth is 0 (a new list starts at Depth 0 and every scan sets
        0, WRK lookasid.c), and each listed driver list gets Depth 0 and MaximumDepth 0xFFFF,
        so every free goes to its Free routine and every allocation to its Allocate routine,
        where the verifier sees them. The lists are walked under their locks like the scan."""
        self.minimum_lookaside_depth = 0
        at = EXP_SCAN_GENERAL_LOOKASIDE_LIST
        for head in (self.npaged_lookaside_list_head, self.paged_lookaside_list_head):
            for lookaside in self._linked_lookasides(head, at):
                self._listed_write(lookaside + LA_DEPTH, struct.pack("<HH", 0, 0xFFFF), at)
        from . import io_lookaside  # (it builds on this module's GENERAL_LOOKASIDE offsets)
        io_lookaside.disable(self)  # the I/O manager's IRP and MDL lists: Depth 0

    def adjust_lookaside_depth(self) -> None:
        """ExAdjustLookasideDepth, the balance set manager's once-a-second retuning (not a driver
        routine: the kernel calls it): scan 0 the drivers' nonpaged
        lookaside lists, scan 1 their paged ones, scan 2 one set of the pool's own lists
        (``pool.lookaside_scanner``: Windows 7's design; the segment heap keeps none) with the
        I/O manager's lists of the same processor (or the system's)."""
        scan = self.lookaside_scan_count
        if scan == 0:
            self._scan_general_lookaside_list(self.npaged_lookaside_list_head)
        elif scan == 1:
            self._scan_general_lookaside_list(self.paged_lookaside_list_head)
        else:
            # ExpScanSystemLookasideList: with the set of pool lists, the same processor's (or
            # the system's) I/O lookaside lists, PPLookasideList's P (or L) pointers. The
            # segment heap keeps no pool lists: the scan cycles through the I/O lists alone.
            from . import io_lookaside  # (it builds on this module's offsets)
            scanner = getattr(self.pool, "lookaside_scanner", None)
            if scanner is not None:
                io_lookaside.retune(self, scanner.pool_scan_count)
                scanner.scan_pool_lists()
            else:
                io_lookaside.retune(self, self.io_lookaside_scan_count)
                self.io_lookaside_scan_count = (self.io_lookaside_scan_count + 1) % (self.processors + 1)
        self.lookaside_scan_count = (scan + 1) % 3

    def _scan_general_lookaside_list(self, head: int) -> None:
        """ExpScanGeneralLookasideList: under the list's spin lock, follow Flink from the head
        and, in each GENERAL_LOOKASIDE (in the driver's memory), compute the misses and the
        allocations since the last scan, store the Last* counters and the new Depth. A link
        a driver damaged is followed as Windows 7 follows it (see ``_listed``); one that
        never leads back to the head would spin there forever (``MachineHung``)."""
        at = EXP_SCAN_GENERAL_LOOKASIDE_LIST
        for lookaside in self._linked_lookasides(head, at):
            misses, = struct.unpack("<I", self._listed_read(lookaside + LA_ALLOCATE_MISSES, 4, at))
            last_misses, = struct.unpack("<I", self._listed_read(lookaside + LA_LAST_ALLOCATE_MISSES, 4, at))
            self._listed_write(lookaside + LA_LAST_ALLOCATE_MISSES, struct.pack("<I", misses), at)
            total, = struct.unpack("<I", self._listed_read(lookaside + LA_TOTAL_ALLOCATES, 4, at))
            last_total, = struct.unpack("<I", self._listed_read(lookaside + LA_LAST_TOTAL_ALLOCATES, 4, at))
            self._listed_write(lookaside + LA_LAST_TOTAL_ALLOCATES, struct.pack("<I", total), at)
            depth, maximum_depth = struct.unpack("<HH", self._listed_read(lookaside + LA_DEPTH, 4, at))
            if self.minimum_lookaside_depth == 0:  # Driver Verifier: lookasides off
                depth = 0
            else:
                depth = target_depth(depth, maximum_depth, (total - last_total) & 0xFFFFFFFF,
                                     (misses - last_misses) & 0xFFFFFFFF, GENERAL_LOOKASIDE_SCAN_PERIOD)
            self._listed_write(lookaside + LA_DEPTH, struct.pack("<H", depth), at)

    def _linked_lookasides(self, head: int, instruction: int):
        """Each GENERAL_LOOKASIDE linked from ``head``, the next Flink read (as the list code
        reads it under the list's spin lock, ``_listed``) once the caller is done with the one
        before. Links that never lead back to the head would spin there forever at
        DISPATCH_LEVEL: ``MachineHung``."""
        entry, visited = _Q.unpack(self.read(head, 8))[0], set()
        while entry != head:
            if entry in visited or len(visited) >= MAX_LISTED_LOOKASIDES:
                raise MachineHung(
                    f"the lookaside list links from {head:#x} loop back to {entry:#x}, never to "
                    f"the head: the list code would spin at DISPATCH_LEVEL forever")
            visited.add(entry)
            yield (entry - LA_LIST_ENTRY) & ADDRESS_MASK
            entry = _Q.unpack(self._listed_read(entry, 8, instruction))[0]
