"""The executive's pool routines (wdm.h), as methods of the machine.

Each is a thin translation onto the one PoolAllocator (``self.pool``). The routines called
most are served by functions made for each machine (``serve_pool_routines_directly``): the
pair is the allocator's fast paths themselves; ExAllocatePool2/3, ExFreePool2 and
ExAllocatePoolWithTagPriority are closures over them (``_pool_routines``), which the
methods below declare and call.
"""

from typing import NamedTuple

from ..constants import (
    CACHE_ALIGNED_POOL_TYPE_MASK,
    POOL_FLAG_REQUIRED_MASK,
    POOL_NX_ALLOCATION,
    POOL_QUOTA_FAIL_INSTEAD_OF_RAISE,
    POOL_RAISE_IF_ALLOCATION_FAILURE,
    SESSION_POOL_MASK,
    NtStatus,
    PoolExtendedParameterType,
    PoolFlags,
)
from ..errors import NtStatusError
from ..pool.allocator import LOOKASIDE_MAX_BYTES, VALID_POOL_TYPE_BITS, checked_pool_type, checked_priority
from ..tags import DEFAULT_TAG_EX, tag_value
from .registry import routine, serve_directly

# Plain ints: IntFlag arithmetic would cost microseconds per call.
F = type("F", (), {flag.name: int(flag) for flag in PoolFlags})
KNOWN_REQUIRED_FLAGS = (F.POOL_FLAG_USE_QUOTA | F.POOL_FLAG_UNINITIALIZED | F.POOL_FLAG_SESSION
                        | F.POOL_FLAG_CACHE_ALIGNED | F.POOL_FLAG_RAISE_ON_FAILURE
                        | F.POOL_FLAG_NON_PAGED | F.POOL_FLAG_NON_PAGED_EXECUTE
                        | F.POOL_FLAG_PAGED)
POOL_KIND_MASK = F.POOL_FLAG_NON_PAGED | F.POOL_FLAG_NON_PAGED_EXECUTE | F.POOL_FLAG_PAGED
POOL_KIND_FLAGS = {F.POOL_FLAG_NON_PAGED: POOL_NX_ALLOCATION,
                   F.POOL_FLAG_NON_PAGED_EXECUTE: 0,
                   F.POOL_FLAG_PAGED: 1}
MM_ANY_NODE_OK = 0x80000000
PEP = PoolExtendedParameterType


class POOL_EXTENDED_PARAMETER(NamedTuple):
    """One ExAllocatePool3 extended parameter (the union member named by ``Type``)."""

    Type: int
    Optional: bool = False
    Priority: int | None = None  # PoolExtendedParameterPriority
    PreferredNode: int | None = None  # PoolExtendedParameterNumaNode
    SecurePoolParams: object = None  # PoolExtendedParameterSecurePool (not modelled)


class _Pool2Failure(Exception):
    """An ExAllocatePool2/3 request that fails: NULL, or raised with RAISE_ON_FAILURE."""

    def __init__(self, status: int, why: str):
        super().__init__(why)
        self.status = status


def _checked_flags(flags) -> int:
    if isinstance(flags, bool) or not isinstance(flags, int):
        raise TypeError(f"Flags must be a POOL_FLAGS int, not {type(flags).__name__}")
    if not 0 <= flags < 1 << 64:
        raise ValueError(f"Flags {flags:#x} is not a 64-bit POOL_FLAGS value")
    # A plain int: a PoolFlags member (ntpool.PoolFlags, an IntFlag) would make each test of
    # a flag below an enum operation, about 1 µs apiece.
    return int(flags)


def serve_pool_routines_directly(kernel) -> None:
    """ExAllocatePoolWithTag and ExFreePoolWithTag, the routines drivers call most, are the
    allocator's fast paths themselves on every machine (``registry.serve_directly``): the
    methods below, which call the allocator, would cost a Python call more on each. The
    allocation's call site is then one frame up, not two. The methods stay the routines'
    declarations (the registry's prototypes) and serve a call made through the class.

    ExAllocatePool2, ExAllocatePool3, ExFreePool2 and ExAllocatePoolWithTagPriority are
    functions made for the machine (``_pool_routines``), as NDIS's memory routines are
    (``ndis.serve_memory_routines_directly``): what they use on every call is a cell of
    their closure, where a method loads it from ``self`` and then from the allocator, and
    the priority test is made inline, where the method called ``refuses_for_priority``
    (issue 18: the Pool3 pair 1.27-1.29x and the priority pair 1.25-1.27x the Ex pair
    before, in CPU time)."""
    allocator = kernel.pool
    serve_directly(kernel, ExecutiveRoutines.ExAllocatePoolWithTag,
                   allocator.fast_allocate(caller_depth=1))
    serve_directly(kernel, ExecutiveRoutines.ExFreePoolWithTag, allocator.fast_free())
    for name, function in _pool_routines(kernel).items():
        serve_directly(kernel, getattr(ExecutiveRoutines, name), function)


