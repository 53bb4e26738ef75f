"""The Ex variants: priorities, quota, ExAllocatePool2/3, the POOL_TYPE modifiers (issue 3, part 3)."""

import pytest

import ntpool
from ntpool.constants import (
    POOL_QUOTA_FAIL_INSTEAD_OF_RAISE,
    POOL_RAISE_IF_ALLOCATION_FAILURE,
    POOL_ZERO_ALLOCATION,
    PoolExtendedParameterType,
)
from ntpool.routines.ex import POOL_EXTENDED_PARAMETER
from ntpool.pool.layout import POOL_HEADER, page_problems
from ntpool.machine.process import EPROCESS_IMAGE_FILE_NAME, EPROCESS_UNIQUE_PROCESS_ID
from ntpool.tags import tag_value

NP = ntpool.PoolType.NonPagedPool
PP = ntpool.PoolType.PagedPool
F = ntpool.PoolFlags
LOW, NORMAL, HIGH = 0, 16, 32
MiB = 1 << 20
INSUFFICIENT = 0xC000009A
QUOTA_EXCEEDED = 0xC0000044


def bugcheck(call):
    with pytest.raises(ntpool.BugCheck) as info:
        call()
    return info.value


def dirty(k, pool_type, size, tag="Dirt"):
    """Leave non-zero bytes where the next allocation of this size will land."""
    p = k.ExAllocatePoolWithTag(pool_type, size, tag)
    k.RtlFillMemory(p, size, 0xAB)
    k.ExFreePoolWithTag(p, tag)
    return p


def header(k, p):
    h = POOL_HEADER.unpack_from(k.read(p - 16, 16))
    return {"blocks": h.BlockSize, "type": h.PoolType, "tag": h.PoolTag, "billed": h.ProcessBilled}


def fill_to(k, pool, share):
    """Allocate big blocks until ``share`` of the pool's pages are in use."""
    held = []
    while pool.pages_in_use < share * pool.page_count:
        held.append(k.ExAllocatePoolWithTag(pool.base_type, 4096, "Fill"))
    return held


# --- default tags and the plain modifiers ---------------------------------------------------

def test_ex_allocate_pool_with_quota_uses_none(k):
    p = k.ExAllocatePoolWithQuota(PP, 10)
    assert k.read(p - 12, 4) == b"None"


def test_pool_zero_allocation_zeroes(k):
    p = dirty(k, NP, 200)
    q = k.ExAllocatePoolWithTag(NP | POOL_ZERO_ALLOCATION, 200, "Dirt")
    assert q == p and k.read(q, 200) == bytes(200)


def test_without_zero_memory_is_uninitialized(k):
    p = dirty(k, NP, 200)
    assert k.ExAllocatePoolWithTag(NP, 200, "Dirt") == p
    assert k.read(p + 8, 192) == b"\xab" * 192  # the first 8 held the lookaside link


def test_ex_allocate_pool_zero_big(k):
    p = dirty(k, PP, 9000)
    q = k.ExAllocatePoolZero(PP, 9000, "Dirt")
    assert q == p and k.read(q, 9000) == bytes(9000)


def test_ex_allocate_pool_uninitialized_is_the_plain_routine(k):
    p = dirty(k, NP, 64)
    assert k.ExAllocatePoolUninitialized(NP, 64, "Dirt") == p
    assert k.read(p + 8, 56) == b"\xab" * 56


def test_raise_if_allocation_failure_raises_on_exhaustion(k):
    with pytest.raises(ntpool.NtStatusError) as info:
        k.ExAllocatePoolWithTag(NP | POOL_RAISE_IF_ALLOCATION_FAILURE, 64 * MiB, "Huge")
    assert info.value.status == INSUFFICIENT
    assert not k.halted
    assert k.ExAllocatePoolWithTag(NP | POOL_RAISE_IF_ALLOCATION_FAILURE, 100, "Fine")


def test_raise_if_allocation_failure_is_caught_by_except_exception(k):
    try:
        k.ExAllocatePoolWithTag(NP | POOL_RAISE_IF_ALLOCATION_FAILURE, 64 * MiB, "Huge")
    except Exception as error:  # a driver's __except
        caught = error
    assert isinstance(caught, ntpool.NtStatusError)


