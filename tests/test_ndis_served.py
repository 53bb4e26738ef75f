"""NDIS's memory routines are functions made for each machine (``routines.ndis.
serve_memory_routines_directly``, issue 18): what they hold and the priority test they make
inline answer exactly as the methods did, and nothing else about the routines changes."""

import inspect
import sys

import pytest

import ntpool
from ntpool.routines import registry
from ntpool.routines.ndis import NDIS_MINIPORT_CHARACTERISTICS, NDIS_MINIPORT_DRIVER_CHARACTERISTICS, NdisRoutines

SERVED = ("NdisAllocateMemoryWithTag", "NdisAllocateMemory", "NdisAllocateMemoryWithTagPriority",
          "NdisFreeMemory", "NdisFreeMemoryWithTag", "NdisFreeMemoryWithTagPriority")
SUCCESS = 0
LOW, NORMAL, HIGH = 0, 16, 32
MiB = 1 << 20


@pytest.fixture(params=["7", "11"])
def k(request):
    return ntpool.Kernel(nonpaged_pool_bytes=4 * MiB, paged_pool_bytes=4 * MiB, windows=request.param)


class Miniport:
    name = "e1000.sys"


def ndis6(k, minor=20):
    driver = Miniport()
    status, handle = k.NdisMRegisterMiniportDriver(driver, "\\Registry\\e1000", None,
                                                   NDIS_MINIPORT_DRIVER_CHARACTERISTICS(6, minor))
    assert status == SUCCESS
    return driver, handle


def row(k, display):
    return [r for r in k.pool_tags() if r.Tag == display][0]


@pytest.mark.parametrize("name", SERVED)
def test_each_routine_keeps_its_name_docstring_signature_and_declaration(k, name):
    method = getattr(NdisRoutines, name)
    served = getattr(k, name)
    assert served is k.__dict__[name]  # the machine's own function, not the method
    assert (served.__name__, served.__qualname__, served.__doc__, served.__module__) == \
        (method.__name__, method.__qualname__, method.__doc__, method.__module__)
    assert list(inspect.signature(served).parameters) == list(inspect.signature(method).parameters)[1:]
    assert registry.lookup(name).function is method  # the registry still declares the method


def test_each_machine_serves_its_own_routines():
    first, second = ntpool.Kernel(), ntpool.Kernel(windows="11")
    _, va = first.NdisAllocateMemoryWithTag(100, "Mine")
    assert first.NdisAllocateMemoryWithTag is not second.NdisAllocateMemoryWithTag
    assert second.NdisAllocateMemoryWithTag(100, "Mine")[0] == SUCCESS
    first.NdisFreeMemory(va, 100, 0)
    assert row(first, "eniM").NonPagedUsed == 0 and row(second, "eniM").NonPagedUsed > 0


def _site_line(k, va) -> int:
    return k.call_sites.table[k.pool.site_of(va)].lineno


def test_the_call_site_is_the_callers_line_called_directly_or_through_the_class(k):
    _, handle = ndis6(k)
    line = sys._getframe().f_lineno + 1
    served = [k.NdisAllocateMemoryWithTag(100, "Site")[1],
              k.NdisAllocateMemory(100, 0, -1)[1],
              k.NdisAllocateMemoryWithTagPriority(handle, 100, "Site", NORMAL),
              ntpool.Kernel.NdisAllocateMemoryWithTag(k, 100, "Site")[1],
              ntpool.Kernel.NdisAllocateMemory(k, 100, 0, -1)[1],
              ntpool.Kernel.NdisAllocateMemoryWithTagPriority(k, handle, 100, "Site", NORMAL)]
    assert [_site_line(k, va) for va in served] == list(range(line, line + 6))
    # The class's methods free as the machine's functions do.
    ntpool.Kernel.NdisFreeMemory(k, served[0], 100, 0)
    ntpool.Kernel.NdisFreeMemoryWithTag(k, served[1], "NDam")
    ntpool.Kernel.NdisFreeMemoryWithTagPriority(k, handle, served[2], "Site")
    assert (row(k, "etiS").NonPagedFrees, row(k, "NDam").NonPagedFrees) == (2, 1)


def test_a_halted_machine_refuses_them(k):
    with pytest.raises(ntpool.BugCheck):
        k.ExFreePoolWithTag(0x1000, "Halt")  # a user-mode address: 0xC2
    for name in SERVED:
        with pytest.raises(ntpool.MachineHalted, match=name):
            getattr(k, name)


# --- the priority test made inline -----------------------------------------------------------