_UNKNOWN_POOL_TYPE_BITS = ~VALID_POOL_TYPE_BITS  # (a negative value has them too)
# ExtendedParametersCount of the usual ExAllocatePool3 / ExFreePool2 call, tested by identity:
# CPython keeps one int 0, which every int 0 is, so ``is`` finds exactly an int 0 with no
# call of type() (False, 0.0 or an int subclass are not it, and meet the full check).
_NO_PARAMETERS = 0
# A quota request's POOL_TYPE without the bits that say how it fails (the request reports a
# failure to the routine, which raises or returns NULL).
_PLAIN_QUOTA_TYPE_BITS = ~(POOL_QUOTA_FAIL_INSTEAD_OF_RAISE | POOL_RAISE_IF_ALLOCATION_FAILURE)


class ExecutiveRoutines:
    @routine("PVOID ExAllocatePoolWithTag(_In_ POOL_TYPE PoolType, _In_ SIZE_T NumberOfBytes, "
             "_In_ ULONG Tag)")
    def ExAllocatePoolWithTag(self, PoolType, NumberOfBytes, Tag) -> int:
        """Allocate pool; returns the address, or 0 (NULL) when the pool is exhausted."""
        return self.pool.allocate(PoolType, NumberOfBytes, Tag)

    @routine("PVOID ExAllocatePool(_In_ POOL_TYPE PoolType, _In_ SIZE_T NumberOfBytes)")
    def ExAllocatePool(self, PoolType, NumberOfBytes) -> int:
        """Allocate pool with the default tag 'None'."""
        return self.pool.allocate(PoolType, NumberOfBytes, DEFAULT_TAG_EX)

    @routine("VOID ExFreePoolWithTag(_In_ PVOID P, _In_ ULONG Tag)")
    def ExFreePoolWithTag(self, P, Tag) -> None:
        """Free pool; ``Tag`` must be the tag it was allocated with (else 0xC2/0x0A)."""
        self.pool.free(P, Tag)

    @routine("VOID ExFreePool(_In_ PVOID P)")
    def ExFreePool(self, P) -> None:
        """Free pool without naming its tag (a protected tag still must be named)."""
        self.pool.free(P, None)

    # --- priorities ------------------------------------------------------------------------

    @routine("PVOID ExAllocatePoolWithTagPriority(_In_ POOL_TYPE PoolType, "
             "_In_ SIZE_T NumberOfBytes, _In_ ULONG Tag, _In_ EX_POOL_PRIORITY Priority)")
    def ExAllocatePoolWithTagPriority(self, PoolType, NumberOfBytes, Tag, Priority) -> int:
        """NULL when the pool is low for this priority (Low first, Normal next, High only
        when exhausted), else as ExAllocatePoolWithTag."""
        # (the machine's function, ``_pool_routines``: a call through the class does the same)
        return self.__dict__["ExAllocatePoolWithTagPriority"](PoolType, NumberOfBytes, Tag, Priority)

    @routine("PVOID ExAllocatePoolZero(_In_ POOL_TYPE PoolType, _In_ SIZE_T NumberOfBytes, "
             "_In_ ULONG Tag)")
    def ExAllocatePoolZero(self, PoolType, NumberOfBytes, Tag) -> int:
        # The WDK's inline function: ExAllocatePoolWithTag, then RtlZeroMemory of what it
        # gave. The fast path that zeroes (as ExAllocatePool2's) does both, a lookaside
        # chunk zeroed through the address its pop has.
        allocate_zeroed = self.pool.allocate_zeroed  # (loaded, then called: see NdisAllocateMemoryWithTag)
        return allocate_zeroed(PoolType, NumberOfBytes, Tag)

    def _zeroed(self, va: int, number_of_bytes) -> int:
        # Zeroing after the fast path costs less than taking the generic path to zero.
        if va:
            self.pool.zero(va, number_of_bytes)
        return va

    @routine("PVOID ExAllocatePoolUninitialized(_In_ POOL_TYPE PoolType, "
             "_In_ SIZE_T NumberOfBytes, _In_ ULONG Tag)")
    def ExAllocatePoolUninitialized(self, PoolType, NumberOfBytes, Tag) -> int:
        return self.pool.allocate(PoolType, NumberOfBytes, Tag)

    # --- quota -----------------------------------------------------------------------------

    @routine("PVOID ExAllocatePoolWithQuotaTag(_In_ POOL_TYPE PoolType, "
             "_In_ SIZE_T NumberOfBytes, _In_ ULONG Tag)")
    def ExAllocatePoolWithQuotaTag(self, PoolType, NumberOfBytes, Tag) -> int:
        """Charge the current process's pool quota. Raises NtStatusError
        (STATUS_QUOTA_EXCEEDED or STATUS_INSUFFICIENT_RESOURCES) on failure, or returns 0
        when PoolType carries POOL_QUOTA_FAIL_INSTEAD_OF_RAISE."""
        # A POOL_TYPE value first, checked inline for the common call (as FsRtl's).
        pool_type = PoolType if type(PoolType) is int and not PoolType & _UNKNOWN_POOL_TYPE_BITS \
            else checked_pool_type(PoolType)
        process = self.current_process
        if process is self.system_process:  # (charged nothing)
            # The System process is charged nothing: the request is ExAllocatePoolWithTag's,
            # fast path included (called from here, where it finds the driver's frame).
            allocate = self.pool.allocate  # (loaded, then called: see NdisAllocateMemoryWithTag)
            va = allocate(pool_type & _PLAIN_QUOTA_TYPE_BITS, NumberOfBytes, Tag)
            if va or pool_type & POOL_QUOTA_FAIL_INSTEAD_OF_RAISE:
                return va
            status = NtStatus.STATUS_INSUFFICIENT_RESOURCES
        else:
            # Charged to the process: the allocator's quota fast path (it finds the driver's
            # call site as ``allocate`` does, two frames up).
            allocate_charged = self.pool.allocate_charged  # (loaded, then called: see NdisAllocateMemoryWithTag)
            va, status = allocate_charged(pool_type & _PLAIN_QUOTA_TYPE_BITS, NumberOfBytes, Tag, process)
            if va or pool_type & POOL_QUOTA_FAIL_INSTEAD_OF_RAISE:
                return va
        raise self._quota_failure(status, NumberOfBytes)

    def _quota_failure(self, status: int, number_of_bytes) -> NtStatusError:
        return NtStatusError(status, f"ExAllocatePoolWithQuotaTag of {number_of_bytes} bytes "
                                     f"for {self.current_process.name}")

    # The two routines below are ExAllocatePoolWithQuotaTag with a default tag or zeroing.
    # Their usual call (a valid POOL_TYPE, in the System process or charged to another) is
    # made inline, as that routine makes it: calling it would cost a Python call more and,
    # the fast path's frame above being ntpool's own, a walk out of it to find the driver's
    # call site on every call.

    @routine("PVOID ExAllocatePoolWithQuota(_In_ POOL_TYPE PoolType, _In_ SIZE_T NumberOfBytes)")
    def ExAllocatePoolWithQuota(self, PoolType, NumberOfBytes) -> int:
        if type(PoolType) is int and not PoolType & _UNKNOWN_POOL_TYPE_BITS:
            process = self.current_process
            # (Each case tests its own result: a status named on the way, an enum member, would
            # cost about 80 ns on every call.)
            if process is self.system_process:
                allocate = self.pool.allocate  # (loaded, then called: see NdisAllocateMemoryWithTag)
                va = allocate(PoolType & _PLAIN_QUOTA_TYPE_BITS, NumberOfBytes, DEFAULT_TAG_EX)
                if va or PoolType & POOL_QUOTA_FAIL_INSTEAD_OF_RAISE:
                    return va
                raise self._quota_failure(NtStatus.STATUS_INSUFFICIENT_RESOURCES, NumberOfBytes)
            allocate_charged = self.pool.allocate_charged
            va, status = allocate_charged(PoolType & _PLAIN_QUOTA_TYPE_BITS, NumberOfBytes,
                                          DEFAULT_TAG_EX, process)
            if va or PoolType & POOL_QUOTA_FAIL_INSTEAD_OF_RAISE:
                return va
            raise self._quota_failure(status, NumberOfBytes)
        return self.ExAllocatePoolWithQuotaTag(PoolType, NumberOfBytes, DEFAULT_TAG_EX)

    @routine("PVOID ExAllocatePoolQuotaZero(_In_ POOL_TYPE PoolType, _In_ SIZE_T NumberOfBytes, "
             "_In_ ULONG Tag)")
    def ExAllocatePoolQuotaZero(self, PoolType, NumberOfBytes, Tag) -> int:
        pool_type = PoolType if type(PoolType) is int and not PoolType & _UNKNOWN_POOL_TYPE_BITS \
            else checked_pool_type(PoolType)
        process = self.current_process
        if process is self.system_process:  # (each case tests its own result: see above)
            # (the fast path that zeroes, as ExAllocatePoolZero's)
            allocate_zeroed = self.pool.allocate_zeroed
            va = allocate_zeroed(pool_type & _PLAIN_QUOTA_TYPE_BITS, NumberOfBytes, Tag)
            if va or pool_type & POOL_QUOTA_FAIL_INSTEAD_OF_RAISE:
                return va
            raise self._quota_failure(NtStatus.STATUS_INSUFFICIENT_RESOURCES, NumberOfBytes)
        # (the quota fast path that zeroes, as ExAllocatePoolWithQuotaTag's with the zero bit:
        # a lookaside chunk zeroed through the address its pop has)
        allocate_charged_zeroed = self.pool.allocate_charged_zeroed
        va, status = allocate_charged_zeroed(pool_type & _PLAIN_QUOTA_TYPE_BITS, NumberOfBytes, Tag, process)
        if va or pool_type & POOL_QUOTA_FAIL_INSTEAD_OF_RAISE:
            return va
        raise self._quota_failure(status, NumberOfBytes)

    # --- ExAllocatePool2 / 3 -----------------------------------------------------------------

    @routine("PVOID ExAllocatePool2(_In_ POOL_FLAGS Flags, _In_ SIZE_T NumberOfBytes, "
             "_In_ ULONG Tag)")
    def ExAllocatePool2(self, Flags, NumberOfBytes, Tag) -> int:
        """POOL_FLAGS allocation: zeroed unless POOL_FLAG_UNINITIALIZED; NULL on failure (an
        unknown required flag, tag 0, no memory) unless POOL_FLAG_RAISE_ON_FAILURE."""
        # (the machine's function, ``_pool_routines``: a call through the class does the same)
        return self.__dict__["ExAllocatePool2"](Flags, NumberOfBytes, Tag)

    @routine("PVOID ExAllocatePool3(_In_ POOL_FLAGS Flags, _In_ SIZE_T NumberOfBytes, "
             "_In_ ULONG Tag, _In_opt_ PCPOOL_EXTENDED_PARAMETER ExtendedParameters, "
             "_In_ ULONG ExtendedParametersCount)")
    def ExAllocatePool3(self, Flags, NumberOfBytes, Tag, ExtendedParameters=None,
                        ExtendedParametersCount=0) -> int:
        """ExAllocatePool2 with POOL_EXTENDED_PARAMETERs (priority, NUMA node)."""
        return self.__dict__["ExAllocatePool3"](Flags, NumberOfBytes, Tag, ExtendedParameters,
                                                ExtendedParametersCount)

    @routine("VOID ExFreePool2(_In_ PVOID P, _In_ ULONG Tag, "
             "_In_opt_ PCPOOL_EXTENDED_PARAMETER ExtendedParameters, "
             "_In_ ULONG ExtendedParametersCount)")
    def ExFreePool2(self, P, Tag, ExtendedParameters=None, ExtendedParametersCount=0) -> None:
        """Free with the tag check of ExFreePoolWithTag (secure pool is not modelled)."""
        return self.__dict__["ExFreePool2"](P, Tag, ExtendedParameters, ExtendedParametersCount)

    def _allocate_pool3(self, Flags, NumberOfBytes, Tag, ExtendedParameters,
                        ExtendedParametersCount) -> int:
        """ExAllocatePool3 with extended parameters (or a count that is not the int 0)."""
        flags = _checked_flags(Flags)
        parameters = _checked_extended(ExtendedParameters, ExtendedParametersCount)
        try:
            priority = _pool3_priority(parameters)
        except _Pool2Failure as failure:
            return self._pool2_failed(flags, failure)
        # ExAllocatePool2's usual request, the priority asked first as
        # ExAllocatePoolWithTagPriority asks it.
        try:
            pool_type, zero = _POOL2_PLAIN[Flags]
            pool = self.pool
            if pool.known_tags[Tag][0]:
                if priority is None or not pool.refuses_for_priority(pool_type, NumberOfBytes, Tag, priority):
                    va = (pool.allocate_zeroed if zero else pool.allocate)(pool_type, NumberOfBytes, Tag)
                    if va:
                        return va
                return self._pool2_no_pool(Flags, NumberOfBytes)
        except (KeyError, TypeError):
            pass
        return self._allocate_pool2(Flags, NumberOfBytes, Tag, priority)

    def _allocate_pool2(self, Flags, NumberOfBytes, Tag, priority) -> int:
        flags = _checked_flags(Flags)
        try:
            pool_type = _pool2_type(flags, Tag)
        except _Pool2Failure as failure:
            return self._pool2_failed(flags, failure)
        zero = not flags & F.POOL_FLAG_UNINITIALIZED
        if flags & F.POOL_FLAG_USE_QUOTA:
            _POOL2_CHARGED[flags] = (pool_type, zero)  # ExAllocatePool2's next call skips this
            process = self.current_process
            if process is self.system_process:  # charged nothing (ProcessBilled 0)
                va, status = self.pool.allocate_with_quota(pool_type, NumberOfBytes, Tag, 0, zero=zero)
            else:
                # Charged to the process: the allocator's quota fast path, as
                # ExAllocatePoolWithQuotaTag takes it (zeroing unless POOL_FLAG_UNINITIALIZED);
                # a request it does not serve goes on to allocate_with_quota, every check made.
                # (Its call-site lookup walks out of ExAllocatePool2's frame to the driver's.)
                allocate_charged = self.pool.allocate_charged_zeroed if zero else self.pool.allocate_charged
                va, status = allocate_charged(pool_type, NumberOfBytes, Tag, process)
            return va or self._pool2_quota_refused(flags, status)
        _POOL2_PLAIN[flags] = (pool_type, zero)  # likewise, with no quota
        if priority is not None and priority & ~0xF != 32:
            va = self.pool.allocate_with_priority(pool_type, NumberOfBytes, Tag, priority)
        else:
            # The driver's frame is 3 up (allocate, this helper, ExAllocatePool2 or 3), one
            # more than ``allocate`` looks: the site lookup walks out of ExAllocatePool2's.
            va = self.pool.allocate(pool_type, NumberOfBytes, Tag)
        if va:
            return self._zeroed(va, NumberOfBytes) if zero else va
        return self._pool2_no_pool(flags, NumberOfBytes)

    @classmethod
    def _pool2_no_pool(cls, flags: int, number_of_bytes) -> int:
        """An ExAllocatePool2/3 request the pool could not serve: NULL, or raised."""
        return cls._pool2_failed(flags, _Pool2Failure(NtStatus.STATUS_INSUFFICIENT_RESOURCES,
                                                      f"no pool for {number_of_bytes} bytes"))

    @classmethod
    def _pool2_quota_refused(cls, flags: int, status: int) -> int:
        """A POOL_FLAG_USE_QUOTA request refused (over quota, or no pool): NULL, or raised."""
        return cls._pool2_failed(flags, _Pool2Failure(status, "quota allocation failed"))

    @staticmethod
    def _pool2_failed(flags: int, failure: _Pool2Failure) -> int:
        if flags & F.POOL_FLAG_RAISE_ON_FAILURE:
            raise NtStatusError(failure.status, str(failure))
        return 0