@pytest.mark.parametrize("pool_type", [ntpool.PoolType.NonPagedPoolNx,
                                       ntpool.PoolType.NonPagedPoolSessionNx,
                                       NP | ntpool.constants.POOL_NX_ALLOCATION])
def test_nx_types_are_nonpaged(k, pool_type):
    p = k.ExAllocatePoolWithTag(pool_type, 100, "NxNx")
    assert k.nonpaged_pool.contains(p)
    # A session type's chunk keeps the session bit 0x20 in its header (Windows 7 stores it).
    assert header(k, p)["type"] == 0x2 | (0x20 if pool_type & 0x20 else 0)
    k.ExFreePoolWithTag(p, "NxNx")


def test_nx_type_at_dispatch_is_allowed(k):
    k.KeRaiseIrql(2)
    p = k.ExAllocatePoolWithTag(ntpool.PoolType.NonPagedPoolNx, 100, "NxNx")
    k.ExFreePoolWithTag(p, "NxNx")
    assert not k.halted


@pytest.mark.parametrize("pool_type", [ntpool.PoolType.NonPagedPoolCacheAligned,
                                       ntpool.PoolType.PagedPoolCacheAligned,
                                       ntpool.PoolType.NonPagedPoolNxCacheAligned,
                                       ntpool.PoolType.PagedPoolCacheAlignedSession])
def test_cache_aligned_types_are_64_byte_aligned_with_a_valid_chain(k, pool_type):
    pool = k.paged_pool if pool_type & 1 else k.nonpaged_pool
    live = []
    for size in list(range(1, 600, 37)) + [0xF00, 0xFE0, 5000]:
        k.ExAllocatePoolWithTag(pool_type & 1, 16, "Pad ")  # shift the next chunk's position
        p = k.ExAllocatePoolWithTag(pool_type, size, "Algn")
        assert p % 64 == 0, hex(p)
        live.append((p, size))
    for index, kind in enumerate(pool.page_kind):
        if kind == 1:
            va = pool.base + index * 4096
            assert page_problems(k.read(va, 4096), va) == []
    for p, size in live:
        k.write(p, b"\x11" * size)
        k.ExFreePoolWithTag(p, "Algn")
    assert not k.halted


def test_unknown_pool_type_bits_are_a_plain_error(k):
    with pytest.raises(ValueError, match="PoolType"):
        k.ExAllocatePoolWithTag(0x40, 10, "Fred")
    assert not k.halted


# --- ExAllocatePoolWithTagPriority -------------------------------------------------------------

def test_priorities_all_succeed_when_resources_are_plentiful(k):
    for priority in (LOW, NORMAL, HIGH, LOW + 8, NORMAL + 9):
        assert k.ExAllocatePoolWithTagPriority(NP, 100, "Prio", priority)


def test_low_fails_first_then_normal_then_high_only_when_exhausted(k):
    pool = k.nonpaged_pool
    fill_to(k, pool, 0.81)
    assert k.ExAllocatePoolWithTagPriority(NP, 100, "Prio", LOW) == 0
    assert k.ExAllocatePoolWithTagPriority(NP, 100, "Prio", NORMAL)
    fill_to(k, pool, 0.96)
    assert k.ExAllocatePoolWithTagPriority(NP, 100, "Prio", NORMAL) == 0
    assert k.ExAllocatePoolWithTagPriority(NP, 100, "Prio", HIGH)
    while k.ExAllocatePoolWithTag(NP, 4096, "Fill"):
        pass
    assert k.ExAllocatePoolWithTagPriority(NP, 8192, "Prio", HIGH) == 0


def test_a_low_priority_failure_does_not_stick(k):
    held = fill_to(k, k.nonpaged_pool, 0.81)
    assert k.ExAllocatePoolWithTagPriority(NP, 100, "Prio", LOW) == 0
    for p in held:
        k.ExFreePoolWithTag(p, "Fill")
    assert k.ExAllocatePoolWithTagPriority(NP, 100, "Prio", LOW)


def test_a_big_low_priority_request_counts_its_own_pages(k):
    pool = k.nonpaged_pool
    pages = int(0.8 * pool.page_count) - pool.pages_in_use
    assert k.ExAllocatePoolWithTagPriority(NP, (pages + 1) * 4096, "Prio", LOW) == 0
    assert k.ExAllocatePoolWithTagPriority(NP, pages * 4096, "Prio", LOW)


