"""ExAllocatePoolWithTag and ExFreePoolWithTag are the allocator's fast paths themselves
(``routines.ex.serve_pool_routines_directly``): a driver's call reaches them with no Python
call in between, and nothing else about the routines changes."""

import inspect
import sys

import pytest

import ntpool
from ntpool.routines import registry
from ntpool.routines.ex import ExecutiveRoutines
from ntpool.tags import tag_value

NP = int(ntpool.PoolType.NonPagedPool)
DIRECT = ("ExAllocatePoolWithTag", "ExFreePoolWithTag")
DIRE = tag_value("Dire")


@pytest.fixture(params=["7", "11"])
def k(request):
    return ntpool.Kernel(windows=request.param)


@pytest.mark.parametrize("name", DIRECT)
def test_the_routine_keeps_its_name_docstring_and_signature(k, name):
    method = getattr(ExecutiveRoutines, name)
    served = getattr(k, name)
    assert served is k.__dict__[name]  # the machine's own function, not the method
    assert (served.__name__, served.__qualname__, served.__doc__, served.__module__) == \
        (method.__name__, method.__qualname__, method.__doc__, method.__module__)
    expected = list(inspect.signature(method).parameters)[1:]  # without self
    assert list(inspect.signature(served).parameters) == expected
    assert inspect.signature(served).return_annotation == inspect.signature(method).return_annotation
    # The registry still declares the method, with the WDK prototype.
    assert registry.lookup(name).function is method


def test_help_shows_the_wdk_routine(k):
    import pydoc
    text = pydoc.render_doc(k.ExAllocatePoolWithTag, renderer=pydoc.plaintext)
    assert "ExAllocatePoolWithTag(PoolType, NumberOfBytes, Tag) -> int" in text
    assert ExecutiveRoutines.ExAllocatePoolWithTag.__doc__ in text


def test_keywords_by_their_wdk_names_and_no_extra_argument(k):
    va = k.ExAllocatePoolWithTag(PoolType=NP, NumberOfBytes=100, Tag="Dire")
    assert va and any(t.TagUlong == DIRE for t in k.pool_tags())  # allocated and tracked
    with pytest.raises(TypeError):
        k.ExAllocatePoolWithTag(NP, 100, "Dire", 2)  # no caller depth a driver could pass
    k.ExFreePoolWithTag(P=va, Tag="Dire")
    assert [(t.NonPagedAllocs, t.NonPagedFrees) for t in k.pool_tags() if t.TagUlong == DIRE] == [(1, 1)]


def _site_line(k, va) -> int:
    return k.call_sites.table[k.pool.site_of(va)].lineno


def test_the_call_site_is_the_drivers_line_called_directly_or_through_the_class(k):
    line = sys._getframe().f_lineno + 1
    direct = k.ExAllocatePoolWithTag(NP, 100, "Dire")
    through_class = ntpool.Kernel.ExAllocatePoolWithTag(k, NP, 100, "Dire")
    assert _site_line(k, direct) == line
    assert _site_line(k, through_class) == line + 1
    # A routine built on it (ExAllocatePool) still walks out to the driver's line.
    line = sys._getframe().f_lineno + 1
    built = k.ExAllocatePool(NP, 100)
    assert _site_line(k, built) == line


def test_the_native_bridge_binds_each_served_function(k):
    # Every routine a machine serves as its own function (the Ex pair here, the NDIS memory
    # routines in test_ndis_served.py): the bridge a compiled driver calls binds that function.
    from ntpool.native.bindings import compile_handler

    class Machine:
        kernel = k

        @staticmethod
        def read_q(address):
            return 0

    served = [routine.name for routine in registry.routines() if routine.name in k.__dict__]
    assert set(DIRECT) | {"NdisAllocateMemoryWithTagPriority", "NdisFreeMemory"} <= set(served)
    for name in served:
        handler = compile_handler(Machine, registry.lookup(name))
        assert handler.__globals__["_f"] is k.__dict__[name], name


def test_a_halted_machine_refuses_them(k):
    with pytest.raises(ntpool.BugCheck):
        k.ExFreePoolWithTag(0x1000, "Dire")  # a user-mode address: 0xC2
    for name in DIRECT:
        with pytest.raises(ntpool.MachineHalted):
            getattr(k, name)


def test_each_machine_serves_its_own_pools():
    first, second = ntpool.Kernel(), ntpool.Kernel()
    va = first.ExAllocatePoolWithTag(NP, 100, "Dire")
    assert first.ExAllocatePoolWithTag is not second.ExAllocatePoolWithTag
    assert second.ExAllocatePoolWithTag(NP, 100, "Dire")
    first.ExFreePoolWithTag(va, "Dire")
    counts = {name: [(t.NonPagedAllocs, t.NonPagedFrees) for t in machine.pool_tags()
                     if t.TagUlong == DIRE] for name, machine in (("first", first), ("second", second))}
    assert counts == {"first": [(1, 1)], "second": [(1, 0)]}


class Looper:
    """A driver allocating from one line, as a driver does in a loop."""

    name = "looper.sys"

    def DriverEntry(self, k, RegistryPath):
        return 0

    def allocate(self, k):
        return k.ExAllocatePoolWithTag(NP, 100, "Loop")


@pytest.mark.parametrize("windows", ["7", "11"])
def test_the_last_site_kept_is_forgotten_when_a_driver_loads(windows):
    # The fast path keeps the last indexed call site; loading the driver whose code made
    # the call re-resolves it (now the driver's), so the kept one must not answer.
    k = ntpool.Kernel(windows=windows)
    driver = Looper()
    before = [k.pool.site_of(driver.allocate(k)) for _ in range(3)]
    assert len(set(before)) == 1 and k.call_sites.owner(before[0]) is None
    loaded = k.load_driver(driver)
    after = [k.pool.site_of(driver.allocate(k)) for _ in range(3)]
    assert len(set(after)) == 1 and k.call_sites.owner(after[0]) is loaded


def test_a_routine_built_on_another_keeps_each_callers_site(k):
    # ExAllocatePool's own frame calls the fast path from one instruction for every caller:
    # its site is its caller's, never kept as the last site.
    sites = []
    for _ in range(2):
        line = sys._getframe().f_lineno + 1
        first = k.ExAllocatePool(NP, 100)
        second = k.ExAllocatePool(NP, 100)
        sites.append((_site_line(k, first), _site_line(k, second)))
    assert sites == [(line, line + 1)] * 2