# POOL_FLAGS values already translated, whose request needs no quota -> (POOL_TYPE, zero).
# Only valid values get here (an invalid one fails in _pool2_type first; 0 names no pool
# kind, 1 is POOL_FLAG_USE_QUOTA); a pure function of the value, so one table serves every
# machine.
_POOL2_PLAIN: dict[int, tuple[int, bool]] = {}
# The same for values with POOL_FLAG_USE_QUOTA, whose request is charged to the current
# process (unless it is the System process).
_POOL2_CHARGED: dict[int, tuple[int, bool]] = {}


def _pool2_type(flags: int, tag) -> int:
    """The POOL_TYPE a POOL_FLAGS value asks for; _Pool2Failure for a request that fails."""
    invalid = NtStatus.STATUS_INVALID_PARAMETER
    unknown = flags & POOL_FLAG_REQUIRED_MASK & ~KNOWN_REQUIRED_FLAGS
    if unknown:
        raise _Pool2Failure(invalid, f"unknown required POOL_FLAGS {unknown:#x}")
    pool_type = POOL_KIND_FLAGS.get(flags & POOL_KIND_MASK)
    if pool_type is None:
        raise _Pool2Failure(invalid, "exactly one of POOL_FLAG_NON_PAGED, "
                                     "POOL_FLAG_NON_PAGED_EXECUTE, POOL_FLAG_PAGED is required")
    if tag == 0 or (tag_value(tag) == 0 if type(tag) is not str else tag and not tag.strip("\0")):
        raise _Pool2Failure(invalid, "pool tag 0")
    if flags & F.POOL_FLAG_CACHE_ALIGNED:
        pool_type |= CACHE_ALIGNED_POOL_TYPE_MASK
    if flags & F.POOL_FLAG_SESSION:
        pool_type |= SESSION_POOL_MASK
    # Optional flags (the high half, e.g. POOL_FLAG_SPECIAL_POOL) are ignored, as documented
    # for optional flags a system does not know.
    return pool_type


