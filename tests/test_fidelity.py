"""Windows 7's own answers where a literal reading would differ (issue 12): zero bytes,
double frees after coalescing, Driver Verifier's own stops, special pool overruns by a
driver, must-succeed pool, the 0x41 PFN."""

import pytest

import ntpool
from ntpool.tags import tag_value

NP = ntpool.PoolType.NonPagedPool
PP = ntpool.PoolType.PagedPool
MiB = 1 << 20


class Driver:
    name = "checked.sys"

    def DriverEntry(self, k, path):
        return 0

    def DriverUnload(self, k):
        pass

    def allocate(self, k, pool_type, size, tag):
        return k.ExAllocatePoolWithTag(pool_type, size, tag)

    def free(self, k, p, tag=None):
        if tag is None:
            return k.ExFreePool(p)
        return k.ExFreePoolWithTag(p, tag)


@pytest.fixture
def k():
    return ntpool.Kernel(nonpaged_pool_bytes=4 * MiB, paged_pool_bytes=4 * MiB)


def stop(call):
    with pytest.raises(ntpool.BugCheck) as info:
        call()
    return info.value


def verified(k, **options):
    d = Driver()
    k.load_driver(d)
    k.verifier.enable("checked.sys", **(options or {"pool_tracking": True}))
    return d


def caller_address(k, error):
    return k.call_sites.table[error.site].address


# --- double free after a backward coalesce ------------------------------------------------

def test_double_free_after_a_backward_coalesce_is_always_0x07(k):
    chunks = sorted(k.ExAllocatePoolWithTag(NP, 600, "Dbl ") for _ in range(3))  # 39 blocks
    first, middle, _kept = chunks
    k.ExFreePoolWithTag(first, "Dbl ")
    k.ExFreePoolWithTag(middle, "Dbl ")  # coalesces backward into `first`
    e = stop(lambda: k.ExFreePoolWithTag(middle, "Dbl "))
    assert (e.code, e.parameters[0], e.parameters[3]) == (0xC2, 0x07, middle)


# --- Driver Verifier's own stops -----------------------------------------------------------

def test_zero_bytes_from_a_verified_driver_is_0xc4_0x00(k):
    d = verified(k)
    e = stop(lambda: d.allocate(k, PP, 0, "Zero"))
    assert (e.code, e.parameters) == (0xC4, (0x00, 0, PP, 0))


def test_zero_bytes_from_an_unverified_driver_is_one_byte(k):
    d = Driver()
    k.load_driver(d)
    p = d.allocate(k, NP, 0, "Zero")
    assert p and k.read(p - 16, 3)[2] == 2


@pytest.mark.parametrize("pool_type, irql, sub", [(PP, 2, 0x01), (NP, 3, 0x02)])
def test_allocation_at_a_bad_irql_by_a_verified_driver(k, pool_type, irql, sub):
    d = verified(k)
    k.KeRaiseIrql(irql)
    e = stop(lambda: d.allocate(k, pool_type, 10, "Irql"))
    assert (e.code, e.parameters) == (0xC4, (sub, irql, pool_type, 10))


def test_allocation_at_a_bad_irql_by_an_unverified_driver_stays_0xc2(k):
    d = Driver()
    k.load_driver(d)
    k.KeRaiseIrql(2)
    assert stop(lambda: d.allocate(k, PP, 10, "Irql")).parameters == (0x08, 2, PP, 10)


@pytest.mark.parametrize("tag, parameters", [
    (0, lambda caller: (0x9B, PP, 10, caller)),
    ("BIG ", lambda caller: (0x9C, PP, 10, caller)),
    (tag_value(" GIB"), lambda caller: (0x9C, PP, 10, caller)),
    ("----", lambda caller: (0x9D, tag_value("----"), PP, caller)),
])
def test_tag_stops_are_verifier_stops_with_the_callers_address(k, tag, parameters):
    d = verified(k)
    e = stop(lambda: d.allocate(k, PP, 10, tag))
    caller = caller_address(k, e)
    assert caller >= k.drivers[0].image_base
    assert (e.code, e.parameters) == (0xC2, parameters(caller))