def test_low_priority_failure_still_bug_checks_caller_errors(k):
    fill_to(k, k.nonpaged_pool, 0.81)
    k.KeRaiseIrql(3)
    e = bugcheck(lambda: k.ExAllocatePoolWithTagPriority(NP, 100, "Prio", LOW))
    assert e.parameters[0] == 0x08


@pytest.mark.parametrize("priority, error", [(1, ValueError), (33, ValueError), (-16, ValueError),
                                             ("High", TypeError), (None, TypeError)])
def test_bad_priority_names_the_parameter(k, priority, error):
    with pytest.raises(error, match="Priority"):
        k.ExAllocatePoolWithTagPriority(NP, 100, "Prio", priority)
    assert not k.halted


# --- quota ------------------------------------------------------------------------------------

def test_quota_allocation_bills_the_process_in_the_header(k):
    app = k.create_process("app.exe", paged_quota=4096, nonpaged_quota=4096)
    k.set_current_process(app)
    p = k.ExAllocatePoolWithQuotaTag(PP, 100, "Quot")
    h = header(k, p)
    assert h["billed"] == app.address == k.PsGetCurrentProcess()
    assert h["type"] == 0x3 | 0x8  # paged, in use, quota
    assert app.paged_quota_used == 128 and app.nonpaged_quota_used == 0
    k.ExFreePoolWithTag(p, "Quot")
    assert app.paged_quota_used == 0


def test_eprocess_is_laid_out_in_kernel_memory(k):
    app = k.create_process("app.exe")
    assert int.from_bytes(k.read(app.address + EPROCESS_UNIQUE_PROCESS_ID, 8), "little") == app.pid
    assert k.read(app.address + EPROCESS_IMAGE_FILE_NAME, 8) == b"app.exe\0"


def test_quota_exceeded_raises_by_default(k):
    app = k.create_process("app.exe", nonpaged_quota=1000)
    k.set_current_process(app)
    k.ExAllocatePoolWithQuotaTag(NP, 900, "Quot")
    with pytest.raises(ntpool.NtStatusError) as info:
        k.ExAllocatePoolWithQuotaTag(NP, 200, "Quot")
    assert info.value.status == QUOTA_EXCEEDED
    assert app.nonpaged_quota_used == 928  # the failed request charged nothing


def test_quota_fail_instead_of_raise_returns_null(k):
    app = k.create_process("app.exe", nonpaged_quota=100)
    k.set_current_process(app)
    assert k.ExAllocatePoolWithQuotaTag(NP | POOL_QUOTA_FAIL_INSTEAD_OF_RAISE, 200, "Quot") == 0
    assert k.ExAllocatePoolWithQuotaTag(NP | POOL_QUOTA_FAIL_INSTEAD_OF_RAISE, 50, "Quot")


def test_quota_pool_exhaustion_raises_insufficient_resources(k):
    app = k.create_process("app.exe")
    k.set_current_process(app)
    with pytest.raises(ntpool.NtStatusError) as info:
        k.ExAllocatePoolWithQuotaTag(NP, 64 * MiB, "Quot")
    assert info.value.status == INSUFFICIENT
    assert app.nonpaged_quota_used == 0


def test_big_quota_allocations_are_charged_and_returned(k):
    app = k.create_process("app.exe")
    k.set_current_process(app)
    p = k.ExAllocatePoolWithQuotaTag(NP, 5000, "Quot")
    assert app.nonpaged_quota_used == 8192
    k.ExFreePool(p)
    assert app.nonpaged_quota_used == 0


def test_the_system_process_is_not_charged(k):
    assert k.current_process is k.system_process
    p = k.ExAllocatePoolWithQuotaTag(NP, 100, "Quot")
    # No quota bit, and bytes 8-15 hold no EPROCESS: 0 (the call site is kept beside them).
    assert header(k, p)["type"] == 0x2 and header(k, p)["billed"] == 0 and k.pool.site_of(p) != 0
    assert k.system_process.nonpaged_quota_used == 0


def test_quota_charge_returns_even_through_the_lookaside(k):
    app = k.create_process("app.exe")
    k.set_current_process(app)
    p = k.ExAllocatePoolWithQuotaTag(NP, 100, "Quot")
    k.ExFreePool(p)
    k.set_current_process(k.system_process)
    q = k.ExAllocatePoolWithTag(NP, 100, "Quot")  # the same chunk, from the lookaside
    assert q == p and header(k, q)["type"] == 0x2
    assert header(k, q)["billed"] == 0 and k.pool.site_of(q) != 0  # no stale ProcessBilled
    assert app.nonpaged_quota_used == 0


