"""Every sentence of the FsRtlAllocatePoolWithTag document, true of ntpool (issue 3, part 2)."""

import pytest

import ntpool
from ntpool.pool.layout import page_problems

PT = ntpool.PoolType
MiB = 1 << 20
INSUFFICIENT = 0xC000009A
RAISE = ntpool.constants.POOL_RAISE_IF_ALLOCATION_FAILURE


def bugcheck(call):
    with pytest.raises(ntpool.BugCheck) as info:
        call()
    return info.value


@pytest.mark.parametrize("pool_type, paged", [(PT.NonPagedPool, False), (PT.PagedPool, True),
                                              (PT.NonPagedPoolCacheAligned, False),
                                              (PT.PagedPoolCacheAligned, True)])
def test_the_four_documented_types(k, pool_type, paged):
    p = k.FsRtlAllocatePoolWithTag(pool_type, 100, "Fred")
    assert (k.paged_pool if paged else k.nonpaged_pool).contains(p)
    k.write(p, b"x" * 100)
    k.ExFreePoolWithTag(p, "Fred")


@pytest.mark.parametrize("pool_type", [PT.NonPagedPoolCacheAligned, PT.PagedPoolCacheAligned])
def test_cache_aligned_types_return_cache_line_aligned_memory(k, pool_type):
    pool = k.paged_pool if pool_type & 1 else k.nonpaged_pool
    for size in (1, 17, 100, 250, 1000, 4000, 9000):
        k.FsRtlAllocatePoolWithTag(pool_type & 1, 16, "Pad ")
        assert k.FsRtlAllocatePoolWithTag(pool_type, size, "Algn") % 64 == 0
    for index, kind in enumerate(pool.page_kind):
        if kind == 1:
            va = pool.base + index * 4096
            assert page_problems(k.read(va, 4096), va) == []


@pytest.mark.parametrize("pool_type", [PT.NonPagedPoolMustSucceed, PT.NonPagedPoolCacheAlignedMustS])
def test_must_succeed_types_are_served_as_the_executive_serves_them(k, pool_type):
    p = k.FsRtlAllocatePoolWithTag(pool_type, 100, "Fred")
    assert p and k.nonpaged_pool.contains(p) and not k.halted


@pytest.mark.parametrize("pool_type, paged", [(PT.NonPagedPoolNx, False), (PT.NonPagedPoolNxCacheAligned, False),
                                              (PT.NonPagedPool | 0x100, False),  # POOL_COLD_ALLOCATION
                                              (PT.PagedPool | 0x400, True)])  # POOL_ZERO_ALLOCATION
def test_any_pool_type_passes_through_to_the_executive(k, pool_type, paged):
    # ntifs.h's FsRtlAllocatePoolWithTag is a macro over ExAllocatePoolWithTag: no type check.
    p = k.FsRtlAllocatePoolWithTag(pool_type, 100, "Fred")
    assert (k.paged_pool if paged else k.nonpaged_pool).contains(p)
    if pool_type & 0x400:
        assert k.read(p, 100) == bytes(100)


@pytest.mark.parametrize("pool_type", [0x800, -1, 1 << 40])
def test_a_value_that_is_no_pool_type_is_a_plain_error(k, pool_type):
    with pytest.raises(ValueError, match="PoolType"):
        k.FsRtlAllocatePoolWithTag(pool_type, 100, "Fred")
    assert not k.halted


def test_zero_bytes_is_served_as_one_byte(k):
    # "cannot be zero" is the caller's contract; the retail executive rounds 0 up to 1.
    p = k.FsRtlAllocatePoolWithTag(PT.PagedPool, 0, "Fred")
    assert p and k.read(p - 16, 3)[2] == 2


def test_tag_zero_is_accepted_on_a_retail_kernel(k):
    assert k.FsRtlAllocatePoolWithTag(PT.PagedPool, 10, 0)


def test_failure_raises_status_insufficient_resources(k):
    with pytest.raises(ntpool.NtStatusError) as info:
        k.FsRtlAllocatePoolWithTag(PT.NonPagedPool, 64 * MiB, "Huge")
    assert info.value.status == INSUFFICIENT == ntpool.NtStatus.STATUS_INSUFFICIENT_RESOURCES


def test_a_driver_wraps_the_call_in_try_except_as_advised(k):
    def driver_routine():
        try:
            return k.FsRtlAllocatePoolWithTag(PT.PagedPool, 64 * MiB, "Huge")
        except Exception as error:  # __except (EXCEPTION_EXECUTE_HANDLER)
            return error.status
    assert driver_routine() == INSUFFICIENT
    assert not k.halted
    assert k.FsRtlAllocatePoolWithTag(PT.PagedPool, 100, "Fine")  # the failure did not stick


def test_small_pool_exhaustion_also_raises(k):
    with pytest.raises(ntpool.NtStatusError):
        while True:
            k.FsRtlAllocatePoolWithTag(PT.NonPagedPool, 400, "Fill")