def test_must_succeed_from_a_verified_driver_is_0x9a(k):
    d = verified(k)
    e = stop(lambda: d.allocate(k, ntpool.PoolType.NonPagedPoolMustSucceed, 10, "Must"))
    assert (e.code, e.parameters) == (0xC2, (0x9A, 2, 10, tag_value("Must")))


def test_free_of_an_address_never_allocated_by_a_verified_driver_is_0xc4_0x10(k):
    d = verified(k)
    p = d.allocate(k, NP, 100, "Addr")
    for bad in (p + 8, 0xFFFFF80000001000, 0xFFFFFA8000000000 + 0x300010):
        e = stop(lambda: d.free(k, bad))
        assert (e.code, e.parameters) == (0xC4, (0x10, bad, 0, 0))
        k = ntpool.Kernel(nonpaged_pool_bytes=4 * MiB, paged_pool_bytes=4 * MiB)
        d = verified(k)
        p = d.allocate(k, NP, 100, "Addr")


@pytest.mark.parametrize("pool_type, irql, sub", [(PP, 2, 0x11), (NP, 3, 0x12)])
def test_free_at_a_bad_irql_by_a_verified_driver(k, pool_type, irql, sub):
    d = verified(k)
    p = d.allocate(k, pool_type, 100, "Irql")
    k.KeRaiseIrql(irql)
    e = stop(lambda: d.free(k, p, "Irql"))
    assert (e.code, e.parameters) == (0xC4, (sub, irql, pool_type, p))


def test_double_free_by_a_verified_driver_is_0xc4_0x13(k):
    d = verified(k)
    p = d.allocate(k, NP, 1000, "Dbl ")  # past the lookasides, which keep chunks in use
    d.allocate(k, NP, 1000, "Kept")
    d.free(k, p, "Dbl ")
    header = int.from_bytes(k.read(p - 16, 4), "little")
    e = stop(lambda: d.free(k, p, "Dbl "))
    assert (e.code, e.parameters) == (0xC4, (0x13, 0, p - 16, header))


def test_double_free_by_an_unverified_driver_stays_0xc2_0x07(k):
    d = Driver()
    k.load_driver(d)
    p = d.allocate(k, NP, 1000, "Dbl ")
    d.allocate(k, NP, 1000, "Kept")
    d.free(k, p, "Dbl ")
    assert stop(lambda: d.free(k, p, "Dbl ")).parameters[:2] == (0x07, 0x11C1)


# --- must-succeed pool ---------------------------------------------------------------------

def test_must_succeed_pool_exhausted_is_0x41_must_succeed_pool_empty():
    k = ntpool.Kernel(nonpaged_pool_bytes=64 * 1024, paged_pool_bytes=64 * 1024)
    big = 3 * 4096
    while k.ExAllocatePoolWithTag(NP, big, "Fill"):
        pass
    pages = k.nonpaged_pool.pages_in_use
    e = stop(lambda: k.ExAllocatePoolWithTag(ntpool.PoolType.NonPagedPoolMustSucceed, big, "Must"))
    assert e.code == 0x41 and e.name == "MUST_SUCCEED_POOL_EMPTY"
    assert e.parameters[:3] == (big, pages, pages)  # every page in use is a big page


# --- 0xC2/0x41's page frame ----------------------------------------------------------------

def test_free_inside_a_big_nonpaged_allocation_names_the_page_frame(k):
    p = k.ExAllocatePoolWithTag(NP, 3 * 4096, "Big ")
    middle = p + 4096
    pfn = k.space.translate(middle) >> 12
    e = stop(lambda: k.ExFreePool(middle))
    assert e.parameters == (0x41, middle, pfn, k.physical.frame_count - 1)


# --- special pool overrun by a driver --------------------------------------------------------

def test_special_pool_overrun_by_a_driver_is_0xd6_and_by_the_kernel_0xcd(k):
    d = verified(k, special_pool=True)
    p = d.allocate(k, NP, 100, "Spcl")
    e = stop(lambda: k.write(p + 112, b"x"))  # not a driver's write: the test itself
    assert e.code == 0xCD


# --- the next chunk's PoolIndex -------------------------------------------------------------

