"""ExAllocatePool2, ExAllocatePool3, ExFreePool2 and ExAllocatePoolWithTagPriority are
functions made for each machine (``routines.ex.serve_pool_routines_directly``, issue 18):
the usual call they make inline answers exactly as the methods did, everything else still
meets the checked way, and nothing else about the routines changes."""

import inspect
import sys

import pytest

import ntpool
from ntpool.constants import PoolFlags
from ntpool.routines import registry
from ntpool.routines.ex import POOL_EXTENDED_PARAMETER, ExecutiveRoutines
from ntpool.tags import tag_value

NP, PP = int(ntpool.PoolType.NonPagedPool), int(ntpool.PoolType.PagedPool)
NON_PAGED, PAGED = int(PoolFlags.POOL_FLAG_NON_PAGED), int(PoolFlags.POOL_FLAG_PAGED)
LOW, NORMAL, HIGH = 0, 16, 32
SERVED = ("ExAllocatePool2", "ExAllocatePool3", "ExFreePool2", "ExAllocatePoolWithTagPriority")
MiB = 1 << 20


@pytest.fixture(params=["7", "11"])
def k(request):
    return ntpool.Kernel(nonpaged_pool_bytes=4 * MiB, paged_pool_bytes=4 * MiB, windows=request.param)


def stop(call):
    with pytest.raises(ntpool.BugCheck) as info:
        call()
    return info.value


def counts(k, tag):
    return [(t.NonPagedAllocs, t.NonPagedFrees, t.PagedAllocs, t.PagedFrees) for t in k.pool_tags()
            if t.TagUlong == tag_value(tag)]


@pytest.mark.parametrize("name", SERVED)
def test_each_routine_keeps_its_name_docstring_signature_and_declaration(k, name):
    method = getattr(ExecutiveRoutines, name)
    served = getattr(k, name)
    assert served is k.__dict__[name]  # the machine's own function, not the method
    assert (served.__name__, served.__qualname__, served.__doc__, served.__module__) == \
        (method.__name__, method.__qualname__, method.__doc__, method.__module__)
    assert list(inspect.signature(served).parameters) == list(inspect.signature(method).parameters)[1:]
    assert registry.lookup(name).function is method  # the registry still declares the method


def test_a_halted_machine_refuses_them(k):
    with pytest.raises(ntpool.BugCheck):
        k.ExFreePoolWithTag(0x1000, "Halt")  # a user-mode address: 0xC2
    for name in SERVED + ("ExAllocateFromNPagedLookasideList", "ExFreeToLookasideListEx"):
        with pytest.raises(ntpool.MachineHalted, match=name):
            getattr(k, name)


def test_each_machine_serves_its_own_routines():
    first, second = ntpool.Kernel(), ntpool.Kernel(windows="11")
    va = first.ExAllocatePool2(NON_PAGED, 100, "Mine")
    assert first.ExAllocatePool2 is not second.ExAllocatePool2
    assert second.ExAllocatePoolWithTagPriority(NP, 100, "Mine", NORMAL)
    first.ExFreePool2(va, "Mine")
    assert counts(first, "Mine") == [(1, 1, 0, 0)] and counts(second, "Mine") == [(1, 0, 0, 0)]


def _site_line(k, va) -> int:
    return k.call_sites.table[k.pool.site_of(va)].lineno


def test_the_call_site_is_the_callers_line_called_directly_or_through_the_class(k):
    normal = POOL_EXTENDED_PARAMETER(ntpool.constants.PoolExtendedParameterType.PoolExtendedParameterPriority,
                                     Priority=NORMAL)
    line = sys._getframe().f_lineno + 1
    served = [k.ExAllocatePool2(NON_PAGED, 100, "Site"),
              k.ExAllocatePool3(NON_PAGED, 100, "Site", None, 0),
              k.ExAllocatePool3(NON_PAGED, 100, "Site", normal, 1),  # (the checked way)
              k.ExAllocatePoolWithTagPriority(NP, 100, "Site", NORMAL),
              k.ExAllocatePoolWithTagPriority(NP, 5000, "Site", LOW),  # (the checked way: big)
              ntpool.Kernel.ExAllocatePool2(k, NON_PAGED, 100, "Site"),
              ntpool.Kernel.ExAllocatePool3(k, NON_PAGED, 100, "Site"),
              ntpool.Kernel.ExAllocatePoolWithTagPriority(k, NP, 100, "Site", HIGH)]
    assert [_site_line(k, va) for va in served] == list(range(line, line + 8))
    for va in served[:4]:
        k.ExFreePool2(va, "Site")
    for va in served[4:]:
        ntpool.Kernel.ExFreePool2(k, va, "Site", None, 0)  # the class's method frees as well
    assert counts(k, "Site") == [(8, 8, 0, 0)]


