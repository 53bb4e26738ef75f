"""Every sentence of the NdisAllocateMemoryWithTag document and its siblings' contracts,
true of ntpool (issue 3, part 1)."""

import pytest

import ntpool
from ntpool.constants import NDIS_MEMORY_CONTIGUOUS, NDIS_MEMORY_NONCACHED
from ntpool.machine.memory import PTE_CACHE_DISABLE, PTE_PRESENT
from ntpool.routines.ndis import NDIS_MINIPORT_CHARACTERISTICS, NDIS_MINIPORT_DRIVER_CHARACTERISTICS
from ntpool.pool.descriptor import PAGE_RESERVED
from ntpool.pool.layout import POOL_HEADER, is_allocated
from ntpool.tags import tag_value

SUCCESS, FAILURE = 0, 0xC0000001
LOW, NORMAL, HIGH = 0, 16, 32
MiB = 1 << 20


def bugcheck(call):
    with pytest.raises(ntpool.BugCheck) as info:
        call()
    return info.value


class Driver:
    def __init__(self, name="e1000.sys"):
        self.name = name


def ndis6(k, minor=20):
    driver = Driver()
    status, handle = k.NdisMRegisterMiniportDriver(
        driver, "\\Registry\\Machine\\System\\e1000", None,
        NDIS_MINIPORT_DRIVER_CHARACTERISTICS(6, minor))
    assert status == SUCCESS
    return driver, handle


def ndis5(k, minor=1):
    driver = Driver("old5.sys")
    wrapper = k.NdisMInitializeWrapper(driver, "\\Registry\\old5")
    assert k.NdisMRegisterMiniport(wrapper, NDIS_MINIPORT_CHARACTERISTICS(5, minor)) == SUCCESS
    return driver, wrapper


def row(k, display):
    return [r for r in k.pool_tags() if r.Tag == display][0]


# --- NdisAllocateMemoryWithTag ----------------------------------------------------------------

def test_success_returns_status_and_nonpaged_address(k):
    status, va = k.NdisAllocateMemoryWithTag(100, "Fred")
    assert status == ntpool.NdisStatus.NDIS_STATUS_SUCCESS == SUCCESS
    assert k.nonpaged_pool.contains(va)
    k.write(va, b"\x55" * 100)
    assert k.read(va - 12, 4) == b"derF"  # the tag appears reversed in a dump of pool


def test_failure_returns_ndis_status_failure_and_null(k):
    status, va = k.NdisAllocateMemoryWithTag(64 * MiB, "Huge")
    assert (status, va) == (ntpool.NdisStatus.NDIS_STATUS_FAILURE, 0) == (FAILURE, 0)
    assert not k.halted


def test_a_failure_does_not_mean_the_next_call_fails(k):
    held = []
    while True:
        status, va = k.NdisAllocateMemoryWithTag(4000, "Fill")
        if status:
            break
        held.append(va)
    assert k.NdisAllocateMemoryWithTag(4000, "Fill") == (FAILURE, 0)
    k.NdisFreeMemory(held.pop(), 4000, 0)
    status, va = k.NdisAllocateMemoryWithTag(4000, "Fill")
    assert status == SUCCESS and va


def test_the_tag_is_tracked(k):
    k.NdisAllocateMemoryWithTag(100, "Fred")
    assert row(k, "derF").NonPagedUsed == 128 and row(k, "derF").PagedUsed == 0


def test_is_equivalent_to_ndis_allocate_memory_except_the_tag(k):
    _, a = k.NdisAllocateMemoryWithTag(100, "Fred")
    _, b = k.NdisAllocateMemory(100, 0, -1)
    assert k.read(b - 12, 4) == b"NDam" and k.read(a - 12, 4) == b"derF"
    for chunk in (a - 16, b - 16):  # both: 100 bytes + header in 8 blocks, in-use nonpaged
        header = POOL_HEADER.at(k.physical.buffer, k.space.translate(chunk))
        assert header.BlockSize == 8 and is_allocated(header.PoolType)
        assert header.PoolType == k.nonpaged_pool.allocated_header_type


@pytest.mark.parametrize("args, error", [((-1, "Fred"), ValueError), ((1 << 32, "Fred"), ValueError),
                                         (("100", "Fred"), TypeError), ((100, "Fredd"), ntpool.TagError)])
