"""Caller errors stop the machine with Windows' codes and parameters (reference section 7)."""

import pytest

import ntpool
from ntpool.hooks import BugCheckRaised
from ntpool.tags import tag_value

NP = ntpool.PoolType.NonPagedPool
PP = ntpool.PoolType.PagedPool
FRED = tag_value("Fred")


def bugcheck(call):
    with pytest.raises(ntpool.BugCheck) as info:
        call()
    return info.value


def test_zero_size_is_a_one_byte_request_on_a_retail_kernel(k):
    p = k.ExAllocatePoolWithTag(PP, 0, "Fred")
    assert p and not k.halted
    assert k.read(p - 16, 3)[2] == 2  # BlockSize 2: the header and one byte, rounded
    assert k.pool_tags()[0].PagedUsed == 32
    k.ExFreePoolWithTag(p, "Fred")


@pytest.mark.parametrize("size", [1000, 8000])  # past the lookasides' 496 bytes
def test_double_free(k, size):
    p = k.ExAllocatePoolWithTag(NP, size, "Fred")
    k.ExAllocatePoolWithTag(NP, size, "Kept")  # keeps a small chunk's page in use
    k.ExFreePoolWithTag(p, "Fred")
    e = bugcheck(lambda: k.ExFreePoolWithTag(p, "Fred"))
    assert e.code == 0xC2
    if size <= 0xFE0:
        assert e.parameters[0] == 0x07 and e.parameters[3] == p
    else:
        # The big allocation's pages went back at the first free: the second finds a free
        # nonpaged page, 0x41 (address, 0, highest PFN).
        assert e.parameters == (0x41, p, 0, k.physical.frame_count - 1)


def test_double_free_reports_the_header(k):
    p = k.ExAllocatePoolWithTag(NP, 1000, "Fred")
    k.ExAllocatePoolWithTag(NP, 1000, "Kept")
    k.ExFreePoolWithTag(p, "Fred")
    raw = int.from_bytes(k.read(p - 16, 8), "little")
    e = bugcheck(lambda: k.ExFreePoolWithTag(p, "Fred"))
    # Parameter 2 is a source line, parameter 3 the header's first ULONG (not 8 bytes).
    assert e.parameters == (0x07, 0x11C1, raw & 0xFFFFFFFF, p)


def test_double_free_of_a_chunk_on_a_lookaside_goes_unnoticed_as_in_windows_7(k):
    # Windows 7 leaves a chunk it caches on a lookaside list marked in use, so a second free
    # finds nothing wrong: the chunk is pushed twice, and two later allocations share it.
    p = k.ExAllocatePoolWithTag(NP, 100, "Fred")
    k.ExFreePoolWithTag(p, "Fred")
    k.ExFreePoolWithTag(p, "Fred")
    assert not k.halted
    assert k.ExAllocatePoolWithTag(NP, 100, "Once") == p
    assert k.ExAllocatePoolWithTag(NP, 100, "Twic") == p


@pytest.mark.parametrize("size", [100, 9000])
def test_wrong_tag_on_free_of_a_protected_allocation(k, size):
    p = k.ExAllocatePoolWithTag(NP, size, FRED | ntpool.PROTECTED_POOL)
    e = bugcheck(lambda: k.ExFreePoolWithTag(p, "Barn"))
    # Parameter 3 is the allocation's tag without the protected bit.
    assert (e.code, e.parameters) == (0xC2, (0x0A, p, FRED, tag_value("Barn")))


@pytest.mark.parametrize("size", [100, 1000, 9000])
def test_wrong_tag_on_free_of_an_unprotected_allocation_is_ignored(k, size):
    # Windows 7 compares tags on free only for protected allocations (WRK's free ignores
    # TagToFree altogether; Vista and later check PROTECTED_POOL tags): the free proceeds.
    p = k.ExAllocatePoolWithTag(NP, size, "Fred")
    k.ExFreePoolWithTag(p, "Barn")
    assert not k.halted
    row = next(r for r in k.pool_tags() if r.TagUlong == FRED)
    assert (row.NonPagedAllocs, row.NonPagedFrees, row.NonPagedUsed) == (1, 1, 0)


def test_protected_tag_must_be_named_on_free(k):
    protected = FRED | ntpool.PROTECTED_POOL
    p = k.ExAllocatePoolWithTag(NP, 100, protected)
    e = bugcheck(lambda: k.ExFreePool(p))
    assert e.parameters == (0x0A, p, FRED, 0)


def test_protected_tag_freed_without_the_bit(k):
    # The comparison masks bit 31 on both sides: the bare tag frees a protected allocation.
    protected = FRED | ntpool.PROTECTED_POOL
    p = k.ExAllocatePoolWithTag(NP, 100, protected)
    k.ExFreePoolWithTag(p, "Fred")
    assert not k.halted
    q = k.ExAllocatePoolWithTag(NP, 100, protected)
    k.ExFreePoolWithTag(q, protected)
    assert not k.halted