def test_quota_zero(k):
    app = k.create_process("app.exe")
    k.set_current_process(app)
    p = dirty(k, PP, 100)
    q = k.ExAllocatePoolQuotaZero(PP, 100, "Dirt")
    assert q == p and k.read(q, 100) == bytes(100)


@pytest.mark.parametrize("kwargs", [{"paged_quota": -1}, {"nonpaged_quota": "1k"}])
def test_create_process_misuse(k, kwargs):
    with pytest.raises(ValueError, match="quota"):
        k.create_process("bad.exe", **kwargs)


def test_set_current_process_misuse(k):
    with pytest.raises(ValueError, match="process"):
        k.set_current_process("app.exe")


# --- ExAllocatePool2 / ExAllocatePool3 / ExFreePool2 --------------------------------------------

def test_pool2_zeroes_by_default(k):
    p = dirty(k, PP, 300)
    q = k.ExAllocatePool2(F.POOL_FLAG_PAGED, 300, "Dirt")
    assert q == p and k.read(q, 300) == bytes(300)


def test_pool2_zeroes_on_every_call_of_a_known_flags_value(k):
    # The first call translates the flags; later ones take the cached translation and the
    # allocator's fast path, and must zero just the same.
    for _ in range(3):
        p = k.ExAllocatePoolWithTag(NP, 100, "Agan")
        k.RtlFillMemory(p, 112, 0xAB)  # the whole body the chunk holds
        k.ExFreePoolWithTag(p, "Agan")
        q = k.ExAllocatePool2(F.POOL_FLAG_NON_PAGED, 100, "Agan")
        assert q == p and k.read(q, 100) == bytes(100)
        assert k.read(q + 100, 12) == b"\xab" * 12  # only NumberOfBytes are zeroed
        k.ExFreePoolWithTag(q, "Agan")


def test_pool2_zeroing_publishes_the_write(k):
    k.ExAllocatePool2(F.POOL_FLAG_NON_PAGED, 100, "Pub ")  # flags and tag known
    written = []
    k.hooks.subscribe(ntpool.hooks.MemoryWritten, written.append)
    q = k.ExAllocatePool2(F.POOL_FLAG_NON_PAGED, 100, "Pub ")
    assert written == [ntpool.hooks.MemoryWritten(q, 100)]
    k.hooks.unsubscribe(ntpool.hooks.MemoryWritten, written.append)
    k.ExAllocatePool2(F.POOL_FLAG_NON_PAGED, 100, "Pub ")
    assert len(written) == 1


def test_pool2_known_flags_still_refuse_tag_zero_and_bad_arguments(k):
    assert k.ExAllocatePool2(F.POOL_FLAG_NON_PAGED, 100, "Okay")
    assert k.ExAllocatePool2(F.POOL_FLAG_NON_PAGED, 100, 0) == 0
    assert k.ExAllocatePool2(F.POOL_FLAG_NON_PAGED, 100, "\0\0") == 0
    with pytest.raises(TypeError, match="Flags"):
        k.ExAllocatePool2(True, 100, "Okay")
    assert not k.halted


def test_pool2_uninitialized_leaves_memory(k):
    p = dirty(k, ntpool.PoolType.NonPagedPoolNx, 300)
    q = k.ExAllocatePool2(F.POOL_FLAG_NON_PAGED | F.POOL_FLAG_UNINITIALIZED, 300, "Dirt")
    assert q == p and k.read(q + 8, 292) == b"\xab" * 292


@pytest.mark.parametrize("flag, paged", [(F.POOL_FLAG_NON_PAGED, False),
                                         (F.POOL_FLAG_NON_PAGED_EXECUTE, False),
                                         (F.POOL_FLAG_PAGED, True)])
def test_pool2_pool_kind(k, flag, paged):
    p = k.ExAllocatePool2(flag, 100, "Kind")
    assert (k.paged_pool if paged else k.nonpaged_pool).contains(p)


