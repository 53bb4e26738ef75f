"""The segment heap's own accesses to a page that is not there follow the rule Windows 7's
pool accesses follow (``Kernel._pool_access_fault``, one function for both designs): 0xC5
under a nonpaged heap's lock (DISPATCH_LEVEL), 0x50 under the paged heap's (APC_LEVEL) for
a system address, 0x1E for a user-mode or non-canonical one.

The path: a driver writes into a freed block's SLIST link on the dynamic lookaside (a use
after free). A pop checks the link; ntpool's flush follows it unchecked: when the heap runs
out of pages it flushes its lookasides and reads through the damaged link."""

import struct

import pytest

import ntpool
from ntpool.pool.segment_heap import layout as L

MiB = 1 << 20
NX = ntpool.PoolType.NonPagedPoolNx
PP = ntpool.PoolType.PagedPool
UNMAPPED = 0xFFFFF8A0DEAD0000
ACCESS_VIOLATION = 0xC0000005


class Driver:
    name = "stale.sys"

    def DriverEntry(self, k, path):
        return 0

    def damage_a_lookaside_link(self, k, heap, pool_type, link):
        bucket = L.lookaside_bucket(0x300 + 16)
        for _ in range(3):  # the bucket is used: the balance set enables it
            heap.lookaside[bucket].frees = 1
            k.pool.balance_set_pass()
        a = k.ExAllocatePoolWithTag(pool_type, 0x300, "Stal")
        b = k.ExAllocatePoolWithTag(pool_type, 0x300, "Stal")
        k.ExFreePoolWithTag(a, "Stal")
        k.ExFreePoolWithTag(b, "Stal")  # the lookaside: b -> a
        k.write(b - 16, struct.pack("<Q", link))  # a write through a stale pointer to b
        assert heap.lookaside[bucket].count == 2

    def fill(self, k, pool_type):
        while k.ExAllocatePoolWithTag(pool_type, 0x8000, "Fill"):
            pass


@pytest.fixture(params=["10", "11"])
def k(request):
    machine = ntpool.Kernel(nonpaged_pool_bytes=2 * MiB, paged_pool_bytes=2 * MiB,
                            windows=request.param)
    machine.load_driver(Driver())
    return machine


def _stop(k, pool_type, heap, link) -> ntpool.BugCheck:
    driver = Driver()
    driver.damage_a_lookaside_link(k, heap, pool_type, link)
    with pytest.raises(ntpool.BugCheck) as info:
        driver.fill(k, pool_type)  # out of pages: the heap flushes its lookasides
    return info.value


def test_a_nonpaged_heap_following_a_link_to_nowhere_is_0xc5_under_its_lock(k):
    e = _stop(k, NX, k.nonpaged_pool_nx, UNMAPPED)
    assert e.code == 0xC5
    assert e.parameters[:3] == (UNMAPPED, 2, 0)  # read, at the heap lock's DISPATCH_LEVEL
    assert e.parameters[3]  # the driver's call into the pool: ntpool has no ntoskrnl addresses
    assert "corrupted pool link" in e.detail and "stale.sys Driver.fill" in e.detail


def test_the_paged_heap_following_a_link_to_nowhere_is_0x50(k):
    e = _stop(k, PP, k.paged_pool, UNMAPPED)
    assert e.code == 0x50
    assert (e.parameters[0], e.parameters[1], e.parameters[3]) == (UNMAPPED, 0, 0)
    assert e.parameters[2] and "stale.sys Driver.fill" in e.detail  # the instruction: the call


def test_a_link_to_a_user_mode_address_is_an_access_violation_0x1e(k):
    e = _stop(k, PP, k.paged_pool, 0x10)  # a link zeroed, plus a little
    assert e.code == 0x1E
    assert (e.parameters[0], e.parameters[2], e.parameters[3]) == (ACCESS_VIOLATION, 0, 0x10)


def test_a_non_canonical_link_is_a_general_protection_fault_0x1e(k):
    e = _stop(k, NX, k.nonpaged_pool_nx, 0x4141414141414141)
    assert e.code == 0x1E
    assert (e.parameters[0], e.parameters[2], e.parameters[3]) == (ACCESS_VIOLATION, 0, 2**64 - 1)