def test_the_served_priority_routine_refuses_and_fails_as_the_checked_way(k):
    # Every Priority and NumberOfBytes the inline test does not take meets
    # refuses_for_priority's checks, with the same errors.
    with pytest.raises(TypeError, match="Priority"):
        k.ExAllocatePoolWithTagPriority(NP, 100, "Prio", True)  # a bool is no EX_POOL_PRIORITY
    with pytest.raises(TypeError, match="Priority"):
        k.ExAllocatePoolWithTagPriority(NP, 100, "Prio", 16.0)
    with pytest.raises(ValueError, match="Priority 17"):
        k.ExAllocatePoolWithTagPriority(NP, 100, "Prio", 17)
    with pytest.raises(TypeError, match="NumberOfBytes"):
        k.ExAllocatePoolWithTagPriority(NP, 100.0, "Prio", NORMAL)
    with pytest.raises(TypeError, match="PoolType"):
        k.ExAllocatePoolWithTagPriority(float(NP), 100, "Prio", NORMAL)
    assert counts(k, "Prio") == []  # nothing allocated by any of them
    # A table not made yet (the first request of paged pool) is made on the checked way.
    va = k.ExAllocatePoolWithTagPriority(PP, 100, "Prio", LOW)
    assert va and counts(k, "Prio") == [(0, 0, 1, 0)]
    k.ExFreePoolWithTag(va, "Prio")


def test_the_served_priority_routine_bug_checks_at_a_bad_irql(k):
    # Paged pool at DISPATCH_LEVEL is no pool type the fast path serves there: the checked
    # way's bug check, BAD_POOL_CALLER 0x08 (IRQL, pool type, bytes).
    k.KeRaiseIrql(ntpool.Irql.DISPATCH_LEVEL)
    e = stop(lambda: k.ExAllocatePoolWithTagPriority(PP, 100, "Prio", HIGH))
    assert (e.code, e.parameters) == (0xC2, (0x08, 2, PP, 100))


def test_the_served_pool2_routines_fail_as_the_checked_way(k):
    assert k.ExAllocatePool3(NON_PAGED, 100, 0, None, 0) == 0  # tag 0: NULL
    with pytest.raises(ntpool.NtStatusError):  # ... or raised with RAISE_ON_FAILURE
        k.ExAllocatePool3(NON_PAGED | int(PoolFlags.POOL_FLAG_RAISE_ON_FAILURE), 100, 0, None, 0)
    with pytest.raises(ValueError, match="ExtendedParametersCount"):
        k.ExAllocatePool3(NON_PAGED, 100, "Pool", None, 1)
    with pytest.raises(ValueError, match="ExtendedParametersCount"):
        k.ExAllocatePool3(NON_PAGED, 100, "Pool", None, False)  # False is no int 0 here
    va = k.ExAllocatePool3(NON_PAGED, 100, "Pool", None, 0)
    with pytest.raises(ValueError, match="secure-pool"):
        k.ExFreePool2(va, "Pool", POOL_EXTENDED_PARAMETER(0), 1)
    with pytest.raises(ValueError, match="ExtendedParametersCount"):
        k.ExFreePool2(va, "Pool", None, 0.0)
    k.ExFreePool2(va, "Pool", None, 0)
    e = stop(lambda: k.ExFreePool2(0x1000, "Pool", None, 0))  # ExFreePoolWithTag's stop
    generic = stop(lambda: ntpool.Kernel(windows=k.windows).ExFreePoolWithTag(0x1000, "Pool"))
    assert (e.code, e.parameters) == (generic.code, generic.parameters)
    assert e.code == 0xC2 and 0x1000 in e.parameters  # BAD_POOL_CALLER: a user-mode address


class Verified:
    name = "verified.sys"

    def DriverEntry(self, k, path):
        return 0

    def allocate(self, k):
        return [k.ExAllocatePool2(NON_PAGED, 100, "Veri"), k.ExAllocatePool3(NON_PAGED, 100, "Veri"),
                k.ExAllocatePoolWithTagPriority(NP, 100, "Veri", NORMAL)]


def test_driver_verifier_sees_every_call_of_the_served_routines(k):
    driver = Verified()
    k.load_driver(driver)
    k.verifier.enable("verified.sys", special_pool=True)
    addresses = driver.allocate(k)
    # Special pool puts each against its guard page: 100 bytes rounded to 112 end the page.
    assert [(va + 112) & 0xFFF for va in addresses] == [0, 0, 0]
    for va in addresses:
        k.ExFreePool2(va, "Veri")
    assert counts(k, "Veri") == [(3, 3, 0, 0)]