def test_misuse_names_the_parameter(k, args, error):
    with pytest.raises(error):
        k.NdisAllocateMemoryWithTag(*args)
    assert not k.halted


def test_zero_length_is_served_as_the_pool_serves_it(k):
    # NDIS passes Length to ExAllocatePoolWithTag, which serves 0 bytes as 1 (retail).
    status, va = k.NdisAllocateMemoryWithTag(0, "Fred")
    assert status == SUCCESS and k.read(va - 16, 3)[2] == 2
    k.NdisFreeMemory(va, 0, 0)
    assert not k.halted


def test_at_dispatch_level_it_works(k):
    k.KeRaiseIrql(2)
    status, va = k.NdisAllocateMemoryWithTag(100, "Disp")
    assert status == SUCCESS
    k.NdisFreeMemory(va, 100, 0)


# --- NdisAllocateMemory -----------------------------------------------------------------------

def test_ndis_allocate_memory_uses_ndam(k):
    status, va = k.NdisAllocateMemory(40, 0, -1)
    assert status == SUCCESS and k.nonpaged_pool.contains(va)
    assert row(k, "NDam").NonPagedAllocs == 1
    assert ntpool.tag("maDN").display == "NDam"


@pytest.mark.parametrize("flags", [NDIS_MEMORY_CONTIGUOUS, NDIS_MEMORY_NONCACHED,
                                   NDIS_MEMORY_CONTIGUOUS | NDIS_MEMORY_NONCACHED])
def test_contiguous_and_noncached_are_physically_contiguous(k, flags):
    status, va = k.NdisAllocateMemory(5 * 4096 + 7, flags, -1)
    assert status == SUCCESS and va % 4096 == 0 and k.nonpaged_pool.contains(va)
    frames = [k.space.walk(va + i * 4096) >> 12 for i in range(6)]
    assert frames == list(range(frames[0], frames[0] + 6))
    assert all(k.nonpaged_pool.page_kind_of(va + i * 4096) == PAGE_RESERVED for i in range(6))
    cache_disabled = bool(k.space.pte(va) & PTE_CACHE_DISABLE)
    assert cache_disabled == bool(flags & NDIS_MEMORY_NONCACHED)
    assert row(k, "NDam").NonPagedUsed == 6 * 4096
    assert k.nonpaged_pool.big_pages[va] == (tag_value("maDN"), 6)
    k.write(va, b"\x01" * (5 * 4096 + 7))


def test_contiguous_memory_lies_below_highest_acceptable_address(k):
    first_free = k.physical.frame_in_use.find(0, 1)
    highest = ((first_free + 64) << 12) - 1
    status, va = k.NdisAllocateMemory(3 * 4096, NDIS_MEMORY_CONTIGUOUS, highest)
    assert status == SUCCESS
    assert all(k.space.walk(va + i * 4096) + 4095 <= highest for i in range(3))


def test_contiguous_memory_that_cannot_fit_below_the_address_fails(k):
    assert k.NdisAllocateMemory(4096, NDIS_MEMORY_CONTIGUOUS, 0xFFF) == (FAILURE, 0)
    assert k.NdisAllocateMemory(64 * MiB, NDIS_MEMORY_CONTIGUOUS, -1) == (FAILURE, 0)
    assert not k.halted
    assert k.NdisAllocateMemory(4096, NDIS_MEMORY_CONTIGUOUS, -1)[0] == SUCCESS


def test_contiguous_memory_is_not_freed_by_ex_free_pool(k):
    _, va = k.NdisAllocateMemory(4096, NDIS_MEMORY_CONTIGUOUS, -1)
    e = bugcheck(lambda: k.ExFreePool(va))
    assert (e.code, e.parameters[0]) == (0xC2, 0x99)


def test_contiguous_needs_passive_level(k):
    k.KeRaiseIrql(1)
    with pytest.raises(ntpool.NdisContractError, match="PASSIVE_LEVEL"):
        k.NdisAllocateMemory(4096, NDIS_MEMORY_CONTIGUOUS, -1)


@pytest.mark.parametrize("args, match", [((10, 4, -1), "MemoryFlags"), ((10, 0, "max"), "HighestAcceptableAddress"),
                                         ((10, 1, -2), "HighestAcceptableAddress")])
