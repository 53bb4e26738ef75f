"""The pool's lookaside lists, with Windows' depths and their periodic retuning.

Windows 7 keeps, for each pool and each small block size (1 to 32 blocks), a lookaside list
per processor (the KPRCB's PPNPagedLookasideList / PPPagedLookasideList ``P``) and one
system-wide list behind them (``L``, ExpSmallNPagedPoolLookasideLists /
ExpSmallPagedPoolLookasideLists). An allocation pops from the processor's list, then from
the system list, and only then goes to the pool; a free pushes onto the processor's list
while it holds fewer than its Depth, then onto the system list, and only then goes back to
the pool. Every list starts at Depth 4 (MINIMUM_LOOKASIDE_DEPTH) with MaximumDepth 256.

Depths are retuned once a second by the balance set manager (ExAdjustLookasideDepth). Its
scans rotate: one second the drivers' nonpaged lists, the next their paged lists (both
walked in guest memory from ExNPagedLookasideListHead / ExPagedLookasideListHead, see
ntpool.routines.runtime), the third the pool lists, and of the pool lists one set per scan, each processor's ``P`` lists in turn
and then the system ``L`` lists, with a scan period of 3 x processors seconds. For each list
(ExpComputeLookasideDepth), over the allocations since its last scan:

- fewer than 25 per second of the scan period: Depth drops by 10 (not below 4);
- otherwise, a miss rate under 0.5%: Depth drops by 1 (not below 4);
- otherwise Depth rises by miss-rate x (MaximumDepth - Depth) / 2 + 5, at most 30 at a time,
  never above MaximumDepth.

(Facts from the Windows Research Kernel's lookasid.c and pool.c; ntpool runs the same rule
on the machine's simulated clock, ``Kernel.advance_time``.) A ``Lookaside`` is one such set
of lists, one GENERAL_LOOKASIDE per block size, kept as lists indexed by block size so the
allocator's fast path touches a list element, not an object, per call.
"""

from .layout import LOOKASIDE_MAX_BLOCKS

BLOCK_SIZES = 256  # a POOL_HEADER's BlockSize is a UCHAR

MINIMUM_LOOKASIDE_DEPTH = 4
MAXIMUM_LOOKASIDE_DEPTH = 256
MINIMUM_ALLOCATION_THRESHOLD = 25  # allocations per second below which a list shrinks


class Lookaside:
    """One set of pool lookaside lists (a processor's, or the system-wide one).

    Indexed by block size (1..32; index 0 unused): ``head`` is ListHead.Next (the body of
    the first chunk, linked through the chunk bodies), ``count`` the entries it holds,
    ``depth`` how many it may hold now, and the counters the retuning reads. ``count`` and
    ``depth`` go on to every BlockSize (0..255), 0 past 32: no list holds a larger chunk,
    and the free fast path's ``count < depth`` says so without a test of the size.

    GENERAL_LOOKASIDE counts TotalAllocates and AllocateMisses; an allocation here counts
    either a hit or a miss (one increment: the fast path's hit, and a miss that goes on to
    the next list, are one list operation each), and TotalAllocates is their sum.
    """

    __slots__ = ("head", "count", "depth", "maximum_depth", "allocate_hits", "allocate_misses",
                 "last_total_allocates", "last_allocate_misses")

    def __init__(self, depth: int = MINIMUM_LOOKASIDE_DEPTH,
                 maximum_depth: int = MAXIMUM_LOOKASIDE_DEPTH):
        slots = LOOKASIDE_MAX_BLOCKS + 1
        self.head = [0] * slots
        self.count = [0] * BLOCK_SIZES
        self.depth = [depth] * slots + [0] * (BLOCK_SIZES - slots)
        self.maximum_depth = maximum_depth
        self.allocate_hits = [0] * slots
        self.allocate_misses = [0] * slots
        self.last_total_allocates = [0] * slots
        self.last_allocate_misses = [0] * slots

    @property
    def total_allocates(self) -> list[int]:
        """TotalAllocates of each list (a new list: hits + misses)."""
        return [hits + misses for hits, misses in zip(self.allocate_hits, self.allocate_misses)]

    def retune(self, scan_period: int) -> None:
        """ExpComputeLookasideDepth for every list of the set, over ``scan_period`` seconds."""
        total_allocates = self.total_allocates
        for block_size in range(1, LOOKASIDE_MAX_BLOCKS + 1):
            allocates = total_allocates[block_size] - self.last_total_allocates[block_size]
            misses = self.allocate_misses[block_size] - self.last_allocate_misses[block_size]
            self.last_total_allocates[block_size] = total_allocates[block_size]
            self.last_allocate_misses[block_size] = self.allocate_misses[block_size]
            self.depth[block_size] = target_depth(self.depth[block_size], self.maximum_depth,
                                                  allocates, misses, scan_period)

    def hits(self, block_size: int) -> int:
        return self.allocate_hits[block_size]


def target_depth(depth: int, maximum_depth: int, allocates: int, misses: int,
                 scan_period: int) -> int:
    """The new Depth of one lookaside list (ExpComputeLookasideDepth's rule), in the C
    types Windows computes it in: ULONG counts and ratio (``misses * 1000`` wraps), a LONG
    target stored back as a USHORT. For the pool's own lists the inputs are always in
    range; a driver's list lives in its memory, where a stray write may leave anything."""
    ulong = 0xFFFFFFFF
    allocates &= ulong
    if allocates < scan_period * MINIMUM_ALLOCATION_THRESHOLD:
        return max(depth - 10, MINIMUM_LOOKASIDE_DEPTH)
    ratio = (misses * 1000 & ulong) // allocates
    if ratio < 5:
        return max(depth - 1, MINIMUM_LOOKASIDE_DEPTH)
    delta = min((ratio * ((maximum_depth - depth) & ulong) & ulong) // 2000 + 5, 30)
    return min(depth + delta, maximum_depth) & 0xFFFF


class LookasideScanner:
    """ExpScanSystemLookasideList: ExAdjustLookasideDepth's third scan of every three (the
    kernel's ``ExAdjustLookasideDepth`` keeps the rotation; scans 0 and 1 are the drivers'
    own lists, in ntpool.routines.runtime). ``pools`` are the Pool objects (each with
    ``per_processor`` and ``system_lookaside``); one set is retuned per scan: processor
    ``n``'s, or the system lists when ``n`` equals the processor count.
    """

    def __init__(self, pools, processors: int):
        self.pools = pools
        self.processors = processors
        self.pool_scan_count = 0  # ExpPoolScanCount: 0 .. processors

    def scan_pool_lists(self) -> None:
        scan_period = 3 * self.processors
        for pool in self.pools:
            if self.pool_scan_count == self.processors:
                pool.system_lookaside.retune(scan_period)
            else:
                pool.per_processor[self.pool_scan_count].retune(scan_period)
        self.pool_scan_count += 1
        if self.pool_scan_count > self.processors:
            self.pool_scan_count = 0