def _checked_extended(parameters, count) -> tuple:
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"ExtendedParametersCount must be a non-negative int, got {count!r}")
    if parameters is None:
        if count:
            raise ValueError("ExtendedParametersCount is non-zero but ExtendedParameters is None")
        return ()
    if isinstance(parameters, POOL_EXTENDED_PARAMETER):
        parameters = (parameters,)
    parameters = tuple(parameters)
    if count > len(parameters):
        raise ValueError(f"ExtendedParametersCount {count} exceeds the {len(parameters)} "
                         f"ExtendedParameters given")
    for parameter in parameters[:count]:
        if not isinstance(parameter, POOL_EXTENDED_PARAMETER):
            raise TypeError(f"ExtendedParameters must hold POOL_EXTENDED_PARAMETER values, "
                            f"not {type(parameter).__name__}")
    return parameters[:count]


def _pool3_priority(parameters: tuple) -> int | None:
    """The priority the parameters ask for; _Pool2Failure for an unsupported required one."""
    invalid = NtStatus.STATUS_INVALID_PARAMETER
    priority = None
    seen = set()
    for parameter in parameters:
        kind = parameter.Type
        if kind in seen:
            raise _Pool2Failure(invalid, f"extended parameter type {kind} given twice")
        seen.add(kind)
        if kind == PEP.PoolExtendedParameterPriority:
            priority = checked_priority(parameter.Priority)
        elif kind == PEP.PoolExtendedParameterNumaNode:
            node = parameter.PreferredNode
            if node not in (0, MM_ANY_NODE_OK) and not parameter.Optional:
                raise _Pool2Failure(invalid, f"NUMA node {node!r}: the machine has node 0 only")
        elif not parameter.Optional:
            raise _Pool2Failure(invalid, f"extended parameter type {kind!r} is not supported "
                                         f"(secure pool is not modelled)")
    return priority