def test_pool2_unknown_required_flag_fails(k):
    assert k.ExAllocatePool2(F.POOL_FLAG_PAGED | 0x1000, 100, "Flag") == 0
    with pytest.raises(ntpool.NtStatusError):
        k.ExAllocatePool2(F.POOL_FLAG_PAGED | F.POOL_FLAG_RAISE_ON_FAILURE | 0x1000, 100, "Flag")


def test_pool2_unknown_optional_flag_is_ignored(k):
    assert k.ExAllocatePool2(F.POOL_FLAG_PAGED | (1 << 40), 100, "Flag")
    assert k.ExAllocatePool2(F.POOL_FLAG_PAGED | F.POOL_FLAG_SPECIAL_POOL, 100, "Flag")


@pytest.mark.parametrize("flags", [0, F.POOL_FLAG_PAGED | F.POOL_FLAG_NON_PAGED])
def test_pool2_needs_exactly_one_pool_kind(k, flags):
    assert k.ExAllocatePool2(flags, 100, "Flag") == 0


def test_pool2_tag_zero_returns_null_not_a_bug_check(k):
    assert k.ExAllocatePool2(F.POOL_FLAG_PAGED, 100, 0) == 0
    assert k.ExAllocatePool2(F.POOL_FLAG_PAGED, 100, "\0") == 0
    assert not k.halted


def test_pool2_exhaustion_null_or_raise(k):
    assert k.ExAllocatePool2(F.POOL_FLAG_NON_PAGED, 64 * MiB, "Huge") == 0
    with pytest.raises(ntpool.NtStatusError) as info:
        k.ExAllocatePool2(F.POOL_FLAG_NON_PAGED | F.POOL_FLAG_RAISE_ON_FAILURE, 64 * MiB, "Huge")
    assert info.value.status == INSUFFICIENT


def test_pool2_cache_aligned(k):
    for size in (1, 100, 1000):
        k.ExAllocatePool2(F.POOL_FLAG_NON_PAGED, 16, "Pad ")
        assert k.ExAllocatePool2(F.POOL_FLAG_NON_PAGED | F.POOL_FLAG_CACHE_ALIGNED, size, "Algn") % 64 == 0


def test_pool2_use_quota(k):
    app = k.create_process("app.exe", paged_quota=200)
    k.set_current_process(app)
    p = k.ExAllocatePool2(F.POOL_FLAG_PAGED | F.POOL_FLAG_USE_QUOTA, 100, "Quot")
    assert header(k, p)["billed"] == app.address and app.paged_quota_used == 128
    assert k.ExAllocatePool2(F.POOL_FLAG_PAGED | F.POOL_FLAG_USE_QUOTA, 100, "Quot") == 0
    with pytest.raises(ntpool.NtStatusError) as info:
        k.ExAllocatePool2(F.POOL_FLAG_PAGED | F.POOL_FLAG_USE_QUOTA | F.POOL_FLAG_RAISE_ON_FAILURE,
                          100, "Quot")
    assert info.value.status == QUOTA_EXCEEDED


def test_pool2_paged_at_dispatch_bug_checks(k):
    k.KeRaiseIrql(2)
    e = bugcheck(lambda: k.ExAllocatePool2(F.POOL_FLAG_PAGED, 100, "Disp"))
    assert e.parameters[:2] == (0x08, 2)


@pytest.mark.parametrize("flags, error", [("paged", TypeError), (-1, ValueError), (1 << 64, ValueError)])
def test_pool2_bad_flags_argument(k, flags, error):
    with pytest.raises(error, match="Flags"):
        k.ExAllocatePool2(flags, 100, "Flag")


def test_pool3_priority_parameter(k):
    fill_to(k, k.nonpaged_pool, 0.81)
    low = POOL_EXTENDED_PARAMETER(PoolExtendedParameterType.PoolExtendedParameterPriority,
                                  Priority=LOW)
    high = low._replace(Priority=HIGH)
    assert k.ExAllocatePool3(F.POOL_FLAG_NON_PAGED, 100, "Pri3", [low], 1) == 0
    assert k.ExAllocatePool3(F.POOL_FLAG_NON_PAGED, 100, "Pri3", [high], 1)
    assert k.ExAllocatePool3(F.POOL_FLAG_NON_PAGED, 100, "Pri3")  # no parameters: as Pool2
    # Now the flags and the tag are known (the usual call's way): the same answers, and with
    # POOL_FLAG_RAISE_ON_FAILURE a refusal raises.
    assert k.ExAllocatePool3(F.POOL_FLAG_NON_PAGED, 100, "Pri3", [low], 1) == 0
    assert k.read(k.ExAllocatePool3(F.POOL_FLAG_NON_PAGED, 100, "Pri3", (high,), 1), 100) == bytes(100)
    with pytest.raises(ntpool.NtStatusError) as info:
        k.ExAllocatePool3(F.POOL_FLAG_NON_PAGED | F.POOL_FLAG_RAISE_ON_FAILURE, 100, "Pri3", [low], 1)
    assert info.value.status == INSUFFICIENT
    assert k.ExAllocatePool3(F.POOL_FLAG_NON_PAGED | F.POOL_FLAG_RAISE_ON_FAILURE, 100, "Pri3", [high], 1)


