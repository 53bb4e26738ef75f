"""Driver Verifier's usual calls take short ways (special pool's fill checked on the frame
itself, a reused slot's pages tested in the TLB, a known page table's PTE found inline, a
site's options looked up in place); anything else takes the general way. Each test runs
the same steps on two machines: one as drivers run it, and one made to take the general
way every time. Every result, bug check, byte of special pool, tracker count and frame
count must be the same."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ntpool
from ntpool.tags import tag_value
from ntpool.verifier import special_pool
from two_ways import outcome as _outcome

MiB = 1 << 20
PLAIN_TAG = tag_value("Spc1")
PROTECTED_TAG = tag_value("Prot") | 0x80000000
SLOTS = 4  # few slots: they are reused, and special pool runs out (allocations fall back)


class Driver:
    name = "buggy.sys"

    def DriverEntry(self, k, path):
        return 0

    def allocate(self, k, pool_type, size, tag):
        return k.ExAllocatePoolWithTag(pool_type, size, tag)

    def free(self, k, address, tag):
        k.ExFreePoolWithTag(address, tag)

    def write(self, k, address, data):
        k.write(address, data)


class _NoTableKnown(dict):
    """A page-table cache that never holds one: every PTE is found by a walk (_pte_address's
    general way)."""

    def get(self, key, default=None):
        return default

    def __setitem__(self, key, value):
        pass


class _NoSiteLookedUpInPlace(dict):
    """The verifier's site -> options cache as its hot paths see it: always a new site, so
    each asks ``options_for_site`` (which still finds what it stored)."""

    def get(self, key, default=None):
        return default


def _machine(windows: str, options: dict, general: bool):
    k = ntpool.Kernel(nonpaged_pool_bytes=4 * MiB, paged_pool_bytes=4 * MiB, windows=windows)
    driver = Driver()
    k.load_driver(driver)
    k.verifier.special_pool.resize(SLOTS)
    k.verifier.enable("buggy.sys", special_pool=True, **options)
    if general:
        k.space.page_tables = _NoTableKnown()
        k.verifier._site_options = _NoSiteLookedUpInPlace()
    return k, driver


def _state(k):
    special = k.verifier.special_pool
    pages = {key: bytes(k.read(allocation.page, 0x1000)) for key, allocation in special.live.items()}
    return (special.live, pages, [bytes(region.states) for region in special.regions],
            [list(region.freed) for region in special.regions], special.fallbacks,
            sorted((row.TagUlong, row.NonPagedAllocs, row.NonPagedFrees, row.NonPagedUsed,
                    row.PagedAllocs, row.PagedFrees, row.PagedUsed) for row in k.pool_tags()),
            k.physical.frames_used, sorted(vpn for vpn in k.space.tlb if vpn >= special.base >> 12),
            sorted(k.verifier.tracking.records.items()), sorted(k.verifier.uninitialized.shadows),
            [k.space.pte(region.base + page * 0x1000) for region in special.regions
             for page in range(2 * SLOTS)])


def _run(windows, options, steps, general):
    k, driver = _machine(windows, options, general)
    addresses, results = [], []
    for step in steps:
        kind = step[0]
        if kind == "allocate":
            _, pool_type, size, protected = step
            tag = PROTECTED_TAG if protected else PLAIN_TAG
            result = _outcome(lambda: driver.allocate(k, pool_type, size, tag))
            if result[0] == "ok" and result[1]:
                addresses.append((result[1], tag, size))
        elif not addresses:
            continue
        elif kind == "free":
            _, pick, right_tag = step
            address, tag, _ = addresses[pick % len(addresses)]
            result = _outcome(lambda: driver.free(k, address, tag if right_tag else PLAIN_TAG ^ 1))
        elif kind == "write":  # on an allocation's page: its bytes, slack, header (or past it)
            _, pick, offset, data = step
            address, _, _ = addresses[pick % len(addresses)]
            result = _outcome(lambda: driver.write(k, (address & ~0xFFF) + offset, data))
        else:  # a byte at an edge: of the allocation, its rounding, the header, the page
            _, pick, edge = step
            address, _, size = addresses[pick % len(addresses)]
            page = address & ~0xFFF
            target = (address - 1, address + size - 1, address + size, address + (-size & 15),
                      page + 15, page + 16, page + 4079, page + 4080, page + 4095)[edge]
            result = _outcome(lambda: driver.write(k, target, b"\x00"))
        results.append(result)
        if result[0] == "bugcheck":
            break
        results.append(_state(k))
    return results


ALLOCATE = st.tuples(st.just("allocate"), st.sampled_from([0, 1]),
                     st.one_of(st.integers(1, 48), st.integers(4060, 4100), st.integers(1, 4200)),
                     st.booleans())
FREE = st.tuples(st.just("free"), st.integers(0, 20), st.booleans())
EDGE = st.tuples(st.just("edge"), st.integers(0, 20), st.integers(0, 8))
WRITE = st.tuples(st.just("write"), st.integers(0, 20), st.integers(0, 4095),
                  st.binary(min_size=1, max_size=12))
# Allocations, damage at the edges the checks compare, and frees, most often.
STEPS = st.lists(st.one_of(ALLOCATE, ALLOCATE, FREE, FREE, EDGE, EDGE, WRITE), max_size=25)


def _general_ways(mp):
    mp.setattr(special_pool, "_fill_intact", lambda *args: False)  # every free: _check_pattern
    mp.setattr(special_pool, "_slot_mapped", lambda *args: True)  # every slot: _unmap_slot


@pytest.mark.parametrize("windows, options", [
    ("7", {}),
    ("7", {"special_pool_underruns": True, "pool_tracking": True}),
    ("10", {"uninitialized_memory": True}),
    ("10", {"special_pool_underruns": True, "pool_tracking": True}),
])
@settings(max_examples=60, deadline=None)
@given(steps=STEPS)
def test_special_pool_takes_the_general_ways_steps(windows, options, steps):
    usual = _run(windows, options, steps, general=False)
    with pytest.MonkeyPatch.context() as mp:
        _general_ways(mp)
        general = _run(windows, options, steps, general=True)
    assert usual == general


@pytest.mark.parametrize("underrun", [False, True])
@pytest.mark.parametrize("offset", [-17, -1, 0, 99, 100, 111, 112, 4078, 4079, 4080, 4095])
def test_each_byte_the_fill_check_compares_is_the_general_checks(underrun, offset):
    """A stray byte at each edge of the slack: found (or not) alike both ways."""
    steps = [("allocate", 0, 100, False), ("write", 0, offset, b"\x00"),
             ("free", 0, True)]
    usual = _run("7", {"special_pool_underruns": underrun}, steps, general=False)
    with pytest.MonkeyPatch.context() as mp:
        _general_ways(mp)
        general = _run("7", {"special_pool_underruns": underrun}, steps, general=True)
    assert usual == general


@pytest.mark.parametrize("windows", ["7", "10"])
def test_region_of_is_the_region_that_contains_the_address(windows):
    k = ntpool.Kernel(nonpaged_pool_bytes=4 * MiB, paged_pool_bytes=4 * MiB, windows=windows)
    special = k.verifier.special_pool
    edges = [edge + delta for region in special.regions for edge in (region.base, region.limit)
             for delta in (-1, 0, 1)] + [special.base + (1 << 31) - 1, 0, 1 << 64]
    for address in edges:
        scanned = next((region for region in special.regions if region.contains(address)), None)
        assert special.region_of(address) is scanned