def _check_free_parameters(parameters, count) -> None:
    """ExFreePool2's extended parameters, when given: each is an error (only secure-pool
    parameters are defined for it, and ntpool models no secure pool)."""
    if _checked_extended(parameters, count):
        raise ValueError("ExtendedParameters: ExFreePool2 takes only secure-pool "
                         "parameters, and ntpool models no secure pool")


def _pool_routines(kernel) -> dict:
    """ExAllocatePool2, ExAllocatePool3, ExFreePool2 and ExAllocatePoolWithTagPriority, as
    functions of ``kernel``'s (by name).

    What they hold does not change in a machine's life: the allocator's fast paths (the
    allocator changes their tables in place when the IRQL, the Verifier or a layer
    changes), its tag table, the pool types its fast path serves right now and each pool's
    priority table (a pool's size is fixed). Each makes its usual call itself, the fast path
    called from the function the driver called, whose caller is the frame the fast path
    looks at for the call site; anything else goes to the machine's methods, which check
    everything (and whose calls of the fast path walk out of ntpool's frames to the
    driver's)."""
    allocator = kernel.pool
    allocate, allocate_zeroed, free = allocator.allocate, allocator.allocate_zeroed, allocator.free
    known_tags = allocator.known_tags
    allocate_charged, allocate_charged_zeroed = allocator.allocate_charged, allocator.allocate_charged_zeroed
    fast_pools = allocator.fast_pools
    priority_tables = allocator.most_pages_for_priority  # by pool name, made when first asked for
    refuses_for_priority = allocator.refuses_for_priority

    def ExAllocatePool2(Flags, NumberOfBytes, Tag):
        # The usual call: a Flags value already translated (_POOL2_PLAIN: no quota) and a
        # tag the allocator has already validated, whose ULONG is not 0; anything else takes
        # _allocate_pool2. (A bool never matches: False and True are 0 and 1, never plain
        # values.)
        try:
            pool_type, zero = _POOL2_PLAIN[Flags]
            if known_tags[Tag][0]:
                # (allocate_zeroed zeroes a lookaside chunk through the address it popped)
                va = (allocate_zeroed if zero else allocate)(pool_type, NumberOfBytes, Tag)
                return va or kernel._pool2_no_pool(Flags, NumberOfBytes)
        except (KeyError, TypeError):
            pass
        # A request charged to the current process (POOL_FLAG_USE_QUOTA, _POOL2_CHARGED),
        # outside the System process: the allocator's quota fast path, called from here as
        # ExAllocatePoolWithQuotaTag calls it (the driver's frame is its caller's).
        process = kernel.current_process
        if process is not kernel.system_process:
            try:
                pool_type, zero = _POOL2_CHARGED[Flags]
                if known_tags[Tag][0]:
                    va, status = (allocate_charged_zeroed if zero else allocate_charged)(
                        pool_type, NumberOfBytes, Tag, process)
                    return va or kernel._pool2_quota_refused(int(Flags), status)
            except (KeyError, TypeError):
                pass
        return kernel._allocate_pool2(Flags, NumberOfBytes, Tag, None)

    def ExAllocatePool3(Flags, NumberOfBytes, Tag, ExtendedParameters=None, ExtendedParametersCount=0):
        if ExtendedParametersCount is _NO_PARAMETERS and ExtendedParameters is None:
            # No parameters: ExAllocatePool2's request, its usual call made here as
            # ExAllocatePool2 makes it (a deliberate copy: calling ExAllocatePool2 would cost
            # a call and, its frame being ntpool's, the site lookup's walk out of it).
            try:
                pool_type, zero = _POOL2_PLAIN[Flags]
                if known_tags[Tag][0]:
                    va = (allocate_zeroed if zero else allocate)(pool_type, NumberOfBytes, Tag)
                    return va or kernel._pool2_no_pool(Flags, NumberOfBytes)
            except (KeyError, TypeError):
                pass
            return kernel._allocate_pool2(Flags, NumberOfBytes, Tag, None)
        return kernel._allocate_pool3(Flags, NumberOfBytes, Tag, ExtendedParameters,
                                      ExtendedParametersCount)

    def ExFreePool2(P, Tag, ExtendedParameters=None, ExtendedParametersCount=0):
        if ExtendedParametersCount is not _NO_PARAMETERS or ExtendedParameters is not None:
            _check_free_parameters(ExtendedParameters, ExtendedParametersCount)
        free(P, Tag)

    def ExAllocatePoolWithTagPriority(PoolType, NumberOfBytes, Tag, Priority):
        # refuses_for_priority's usual case made here (a call less; the same test): a pool
        # type the fast path serves at this IRQL (no must-succeed type among them), a size
        # the lookasides serve (no pages counted), an EX_POOL_PRIORITY (an int: the table
        # holds only valid ones, and the type test keeps a bool or a float from matching
        # one) whose share of the pool's pages is not all in use. Then the fast path, called
        # from here, where the driver's frame is the one it looks at.
        if type(NumberOfBytes) is int and type(Priority) is int and 0 < NumberOfBytes <= LOOKASIDE_MAX_BYTES:
            try:
                pool = fast_pools[PoolType]
                tried = pool.pages_in_use <= priority_tables[pool.name][Priority]
            except (KeyError, TypeError):  # (refuses_for_priority makes a table not made yet)
                tried = False
            if tried:
                return allocate(PoolType, NumberOfBytes, Tag)
        if refuses_for_priority(PoolType, NumberOfBytes, Tag, Priority):
            return 0
        return allocate(PoolType, NumberOfBytes, Tag)

    return {function.__name__: function for function in (
        ExAllocatePool2, ExAllocatePool3, ExFreePool2, ExAllocatePoolWithTagPriority)}
