"""What the kernel reads back from memory a driver can write: found by the long fuzzers
(``python -m ntpool.tools.corruption_fuzz`` and wilder drivers run on demand). Each test is
one value a stray write left in a structure ntpool's routines read and update; the answer
is what Windows does with it (a counter wraps, a bug check), never a Python error."""

import struct

import ntpool

NP = ntpool.PoolType.NonPagedPool
MiB = 1 << 20
TOTAL_ALLOCATES = 0x14  # NPAGED_LOOKASIDE_LIST.L: TotalAllocates, AllocateMisses, TotalFrees, FreeMisses


def test_lookaside_list_counters_a_driver_overwrote_wrap_as_ulongs():
    k = ntpool.Kernel(nonpaged_pool_bytes=1 * MiB, paged_pool_bytes=1 * MiB)
    lookaside = k.ExAllocatePoolWithTag(NP, 0x80, "LaLi")
    k.ExInitializeNPagedLookasideList(lookaside, 0, 0, 0, 64, "Look", 0)
    k.write(lookaside + TOTAL_ALLOCATES, b"\xff" * 16)
    entry = k.ExAllocateFromNPagedLookasideList(lookaside)  # a miss: from the pool
    assert entry
    k.ExFreeToNPagedLookasideList(lookaside, entry)  # kept: the list is below its depth
    counters = struct.unpack("<IIII", k.read(lookaside + TOTAL_ALLOCATES, 16))
    assert counters == (0, 0, 0, 0xFFFFFFFF)
    assert k.ExAllocateFromNPagedLookasideList(lookaside) == entry  # a hit
    assert struct.unpack("<II", k.read(lookaside + TOTAL_ALLOCATES, 8)) == (1, 0)