def test_ndis_allocate_memory_misuse(k, args, match):
    with pytest.raises((ValueError, TypeError), match=match):
        k.NdisAllocateMemory(*args)


# --- NdisFreeMemory -----------------------------------------------------------------------------

@pytest.mark.parametrize("flags", [NDIS_MEMORY_CONTIGUOUS, NDIS_MEMORY_NONCACHED])
def test_free_contiguous_with_matching_length_and_flags(k, flags):
    k.NdisAllocateMemoryWithTag(100, "Warm")  # builds the page tables over the pool first
    frames = k.physical.frames_used
    _, va = k.NdisAllocateMemory(10000, flags, -1)
    k.NdisFreeMemory(va, 10000, flags)
    assert k.physical.frames_used == frames
    assert not k.space.pte(va) & PTE_PRESENT and va not in k.nonpaged_pool.big_pages
    assert row(k, "NDam").NonPagedUsed == 0 and row(k, "NDam").NonPagedFrees == 1


def test_free_contiguous_with_wrong_flags_or_length_is_refused(k):
    _, va = k.NdisAllocateMemory(10000, NDIS_MEMORY_CONTIGUOUS, -1)
    with pytest.raises(ntpool.NdisContractError, match="MemoryFlags"):
        k.NdisFreeMemory(va, 10000, 0)
    with pytest.raises(ntpool.NdisContractError, match="MemoryFlags"):
        k.NdisFreeMemory(va, 10000, NDIS_MEMORY_NONCACHED)
    with pytest.raises(ntpool.NdisContractError, match="Length"):
        k.NdisFreeMemory(va, 4096, NDIS_MEMORY_CONTIGUOUS)  # a sub-range cannot be freed
    assert k.space.pte(va) & PTE_PRESENT and not k.halted  # nothing was freed
    k.NdisFreeMemory(va, 10000, NDIS_MEMORY_CONTIGUOUS)


def test_free_pool_memory_with_flags_is_refused(k):
    _, va = k.NdisAllocateMemory(100, 0, -1)
    with pytest.raises(ntpool.NdisContractError, match="MemoryFlags"):
        k.NdisFreeMemory(va, 100, NDIS_MEMORY_NONCACHED)
    k.NdisFreeMemory(va, 100, 0)
    assert row(k, "NDam").NonPagedUsed == 0


@pytest.mark.parametrize("size, wrong", [(100, 200), (100, 60), (6000, 9000), (6000, 100)])
def test_free_pool_memory_with_the_wrong_length_is_refused(k, size, wrong):
    _, va = k.NdisAllocateMemoryWithTag(size, "Lens")
    with pytest.raises(ntpool.NdisContractError, match="Length"):
        k.NdisFreeMemory(va, wrong, 0)
    k.NdisFreeMemory(va, size, 0)
    assert row(k, "sneL").NonPagedUsed == 0


@pytest.mark.parametrize("size, given", [(100, 100), (100, 97), (100, 112), (1, 16), (496, 481)])
def test_free_pool_memory_with_a_length_of_the_same_blocks_is_accepted(k, size, given):
    # Windows keeps only the chunk's BlockSize: any Length giving the same block count fits.
    _, va = k.NdisAllocateMemoryWithTag(size, "Same")
    k.NdisFreeMemory(va, given, 0)
    assert row(k, "emaS").NonPagedUsed == 0 and not k.halted


@pytest.mark.parametrize("windows", ["7", "11"])
@pytest.mark.parametrize("size", [100, 1279])
def test_a_wrong_length_is_refused_on_the_segment_heap_too(windows, size):
    k = ntpool.Kernel(nonpaged_pool_bytes=1 * MiB, paged_pool_bytes=1 * MiB, windows=windows)
    _, va = k.NdisAllocateMemoryWithTag(size, "Lens")
    with pytest.raises(ntpool.NdisContractError, match="Length"):
        k.NdisFreeMemory(va, size + 200, 0)
    k.NdisFreeMemory(va, size, 0)
    assert row(k, "sneL").NonPagedUsed == 0