@pytest.mark.parametrize("windows", ["7", "11"])
def test_exhaustion_on_either_design_raises_for_fsrtl_and_is_null_for_ex(windows):
    """A request the fast path validates and passes straight on (a big one, a small one the
    lookaside or LFH cannot serve) fails as the routine says: FsRtl's raise bit raises,
    ExAllocatePoolWithTag returns NULL."""
    k = ntpool.Kernel(nonpaged_pool_bytes=2 * MiB, paged_pool_bytes=2 * MiB, windows=windows)
    k.ExFreePoolWithTag(k.ExAllocatePoolWithTag(PT.NonPagedPool, 400, "Fill"), "Fill")  # tag known
    assert k.ExAllocatePoolWithTag(PT.NonPagedPool, 64 * MiB, "Fill") == 0
    with pytest.raises(ntpool.NtStatusError) as info:
        k.FsRtlAllocatePoolWithTag(PT.NonPagedPool, 64 * MiB, "Fill")
    assert info.value.status == INSUFFICIENT
    held = []
    while p := k.ExAllocatePoolWithTag(PT.NonPagedPool, 400, "Fill"):
        held.append(p)
    with pytest.raises(ntpool.NtStatusError) as info:
        k.FsRtlAllocatePoolWithTag(PT.NonPagedPool, 400, "Fill")
    assert info.value.status == INSUFFICIENT and not k.halted and len(held) > 1000


def test_tag_shows_reversed_in_the_pool_and_the_tracker(k):
    p = k.FsRtlAllocatePoolWithTag(PT.PagedPool, 100, "Fred")
    assert k.read(p - 12, 4) == b"derF"
    assert [r.Tag for r in k.pool_tags()] == ["derF"]


def test_memory_is_uninitialized(k):
    p = k.FsRtlAllocatePoolWithTag(PT.NonPagedPool, 300, "Dirt")
    k.RtlFillMemory(p, 300, 0xCD)
    k.ExFreePoolWithTag(p, "Dirt")
    q = k.FsRtlAllocatePoolWithTag(PT.NonPagedPool, 300, "Dirt")
    assert q == p and k.read(q + 8, 292) == b"\xcd" * 292


def test_at_dispatch_level_nonpaged_works_and_paged_bug_checks(k):
    k.KeRaiseIrql(ntpool.DISPATCH_LEVEL)
    assert k.FsRtlAllocatePoolWithTag(PT.NonPagedPoolCacheAligned, 100, "Disp")
    e = bugcheck(lambda: k.FsRtlAllocatePoolWithTag(PT.PagedPool, 100, "Disp"))
    assert e.parameters == (0x08, 2, PT.PagedPool | RAISE, 100)


def test_above_dispatch_level_even_nonpaged_bug_checks(k):
    k.KeRaiseIrql(ntpool.Irql.CLOCK_LEVEL)
    e = bugcheck(lambda: k.FsRtlAllocatePoolWithTag(PT.NonPagedPool, 100, "Clck"))
    assert e.parameters == (0x08, 13, PT.NonPagedPool | RAISE, 100)


def test_fsrtl_allocate_pool_uses_fsrt(k):
    p = k.FsRtlAllocatePool(PT.PagedPool, 10)
    assert k.read(p - 12, 4) == b"FSrt"


def test_quota_tag_charges_the_process_and_raises_when_exceeded(k):
    app = k.create_process("app.exe", paged_quota=300)
    k.set_current_process(app)
    p = k.FsRtlAllocatePoolWithQuotaTag(PT.PagedPool, 200, "Quot")
    assert app.paged_quota_used == 224
    assert int.from_bytes(k.read(p - 8, 8), "little") == app.address
    with pytest.raises(ntpool.NtStatusError) as info:
        k.FsRtlAllocatePoolWithQuotaTag(PT.PagedPool, 200, "Quot")
    assert info.value.status == ntpool.NtStatus.STATUS_QUOTA_EXCEEDED
    k.ExFreePoolWithTag(p, "Quot")
    assert app.paged_quota_used == 0
    assert k.FsRtlAllocatePoolWithQuotaTag(PT.PagedPool, 200, "Quot")


def test_quota_tag_pool_exhaustion_raises_insufficient_resources(k):
    app = k.create_process("app.exe")
    k.set_current_process(app)
    with pytest.raises(ntpool.NtStatusError) as info:
        k.FsRtlAllocatePoolWithQuota(PT.NonPagedPool, 64 * MiB)
    assert info.value.status == INSUFFICIENT


def test_fsrtl_allocate_pool_with_quota_uses_fsrt(k):
    app = k.create_process("app.exe")
    k.set_current_process(app)
    p = k.FsRtlAllocatePoolWithQuota(PT.NonPagedPool, 10)
    assert k.read(p - 12, 4) == b"FSrt" and app.nonpaged_quota_used == 32


@pytest.mark.parametrize("args, error", [(("PagedPool", 10, "Fred"), TypeError),
                                         ((1, -5, "Fred"), ValueError),
                                         ((1, 10, "Fredd"), ntpool.TagError)])
def test_misuse_gets_a_plain_error(k, args, error):
    with pytest.raises(error):
        k.FsRtlAllocatePoolWithTag(*args)
    assert not k.halted