def test_pool3_numa_and_secure_pool_parameters(k):
    numa = POOL_EXTENDED_PARAMETER(PoolExtendedParameterType.PoolExtendedParameterNumaNode,
                                   PreferredNode=0)
    assert k.ExAllocatePool3(F.POOL_FLAG_PAGED, 10, "Numa", [numa], 1)
    assert k.ExAllocatePool3(F.POOL_FLAG_PAGED, 10, "Numa", [numa._replace(PreferredNode=3)], 1) == 0
    secure = POOL_EXTENDED_PARAMETER(PoolExtendedParameterType.PoolExtendedParameterSecurePool)
    assert k.ExAllocatePool3(F.POOL_FLAG_PAGED, 10, "Secu", [secure], 1) == 0
    assert k.ExAllocatePool3(F.POOL_FLAG_PAGED, 10, "Secu", [secure._replace(Optional=True)], 1)


def test_pool3_parameter_misuse(k):
    with pytest.raises(ValueError, match="ExtendedParametersCount"):
        k.ExAllocatePool3(F.POOL_FLAG_PAGED, 10, "Bad ", [], 2)
    with pytest.raises(TypeError, match="ExtendedParameters"):
        k.ExAllocatePool3(F.POOL_FLAG_PAGED, 10, "Bad ", [{"Type": 1}], 1)
    bad = POOL_EXTENDED_PARAMETER(PoolExtendedParameterType.PoolExtendedParameterPriority,
                                  Priority=7)
    with pytest.raises(ValueError, match="Priority"):
        k.ExAllocatePool3(F.POOL_FLAG_PAGED, 10, "Bad ", [bad], 1)
    assert not k.halted


def test_free_pool2_checks_the_tag(k):
    p = k.ExAllocatePool2(F.POOL_FLAG_PAGED, 100, tag_value("Fre2") | ntpool.PROTECTED_POOL)
    e = bugcheck(lambda: k.ExFreePool2(p, "Othr"))
    assert e.parameters == (0x0A, p, tag_value("Fre2"), tag_value("Othr"))


def test_free_pool2_frees(k):
    p = k.ExAllocatePool2(F.POOL_FLAG_PAGED, 100, "Fre2")
    k.ExFreePool2(p, "Fre2")
    assert [r for r in k.pool_tags() if r.Tag == "2erF"][0].PagedUsed == 0
    with pytest.raises(ValueError, match="ExtendedParameters"):
        k.ExFreePool2(p, "Fre2", [POOL_EXTENDED_PARAMETER(2)], 1)


# --- the routines built on the fast path (issue 18): the same answers by the shorter way ----

@pytest.mark.parametrize("windows", ["7", "11"])
def test_priority_refusal_agrees_with_resources_available_at_every_fill(windows):
    """``refuses_for_priority``'s usual case (a table of the most pages each priority may
    find in use) answers as ``resources_available`` does, page by page up to a full pool."""
    k = ntpool.Kernel(nonpaged_pool_bytes=4 * MiB, paged_pool_bytes=4 * MiB, windows=windows)
    allocator, pool = k.pool, k.nonpaged_pool
    priorities = sorted(int(p) for p in ntpool.PoolPriority)
    seen = set()
    while True:
        for priority in priorities:
            refused = allocator.refuses_for_priority(NP, 100, "Prio", priority)
            assert refused == (not allocator.resources_available(pool, 100, priority)), \
                (pool.pages_in_use, priority)
            seen.add((priority, refused))
        if not k.ExAllocatePoolWithTag(NP, 4096, "Fill"):
            break
    # Low was both tried and refused on the way, and Normal too on Windows 7 (the segment
    # heap runs out of room for 4 KiB requests before 95% of its pages are in use); High
    # never refused.
    assert {(LOW, False), (LOW, True), (NORMAL, False), (HIGH, False)} <= seen
    assert (NORMAL, True) in seen or windows != "7"
    assert (HIGH, True) not in seen