@pytest.mark.parametrize("windows", ["7", "11"])
@pytest.mark.parametrize("size", [100, 1279])
def test_a_block_size_a_stray_write_changed_is_not_blamed_on_the_length(windows, size):
    """The driver passes the Length it allocated with; a stray write changed the chunk's
    BlockSize. NDIS says nothing of the Length: the free goes on, and what Windows' free
    makes of the header follows (Windows 7: 0x19/0x20, the next chunk's PreviousSize
    disagrees; the segment heap reads BlockSize only for its lookaside and frees it)."""
    k = ntpool.Kernel(nonpaged_pool_bytes=1 * MiB, paged_pool_bytes=1 * MiB, windows=windows)
    _, va = k.NdisAllocateMemoryWithTag(size, "Lens")
    _, after = k.NdisAllocateMemoryWithTag(size, "Next")  # a neighbour, so the chunk's end is checked
    blocks = POOL_HEADER.unpack_from(k.read(va - 16, 16)).BlockSize
    k.write(va - 16 + POOL_HEADER.BlockSize, bytes([blocks - 3]))
    if windows == "7":
        check = bugcheck(lambda: k.NdisFreeMemory(va, size, 0))
        assert (check.code, check.parameters[:2]) == (0x19, (0x20, va - 16))
    else:
        k.NdisFreeMemory(va, size, 0)
        assert not k.halted and row(k, "sneL").NonPagedUsed == 0


def test_wrong_length_refused_on_every_call_nothing_freed(k):
    # The size check rides on the free fast path: a refused free leaves the chunk allocated.
    for _ in range(3):
        _, va = k.NdisAllocateMemoryWithTag(100, "Twce")
        with pytest.raises(ntpool.NdisContractError, match="Length"):
            k.NdisFreeMemory(va, 300, 0)
        assert is_allocated(POOL_HEADER.unpack_from(k.read(va - 16, 16)).PoolType)
        assert row(k, "ecwT").NonPagedUsed == 128
        k.NdisFreeMemory(va, 100, 0)
        assert row(k, "ecwT").NonPagedUsed == 0


def test_free_contiguous_noncached_needs_below_dispatch(k):
    _, va = k.NdisAllocateMemory(4096, NDIS_MEMORY_NONCACHED, -1)
    k.KeRaiseIrql(2)
    with pytest.raises(ntpool.NdisContractError, match="DISPATCH_LEVEL"):
        k.NdisFreeMemory(va, 4096, NDIS_MEMORY_NONCACHED)


def test_ndis_free_memory_double_free_is_the_pool_bug_check(k):
    _, va = k.NdisAllocateMemoryWithTag(1000, "Twic")  # past the lookasides
    k.NdisAllocateMemoryWithTag(1000, "Keep")
    k.NdisFreeMemory(va, 1000, 0)
    e = bugcheck(lambda: k.NdisFreeMemory(va, 1000, 0))
    assert (e.code, e.parameters[0]) == (0xC2, 0x07)


def test_ndis6_free_memory_ignores_length(k):
    driver, handle = ndis6(k)
    k.current_driver = driver
    va = k.NdisAllocateMemoryWithTagPriority(handle, 100, "Six ", NORMAL)
    k.NdisFreeMemory(va, 0, 0)  # Length is ignored for NdisAllocateMemoryWithTagPriority memory
    assert row(k, " xiS").NonPagedUsed == 0


# --- NdisAllocateMemoryWithTagPriority and the tagged frees ---------------------------------

def test_priority_allocation_and_tagged_free(k):
    driver, handle = ndis6(k)
    va = k.NdisAllocateMemoryWithTagPriority(handle, 300, "Prio", NORMAL)
    assert k.nonpaged_pool.contains(va)
    e_free = k.NdisFreeMemoryWithTagPriority(handle, va, "Prio")
    assert e_free is None and row(k, "oirP").NonPagedUsed == 0