@pytest.mark.parametrize("length", [100, 4000, 5000])
def test_priority_answers_as_refuses_for_priority_at_every_fill(k, length):
    """The routine's own test of the priority table (small requests) and
    ``refuses_for_priority`` (big ones, and the table's source) agree page by page up to a
    full pool, for every EX_POOL_PRIORITY."""
    _, handle = ndis6(k)
    allocator, pool = k.pool, k.nonpaged_pool
    priorities = sorted(int(p) for p in ntpool.PoolPriority)
    seen = set()
    while True:
        for priority in priorities:
            refused = allocator.refuses_for_priority(0, length, "Prio", priority)
            va = k.NdisAllocateMemoryWithTagPriority(handle, length, "Prio", priority)
            if va:
                k.NdisFreeMemoryWithTagPriority(handle, va, "Prio")
            # (a request tried may still fail when no room is left: never the reverse)
            assert not (refused and va), (pool.pages_in_use, priority)
            assert refused or va or not k.ExAllocatePoolWithTag(0, length, "Room"), \
                (pool.pages_in_use, priority)
            seen.add((priority, refused))
        if not k.NdisAllocateMemoryWithTagPriority(handle, 4096, "Fill", HIGH):
            break
    assert {(LOW, False), (LOW, True), (HIGH, False)} <= seen and (HIGH, True) not in seen


@pytest.mark.parametrize("priority, error", [(False, TypeError), (True, TypeError), (16.0, TypeError),
                                             ("Normal", TypeError), (5, ValueError), (-16, ValueError),
                                             (1 << 70, ValueError)])
def test_no_ex_pool_priority_is_the_same_plain_error_and_nothing_is_allocated(k, priority, error):
    _, handle = ndis6(k)
    with pytest.raises(error, match="Priority"):
        k.NdisAllocateMemoryWithTagPriority(handle, 100, "Prio", priority)
    assert not k.halted and [r for r in k.pool_tags() if r.Tag == "oirP"] == []


@pytest.mark.parametrize("length, error", [(-1, ValueError), (1 << 32, ValueError), (True, TypeError),
                                           (100.0, TypeError)])
def test_a_length_that_is_no_uint_is_named_before_the_priority(k, length, error):
    _, handle = ndis6(k)
    with pytest.raises(error, match="Length"):
        k.NdisAllocateMemoryWithTagPriority(handle, length, "Prio", 5)  # (5: no priority either)


def test_above_dispatch_level_the_bug_check_comes_first_tried_or_refused(k):
    _, handle = ndis6(k)
    k.KeRaiseIrql(ntpool.DISPATCH_LEVEL + 1)
    e = pytest.raises(ntpool.BugCheck, k.NdisAllocateMemoryWithTagPriority, handle, 100, "Irql", NORMAL)
    assert (e.value.code, e.value.parameters[0]) == (0xC2, 0x08)  # ALLOCATE_AT_BAD_IRQL


def test_a_refused_request_meets_the_callers_bug_check_first():
    k = ntpool.Kernel(nonpaged_pool_bytes=4 * MiB, paged_pool_bytes=4 * MiB)
    _, handle = ndis6(k)
    pool = k.nonpaged_pool
    while pool.pages_in_use <= 0.8 * pool.page_count:
        assert k.NdisAllocateMemoryWithTagPriority(handle, 4096, "Fill", HIGH)
    assert k.NdisAllocateMemoryWithTagPriority(handle, 100, "Prio", LOW) == 0  # refused
    k.KeRaiseIrql(ntpool.DISPATCH_LEVEL + 1)
    e = pytest.raises(ntpool.BugCheck, k.NdisAllocateMemoryWithTagPriority, handle, 100, "Prio", LOW)
    assert (e.value.code, e.value.parameters[0]) == (0xC2, 0x08)


def test_the_routines_follow_driver_verifier_switched_on_after_the_machine_was_made(k):
    """The routines hold the allocator's fast paths, whose tables a layer changes in place:
    a verified driver's NDIS allocations reach the Verifier."""
    class Verified:
        name = "verified.sys"

        def DriverEntry(self, k, path):
            return 0

        def take(self, k):
            return k.NdisAllocateMemoryWithTag(100, "Veri")[1]

    k.verifier.enable("verified.sys", pool_tracking=True)
    driver = Verified()
    k.load_driver(driver)
    va = driver.take(k)
    assert [r.address for r in k.verifier.outstanding("verified.sys")] == [va]
    k.NdisFreeMemory(va, 100, 0)
    assert k.verifier.outstanding("verified.sys") == []


# --- NdisFreeMemory's common call, for a running driver -----------------------------------

def ndis5(k):
    class Old:
        name = "old5.sys"
    driver = Old()
    wrapper = k.NdisMInitializeWrapper(driver, "\\Registry\\old5")
    assert k.NdisMRegisterMiniport(wrapper, NDIS_MINIPORT_CHARACTERISTICS(5, 1)) == SUCCESS
    return driver