class Caller:
    """Allocations made from known lines, to compare the sites the routines record."""

    name = "caller.sys"

    def DriverEntry(self, k, path):
        return 0

    def each(self, k):
        return {"ex": k.ExAllocatePoolWithTag(NP, 100, "Site"),
                "priority": k.ExAllocatePoolWithTagPriority(NP, 100, "Site", NORMAL),
                "zero": k.ExAllocatePoolZero(NP, 100, "Site"),
                "quota": k.ExAllocatePoolWithQuotaTag(NP, 100, "Site"),
                "fsrtl quota": k.FsRtlAllocatePoolWithQuotaTag(NP, 100, "Site"),
                "ndis": k.NdisAllocateMemory(100, 0, -1)[1]}

    def charged(self, k):
        return {"charged quota": k.ExAllocatePoolWithQuotaTag(NP, 100, "Site"),
                "charged fsrtl quota": k.FsRtlAllocatePoolWithQuotaTag(NP, 100, "Site")}


def test_the_routines_on_the_fast_path_record_the_drivers_own_line(k):
    """ExAllocatePoolWithTagPriority, ExAllocatePoolZero, the System process's quota
    requests and NdisAllocateMemory reach the fast path from the routine, and a charged
    quota request finds its site from the routine: each chunk's site is the driver's line
    that called the routine (one line per call here: eight sites)."""
    driver = Caller()
    k.load_driver(driver)
    held = driver.each(k)
    k.set_current_process(k.create_process("app.exe"))
    held.update(driver.charged(k))  # (a charged request finds its site once, from the routine)
    described = {name: k.call_sites.describe(k.pool.site_of(p)) for name, p in held.items()}
    assert all("caller.sys" in text for text in described.values()), described
    assert len(set(described.values())) == len(held), described


def test_the_system_process_quota_failure_names_the_quota_routine(k):
    with pytest.raises(ntpool.NtStatusError, match="ExAllocatePoolWithQuotaTag") as info:
        k.ExAllocatePoolWithQuotaTag(NP, 64 * MiB, "Quot")
    assert info.value.status == INSUFFICIENT
    with pytest.raises(ntpool.NtStatusError, match="FsRtlAllocatePoolWithQuotaTag") as info:
        k.FsRtlAllocatePoolWithQuotaTag(NP | POOL_RAISE_IF_ALLOCATION_FAILURE, 64 * MiB, "Quot")
    assert info.value.status == INSUFFICIENT
    assert k.ExAllocatePoolWithQuotaTag(NP | POOL_QUOTA_FAIL_INSTEAD_OF_RAISE, 64 * MiB, "Quot") == 0


def test_ex_allocate_pool_zero_small_from_the_lookaside(k):
    p = dirty(k, NP, 100)
    q = k.ExAllocatePoolZero(NP, 100, "Dirt")
    assert q == p and k.read(q, 100) == bytes(100)
    assert header(k, q)["tag"] == tag_value("Dirt")


# --- routines built on another: their usual call made inline -----------------------------

def test_routines_built_on_another_answer_as_the_routine_they_are_built_on(k):
    # The System process's usual call of each, made by the routine itself, gives what the
    # routine it is built on gives: the default tag, zeroing, no quota charged.
    assert k.current_process is k.system_process
    p = k.ExAllocatePoolWithQuota(NP, 10)
    assert k.read(p - 12, 4) == b"None" and header(k, p)["billed"] == 0
    q = dirty(k, NP, 100)
    assert k.ExAllocatePoolQuotaZero(NP, 100, "Dirt") == q and k.read(q, 100) == bytes(100)
    assert header(k, q)["type"] == 0x2 and header(k, q)["billed"] == 0
    r = k.FsRtlAllocatePoolWithQuota(NP, 10)
    assert k.read(r - 12, 4) == b"FSrt" and header(k, r)["billed"] == 0
    s = dirty(k, NP, 100, "Poo3")
    assert k.ExAllocatePool3(F.POOL_FLAG_NON_PAGED, 100, "Poo3") == s and k.read(s, 100) == bytes(100)
    assert k.ExAllocatePool3(F.POOL_FLAG_NON_PAGED | F.POOL_FLAG_UNINITIALIZED, 100, "Poo3")
    assert k.system_process.nonpaged_quota_used == 0
    for address, tag in ((p, "None"), (q, "Dirt"), (r, "FSrt"), (s, "Poo3")):
        k.ExFreePool2(address, tag)
    assert k.ExAllocatePoolWithTag(NP, 100, "Next") == s  # the last freed, off the lookaside
    assert not k.halted