def test_priority_low_fails_first_high_only_when_exhausted(k):
    _, handle = ndis6(k)
    pool = k.nonpaged_pool
    held = []
    while pool.pages_in_use <= 0.8 * pool.page_count:
        held.append(k.NdisAllocateMemoryWithTagPriority(handle, 4096, "Fill", HIGH))
    assert k.NdisAllocateMemoryWithTagPriority(handle, 100, "Prio", LOW) == 0
    assert k.NdisAllocateMemoryWithTagPriority(handle, 100, "Prio", NORMAL)
    while k.NdisAllocateMemoryWithTagPriority(handle, 4096, "Fill", HIGH):
        pass
    assert k.NdisAllocateMemoryWithTagPriority(handle, 8192, "Prio", HIGH) == 0
    k.NdisFreeMemoryWithTagPriority(handle, held.pop(), "Fill")
    k.NdisFreeMemoryWithTagPriority(handle, held.pop(), "Fill")
    assert k.NdisAllocateMemoryWithTagPriority(handle, 8192, "Prio", HIGH)


def test_tagged_free_with_the_wrong_tag_is_c2_0a(k):
    _, handle = ndis6(k)
    # Only a protected tag is compared on free (Windows 7).
    va = k.NdisAllocateMemoryWithTagPriority(handle, 100, tag_value("Prio") | ntpool.PROTECTED_POOL,
                                             NORMAL)
    e = bugcheck(lambda: k.NdisFreeMemoryWithTagPriority(handle, va, "Othr"))
    assert e.parameters == (0x0A, va, tag_value("Prio"), tag_value("Othr"))


def test_ndis_free_memory_with_tag(k):
    _, va = k.NdisAllocateMemoryWithTag(100, "WTag")
    k.NdisFreeMemoryWithTag(va, "WTag")
    assert row(k, "gaTW").NonPagedUsed == 0
    _, va = k.NdisAllocateMemoryWithTag(100, tag_value("WTag") | ntpool.PROTECTED_POOL)
    e = bugcheck(lambda: k.NdisFreeMemoryWithTag(va, "Othr"))
    assert e.parameters[0] == 0x0A


@pytest.mark.parametrize("handle", [0, 12345, "adapter", None])
def test_unknown_ndis_handle_is_a_plain_error(k, handle):
    with pytest.raises(ValueError, match="NdisHandle"):
        k.NdisAllocateMemoryWithTagPriority(handle, 100, "Prio", NORMAL)


@pytest.mark.parametrize("priority, error", [(5, ValueError), ("Low", TypeError)])
def test_bad_priority_is_a_plain_error(k, priority, error):
    _, handle = ndis6(k)
    with pytest.raises(error, match="Priority"):
        k.NdisAllocateMemoryWithTagPriority(handle, 100, "Prio", priority)


# --- versions ---------------------------------------------------------------------------------

def test_registration_records_the_ndis_version(k):
    driver, handle = ndis6(k, minor=30)
    assert driver.ndis_version == (6, 30) and handle
    old, _ = ndis5(k)
    assert old.ndis_version == (5, 1)


def test_wrong_versions_are_ndis_status_bad_version(k):
    status, handle = k.NdisMRegisterMiniportDriver(Driver(), "", None,
                                                   NDIS_MINIPORT_DRIVER_CHARACTERISTICS(5, 1))
    assert (status, handle) == (ntpool.NdisStatus.NDIS_STATUS_BAD_VERSION, 0)
    wrapper = k.NdisMInitializeWrapper(Driver())
    assert k.NdisMRegisterMiniport(wrapper, NDIS_MINIPORT_CHARACTERISTICS(6, 0)) == 0xC0010004


@pytest.mark.parametrize("call", [lambda k: k.NdisAllocateMemoryWithTag(100, "Fred"),
                                  lambda k: k.NdisAllocateMemory(100, 0, -1)])
def test_ndis6_driver_calling_an_ndis5_routine_gets_a_clear_diagnostic(k, call):
    driver, _ = ndis6(k)
    k.current_driver = driver
    with pytest.raises(ntpool.NdisVersionError, match=r"NDIS 5\.x routine.*e1000\.sys.*NDIS 6\.20"):
        call(k)
    assert not k.halted and k.pool_tags() == []


def test_ndis5_driver_may_call_ndis5_routines(k):
    driver, _ = ndis5(k)
    k.current_driver = driver
    status, va = k.NdisAllocateMemoryWithTag(100, "Fred")
    assert status == SUCCESS
    k.NdisFreeMemory(va, 100, 0)