@pytest.mark.parametrize("registered", [True, False])
def test_a_running_ndis5_or_unregistered_drivers_length_is_compared(k, registered):
    k.current_driver = ndis5(k) if registered else Miniport()
    _, va = k.NdisAllocateMemoryWithTag(100, "Lens")
    held = row(k, "sneL").NonPagedUsed
    with pytest.raises(ntpool.NdisContractError, match="Length 300"):
        k.NdisFreeMemory(va, 300, 0)
    with pytest.raises(TypeError, match="MemoryFlags"):
        k.NdisFreeMemory(va, 100, False)
    assert row(k, "sneL").NonPagedUsed == held > 0  # nothing freed
    k.NdisFreeMemory(va, 100, 0)
    assert row(k, "sneL").NonPagedUsed == 0


def test_an_ndis6_driver_frees_with_any_length_and_keeps_its_version_checks(k):
    driver, handle = ndis6(k, minor=0)
    k.current_driver = driver
    va = k.NdisAllocateMemoryWithTagPriority(handle, 100, "Six ", NORMAL)
    with pytest.raises(ntpool.NdisVersionError, match="6.20"):
        k.NdisFreeMemoryWithTagPriority(handle, va, "Six ")
    with pytest.raises(ntpool.NdisVersionError, match="NDIS 5"):
        k.NdisAllocateMemory(100, 0, -1)
    k.NdisFreeMemory(va, 300, 0)  # Length is not compared for an NDIS 6 driver
    assert row(k, " xiS").NonPagedUsed == 0
    va = k.NdisAllocateMemoryWithTagPriority(handle, 100, "Six ", NORMAL)
    k.NdisFreeMemory(va, 100, 0)  # (the allocation's own Length: freed as well)
    assert (row(k, " xiS").NonPagedUsed, row(k, " xiS").NonPagedFrees) == (0, 2)
    with pytest.raises(TypeError, match="MemoryFlags"):
        k.NdisFreeMemory(va, 100, 0.0)  # (the arguments still checked first)


# --- the tagged frees check the address only when the free raises ---------------------------

@pytest.mark.parametrize("bad, error", [("0x10", TypeError), (True, TypeError), (1.5, TypeError),
                                        (-1, ValueError), (1 << 64, ValueError)])
def test_a_tagged_free_names_a_bad_virtual_address_as_the_routine_does(k, bad, error):
    _, handle = ndis6(k)
    for free in (lambda: k.NdisFreeMemoryWithTag(bad, "Tag1"),
                 lambda: k.NdisFreeMemoryWithTagPriority(handle, bad, "Tag1"),
                 lambda: k.NdisFreeMemoryWithTag(bad, 2.5)):  # (the address named before the tag)
        with pytest.raises(error, match="VirtualAddress") as info:
            free()
        assert info.value.__context__ is None  # not raised while handling the free's own error
    with pytest.raises(ValueError, match="NdisHandle"):  # the handle checked before the address
        k.NdisFreeMemoryWithTagPriority(12345, bad, "Tag1")
    assert not k.halted


def test_a_tagged_free_of_a_good_address_keeps_the_frees_own_error_and_frees_nothing(k):
    _, handle = ndis6(k)
    _, va = k.NdisAllocateMemoryWithTag(100, "Keep")
    p = k.NdisAllocateMemoryWithTagPriority(handle, 100, "Keep", NORMAL)
    with pytest.raises(ntpool.TagError, match="pool tag must be"):
        k.NdisFreeMemoryWithTag(va, 2.5)
    with pytest.raises(ntpool.TagError, match="pool tag must be"):
        k.NdisFreeMemoryWithTagPriority(handle, p, 2.5)
    assert row(k, "peeK").NonPagedFrees == 0
    k.NdisFreeMemoryWithTag(va, "Keep")
    k.NdisFreeMemoryWithTagPriority(handle, p, "Keep")
    assert row(k, "peeK").NonPagedUsed == 0
    # A user-mode address is an address: the free's bug check (0xC2/0x40), as before.
    e = pytest.raises(ntpool.BugCheck, k.NdisFreeMemoryWithTagPriority, handle, 0x10000, "Keep")
    assert (e.value.code, e.value.parameters[0]) == (0xC2, 0x40)


# --- MemoryFlags 0 and HighestAcceptableAddress -1 tested by identity on the common calls ----

class Flags(int):
    """An int subclass: a UINT the checked way accepts, never the common call's object."""