def test_exfreepool_needs_no_tag(k):
    p = k.ExAllocatePoolWithTag(NP, 100, "Fred")
    k.ExFreePool(p)
    assert not k.halted


def test_free_of_user_address(k):
    e = bugcheck(lambda: k.ExFreePool(0x10000))
    assert e.parameters == (0x40, 0x10000, 0xFFFF800000000000, 0)


def test_free_of_null(k):
    assert bugcheck(lambda: k.ExFreePool(0)).parameters[0] == 0x40


def test_free_of_address_never_in_any_pool(k):
    e = bugcheck(lambda: k.ExFreePool(0xFFFFF80000001000))
    assert e.parameters == (0x42, 0xFFFFF80000001000, 0, 0)


def test_free_of_unallocated_nonpaged_page(k):
    address = 0xFFFFFA8000000000 + 0x100010
    assert bugcheck(lambda: k.ExFreePool(address)).parameters[0] == 0x41


def test_free_of_unallocated_paged_page(k):
    address = 0xFFFFF8A000000000 + 0x5010
    e = bugcheck(lambda: k.ExFreePool(address))
    assert e.parameters == (0x50, address, 5, 4 << 20)


def test_free_inside_an_allocation(k):
    p = k.ExAllocatePoolWithTag(NP, 100, "Fred")
    assert bugcheck(lambda: k.ExFreePool(p + 8)).parameters == (0x99, p + 8, 0, 0)


def test_free_in_the_middle_of_a_big_paged_allocation(k):
    p = k.ExAllocatePoolWithTag(PP, 3 * 4096, "Fred")
    assert bugcheck(lambda: k.ExFreePool(p + 4096)).parameters == (0x41286, 0, 0, 1)


def test_free_of_a_misaligned_big_address(k):
    p = k.ExAllocatePoolWithTag(NP, 3 * 4096, "Fred")
    assert bugcheck(lambda: k.ExFreePool(p + 16)).parameters[0] == 0x99


@pytest.mark.parametrize("tag", [0, "BIG ", tag_value(" GIB"), "----", "    "])
def test_a_retail_kernel_accepts_any_tag(k, tag):
    # The tag checks are Driver Verifier's (tests/test_fidelity.py); retail only ASSERTs.
    p = k.ExAllocatePoolWithTag(PP, 10, tag)
    assert p and not k.halted
    assert int.from_bytes(k.read(p - 12, 4), "little") == tag_value(tag)


def test_must_succeed_is_served_on_a_retail_kernel(k):
    p = k.ExAllocatePoolWithTag(ntpool.PoolType.NonPagedPoolMustSucceed, 10, "Fred")
    assert p and k.nonpaged_pool.contains(p) and not k.halted


def test_overrun_into_the_next_header_is_found_at_free(k):
    a = k.ExAllocatePoolWithTag(NP, 1000, "Ovr1")  # 64 blocks at the front of a fresh page
    k.write(a, b"A" * (1008 + 4))  # 1000 bytes asked, 1008 usable, then the next header
    e = bugcheck(lambda: k.ExFreePool(a))
    assert e.code == 0x19
    assert e.parameters == (0x20, a - 16, a - 16 + 1024, 0)


def test_free_list_corruption_is_caught_by_safe_unlinking(k):
    a = k.ExAllocatePoolWithTag(NP, 1000, "Lnk1")  # 64 blocks; the page's other 192 are listed
    [remainder] = k.nonpaged_pool.free_list(192)
    assert remainder == a - 16 + 1024
    k.write(remainder + 16, a.to_bytes(8, "little"))  # smash its Flink: a mapped address
    e = bugcheck(lambda: k.ExAllocatePoolWithTag(NP, 3000, "Lnk3"))
    assert e.code == 0x19 and e.parameters[0] == 0x3 and e.parameters[1] == remainder + 16


def test_machine_is_halted_after_a_bug_check(k):
    bugcheck(lambda: k.ExFreePool(0x10000))  # a user-mode address: 0xC2/0x40
    assert k.halted and k.bugcheck.code == 0xC2
    with pytest.raises(ntpool.MachineHalted, match="halted by bug check 0xc2"):
        k.ExAllocatePoolWithTag(NP, 10, "Fred")
    with pytest.raises(ntpool.MachineHalted):
        k.write(0xFFFFFA8000000000, b"x")
    k.pool_tags()  # inspection still works


def test_bug_check_cannot_be_swallowed_by_except_exception(k):
    def careless_driver():
        try:
            k.ExFreePool(0x10000)
        except Exception:  # noqa: BLE001 - the point of the test
            return "swallowed"
    with pytest.raises(ntpool.BugCheck):
        careless_driver()


def test_bug_check_listeners_see_it_on_the_halted_machine(k):
    seen = []
    k.hooks.subscribe(BugCheckRaised, lambda event: seen.append((event.bugcheck.code, k.halted)))
    bugcheck(lambda: k.ExFreePool(0x10000))  # a user-mode address: 0xC2/0x40
    assert seen == [(0xC2, True)]