def test_free_with_tag_priority_needs_ndis_6_20(k):
    driver, handle = ndis6(k, minor=0)
    k.current_driver = driver
    va = k.NdisAllocateMemoryWithTagPriority(handle, 100, "Prio", NORMAL)
    with pytest.raises(ntpool.NdisVersionError, match="6.20"):
        k.NdisFreeMemoryWithTagPriority(handle, va, "Prio")
    k.NdisFreeMemory(va, 100, 0)


def test_registration_misuse(k):
    with pytest.raises(TypeError, match="MajorNdisVersion"):
        k.NdisMRegisterMiniportDriver(Driver(), "", None, (6, 0))
    with pytest.raises(ValueError, match="DriverObject"):
        k.NdisMRegisterMiniportDriver(None, "", None, NDIS_MINIPORT_DRIVER_CHARACTERISTICS(6, 0))
    with pytest.raises(ValueError, match="NdisWrapperHandle"):
        k.NdisMRegisterMiniport(99, NDIS_MINIPORT_CHARACTERISTICS(5, 1))


# --- memory helpers ----------------------------------------------------------------------------

def test_zero_move_and_fill_memory(k):
    _, a = k.NdisAllocateMemoryWithTag(64, "Help")
    _, b = k.NdisAllocateMemoryWithTag(64, "Help")
    k.NdisFillMemory(a, 64, 0x5A)
    k.NdisMoveMemory(b, a, 64)
    assert k.read(b, 64) == b"\x5a" * 64
    k.NdisZeroMemory(a, 64)
    assert k.read(a, 64) == bytes(64)
    with pytest.raises(ValueError, match="Length"):
        k.NdisZeroMemory(a, -1)


@pytest.mark.parametrize("bad, error", [("0x10", TypeError), (-1, ValueError), (1 << 64, ValueError)])
def test_ndis_free_names_a_bad_virtual_address(k, bad, error):
    with pytest.raises(error, match="VirtualAddress"):
        k.NdisFreeMemory(bad, 16, 0)
    with pytest.raises(error, match="VirtualAddress"):
        k.NdisFreeMemoryWithTag(bad, "Tag1")
    assert not k.halted


# --- contiguous memory comes from the one allocator entry -------------------------------------

class ContiguousDriver:
    name = "dma.sys"

    def DriverEntry(self, k, RegistryPath):
        self.blocks = []
        return 0

    def take(self, k, length):
        status, va = k.NdisAllocateMemory(length, NDIS_MEMORY_CONTIGUOUS, -1)
        if va:
            self.blocks.append(va)
        return status, va

    def DriverUnload(self, k):
        pass  # BUG: the contiguous blocks leak


def test_contiguous_memory_records_its_call_site_and_driver(k):
    driver = ContiguousDriver()
    k.load_driver(driver)
    status, va = driver.take(k, 3 * 4096)
    assert status == SUCCESS
    site = k.allocation_site(va)
    assert site.function == "ContiguousDriver.take" and k.allocation_driver(va).name == "dma.sys"
    k.NdisFreeMemory(va, 3 * 4096, NDIS_MEMORY_CONTIGUOUS)
    assert va not in k.nonpaged_pool.big_sites and row(k, "NDam").NonPagedUsed == 0


def test_verifier_pool_tracking_catches_a_contiguous_leak(k):
    driver = ContiguousDriver()
    k.verifier.enable("dma.sys", pool_tracking=True)
    k.load_driver(driver)
    _, va = driver.take(k, 2 * 4096)
    assert [row.address for row in k.verifier.outstanding("dma.sys")] == [va]
    e = bugcheck(lambda: k.unload_driver(driver))
    assert (e.code, e.parameters[0], e.parameters[3]) == (0xC4, 0x62, 1)


def test_verifier_low_resources_fails_contiguous_requests_and_special_pool_leaves_them(k):
    driver = ContiguousDriver()
    k.verifier.enable("dma.sys", systematic_low_resources=True, special_pool=True)
    k.load_driver(driver)
    assert driver.take(k, 4096) == (FAILURE, 0)  # the site's first call is failed
    status, va = driver.take(k, 4096)
    assert status == SUCCESS and k.nonpaged_pool.contains(va)  # not special pool's pages
    assert k.nonpaged_pool.page_kind_of(va) == PAGE_RESERVED
    k.NdisFreeMemory(va, 4096, NDIS_MEMORY_CONTIGUOUS)