def test_routines_built_on_another_fail_as_the_routine_they_are_built_on(k):
    for allocate in (lambda t: k.ExAllocatePoolWithQuota(NP | t, 64 * MiB),
                     lambda t: k.ExAllocatePoolQuotaZero(NP | t, 64 * MiB, "Quot")):
        with pytest.raises(ntpool.NtStatusError, match="ExAllocatePoolWithQuotaTag") as info:
            allocate(0)
        assert info.value.status == INSUFFICIENT
        assert allocate(POOL_QUOTA_FAIL_INSTEAD_OF_RAISE) == 0
    with pytest.raises(ntpool.NtStatusError, match="FsRtlAllocatePoolWithQuotaTag") as info:
        k.FsRtlAllocatePoolWithQuota(NP, 64 * MiB)
    assert info.value.status == INSUFFICIENT
    with pytest.raises(ntpool.NtStatusError) as info:
        k.FsRtlAllocatePool(NP, 64 * MiB)
    assert info.value.status == INSUFFICIENT
    assert k.ExAllocatePool3(F.POOL_FLAG_NON_PAGED, 64 * MiB, "Huge") == 0
    with pytest.raises(ntpool.NtStatusError) as info:
        k.ExAllocatePool3(F.POOL_FLAG_NON_PAGED | F.POOL_FLAG_RAISE_ON_FAILURE, 64 * MiB, "Huge")
    assert info.value.status == INSUFFICIENT
    assert k.ExAllocatePool3(F.POOL_FLAG_NON_PAGED, 100, 0) == 0  # tag 0: NULL, as Pool2
    assert not k.halted


@pytest.mark.parametrize("call", [
    lambda k, p: k.ExFreePool2(p, "Free", None, True),
    lambda k, p: k.ExFreePool2(p, "Free", None, -1),
    lambda k, p: k.ExFreePool2(p, "Free", [], 1),
])
def test_ex_free_pool2_still_checks_its_parameters(k, call):
    p = k.ExAllocatePool2(F.POOL_FLAG_NON_PAGED, 100, "Free")
    with pytest.raises((ValueError, TypeError)):
        call(k, p)
    other = k.ExAllocatePool2(F.POOL_FLAG_NON_PAGED, 100, "Free")
    assert other != p  # p was not freed
    k.ExFreePool2(p, "Free", [], 0)  # an empty array is no parameter
    assert k.ExAllocatePool2(F.POOL_FLAG_NON_PAGED, 100, "Free") == p


def test_charged_requests_of_lookaside_sizes_are_zeroed_billed_and_refused_over_quota(k):
    app = k.create_process("app.exe", nonpaged_quota=300)
    k.set_current_process(app)
    p = dirty(k, NP, 100, "Quot")
    q = k.ExAllocatePool2(F.POOL_FLAG_NON_PAGED | F.POOL_FLAG_USE_QUOTA, 100, "Quot")
    assert q == p and k.read(q, 100) == bytes(100)
    assert header(k, q)["type"] == 0xA and header(k, q)["billed"] == app.address
    assert app.nonpaged_quota_used == 128
    r = k.ExAllocatePoolQuotaZero(NP, 100, "Quot")
    assert k.read(r, 100) == bytes(100) and app.nonpaged_quota_used == 256
    assert k.ExAllocatePoolWithQuotaTag(NP | POOL_QUOTA_FAIL_INSTEAD_OF_RAISE, 100, "Quot") == 0
    assert app.nonpaged_quota_used == 256  # the refused charge was not kept
    k.ExFreePoolWithTag(q, "Quot")
    k.ExFreePool(r)
    assert app.nonpaged_quota_used == 0