@pytest.mark.parametrize("flags, highest, error", [
    (False, -1, TypeError), (0.0, -1, TypeError), (0, -1.0, TypeError), (0, True, TypeError),
    (0, -2, ValueError), (0, 1 << 64, ValueError), (-0.0, -1, TypeError)])
def test_values_equal_to_the_usual_ones_are_still_checked(k, flags, highest, error):
    with pytest.raises(error, match="MemoryFlags|HighestAcceptableAddress"):
        k.NdisAllocateMemory(100, flags, highest)
    assert [r for r in k.pool_tags() if r.Tag == "NDam"] == []


@pytest.mark.parametrize("flags, highest", [(Flags(0), -1), (0, Flags(0xFFFFFFFF)), (0, 0),
                                            (0, (1 << 64) - 1), (0, int("-1"))])
def test_other_valid_arguments_take_the_checked_way_to_the_same_allocation(k, flags, highest):
    line = sys._getframe().f_lineno + 1
    status, va = k.NdisAllocateMemory(100, flags, highest)
    assert status == SUCCESS and k.nonpaged_pool.contains(va) and _site_line(k, va) == line
    with pytest.raises(TypeError, match="MemoryFlags"):
        k.NdisFreeMemory(va, 100, False)  # (equal to 0, not the int 0: nothing freed)
    with pytest.raises(ntpool.NdisContractError, match="Length 300"):
        k.NdisFreeMemory(va, 300, Flags(0))  # (the checked way compares the Length too)
    k.NdisFreeMemory(va, 100, Flags(0))
    assert row(k, "NDam").NonPagedUsed == 0


# --- the last handle found, tested by identity; Lengths past one 30-bit digit --------------

def test_a_handle_once_found_is_known_by_identity_and_anything_else_is_still_checked(k):
    _, handle = ndis6(k)
    va = k.NdisAllocateMemoryWithTagPriority(handle, 100, "Hand", NORMAL)  # the handle found
    # Values equal to it that are not it, and no handle at all, meet the full check after it
    # was found as before (nothing allocated or freed).
    for bad, error in ((float(handle), ValueError), (handle + 16, ValueError), (None, ValueError),
                       ("handle", ValueError), (True, ValueError)):
        with pytest.raises(error, match="NdisHandle"):
            k.NdisAllocateMemoryWithTagPriority(bad, 100, "Hand", NORMAL)
        with pytest.raises(error, match="NdisHandle"):
            k.NdisFreeMemoryWithTagPriority(bad, va, "Hand")
    assert (row(k, "dnaH").NonPagedAllocs, row(k, "dnaH").NonPagedFrees) == (1, 0)
    # The same value made anew is a handle NDIS gave out: found by the full check.
    same = int(str(handle))
    assert same == handle and same is not handle
    k.NdisFreeMemoryWithTagPriority(same, va, "Hand")
    # A second driver's handle is found in its turn, and the first one still is.
    _, other = ndis6(k)
    for each in (other, handle, other):
        k.NdisFreeMemoryWithTagPriority(each, k.NdisAllocateMemoryWithTagPriority(each, 100, "Hand", NORMAL),
                                        "Hand")
    assert row(k, "dnaH").NonPagedUsed == 0


def test_a_handle_checked_first_on_a_new_machine_is_never_taken_as_known():
    k = ntpool.Kernel()
    for bad in (None, 0, object()):  # the very first call: nothing is known yet
        with pytest.raises(ValueError, match="NdisHandle"):
            k.NdisAllocateMemoryWithTagPriority(bad, 100, "Hand", NORMAL)
    with pytest.raises(ValueError, match="NdisHandle"):
        ntpool.Kernel().NdisFreeMemoryWithTagPriority(None, 0x10, "Hand")


@pytest.mark.parametrize("length", [(1 << 30) - 1, 1 << 30, 0xFFFFFFFF])
def test_a_length_past_one_digit_takes_the_checked_way_to_the_same_answer(length):
    # Lengths up to 0x3FFFFFFF are taken inline, longer UINTs by _uint's check: every one is
    # tried (too much for this pool: NDIS_STATUS_FAILURE and nothing left behind).
    k = ntpool.Kernel(nonpaged_pool_bytes=4 * MiB, paged_pool_bytes=4 * MiB)
    assert k.NdisAllocateMemoryWithTag(length, "Long") == (ntpool.NdisStatus.NDIS_STATUS_FAILURE, 0)
    assert k.NdisAllocateMemory(length, 0, -1) == (ntpool.NdisStatus.NDIS_STATUS_FAILURE, 0)
    with pytest.raises(ValueError, match="UINT"):
        k.NdisAllocateMemoryWithTag(length + (1 << 32), "Long")
    assert not k.halted