@pytest.mark.parametrize("pool_type", [NP, PP])
def test_the_next_chunks_pool_index_is_compared_on_free(k, pool_type):
    p = k.ExAllocatePoolWithTag(pool_type, 100, "Idx ")  # 8 blocks; a free remainder follows
    following = p - 16 + 8 * 16
    index = k.read(following + 1, 1)[0]
    k.write(following + 1, bytes([index ^ 0x7]))
    e = stop(lambda: k.ExFreePoolWithTag(p, "Idx "))
    assert (e.code, e.parameters) == (0x19, (0x5, following, 0x5E5, p - 16))


# --- the session bit ------------------------------------------------------------------------

@pytest.mark.parametrize("pool_type, pool_name, stored", [
    (ntpool.PoolType.PagedPoolSession, "paged_pool", 0x23),
    (ntpool.PoolType.NonPagedPoolSession, "nonpaged_pool", 0x22),
])
def test_session_types_keep_the_session_bit_in_the_header(k, pool_type, pool_name, stored):
    p = k.ExAllocatePoolWithTag(pool_type, 100, "Sess")
    assert getattr(k, pool_name).contains(p)  # ntpool has no session space (README)
    assert k.read(p - 16 + 3, 1)[0] == stored
    k.ExFreePoolWithTag(p, "Sess")
    q = k.ExAllocatePoolWithTag(pool_type & 1, 100, "Plan")
    assert q == p and k.read(q - 16 + 3, 1)[0] == stored & ~0x20  # a non-session reuse


# --- protected tags -------------------------------------------------------------------------

def test_protected_special_pool_compares_tags_as_the_pool_does(k):
    d = verified(k, special_pool=True)
    fred = tag_value("Fred")
    p = d.allocate(k, NP, 100, fred | ntpool.PROTECTED_POOL)
    q = d.allocate(k, NP, 100, "Open")
    d.free(k, q, "Nope")  # unprotected: the tag passed is ignored
    d.free(k, p, "Fred")  # the protected bit is masked on both sides
    r = d.allocate(k, NP, 100, fred | ntpool.PROTECTED_POOL)
    e = stop(lambda: d.free(k, r, "Nope"))
    assert (e.code, e.parameters) == (0xC2, (0x0A, r, fred, tag_value("Nope")))


# --- a wild free-list link ------------------------------------------------------------------

@pytest.mark.parametrize("pool_type, wild, code", [
    # Nonpaged pool's lock is a spin lock (DISPATCH_LEVEL): the fault is DRIVER_CORRUPTED_EXPOOL.
    (NP, 0xFFFFFA8000300000, 0xC5),
    # Paged pool's is a guarded mutex (APC_LEVEL): PAGE_FAULT_IN_NONPAGED_AREA.
    (PP, 0xFFFFF8A000300000, 0x50),
])
def test_a_wild_free_list_link_faults_before_safe_unlinking_can_compare(pool_type, wild, code):
    k = ntpool.Kernel(nonpaged_pool_bytes=4 * MiB, paged_pool_bytes=4 * MiB, delayed_frees=False)
    pool = k.paged_pool if pool_type else k.nonpaged_pool
    k.ExAllocatePoolWithTag(pool_type, 1000, "Lnk1")  # 64 blocks; the page's other 192 are listed
    [remainder] = pool.free_list(192)
    assert k.space.translate(wild) is None  # in the pool's range, but no page is mapped there
    k.write(remainder + 16, wild.to_bytes(8, "little"))  # its Flink
    e = stop(lambda: k.ExAllocatePoolWithTag(pool_type, 3000, "Lnk2"))
    # Reading Flink->Blink faults first: not 0x19/0x3 with zeros.
    assert e.code == code and e.parameters[0] == wild + 8


def test_exallocatepool2_serves_zero_bytes_as_the_executive_does(k):
    p = k.ExAllocatePool2(0x40, 0, "Zer2")  # POOL_FLAG_NON_PAGED
    assert p and k.read(p - 16, 3)[2] == 2 and k.read(p, 1) == b"\0"  # zeroed, as documented
    k.ExFreePool2(p, "Zer2")
    assert not k.halted
