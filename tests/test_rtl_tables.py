"""AVL generic tables (routines/rtl_tables.py) from Python drivers: RTL_AVL_TABLE in memory at
the WDK's offsets, the driver's compare/allocate/free routines (Python callables here) called
for every element, the nodes a real AVL tree in the driver's pool; against a sorted model
under hypothesis."""

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ntpool
from ntpool.constants import BugCheckCode
from ntpool.errors import BugCheck
from ntpool.routines import rtl_tables as T
from ntpool.tags import tag_value

TAG = "Tabl"


class Driver:
    """A Python driver's table of ULONG keys with a ULONG64 value."""

    def __init__(self, k, fail=False):
        self.k = k
        self.fail = fail
        self.sizes = []
        self.freed = []
        self.table = k.ExAllocatePoolWithTag(0, T.RTL_AVL_TABLE_SIZE, "TblH")
        k.RtlInitializeGenericTableAvl(self.table, self.compare, self.allocate, self.free, 0x1234)

    def compare(self, k, table, first, second):
        a, b = (int.from_bytes(k.read(p, 4), "little") for p in (first, second))
        return T.GenericLessThan if a < b else T.GenericGreaterThan if a > b else T.GenericEqual

    def allocate(self, k, table, size):
        self.sizes.append(size)
        return 0 if self.fail else k.ExAllocatePoolWithTag(1, size, TAG)

    def free(self, k, table, buffer):
        self.freed.append(buffer)
        k.ExFreePoolWithTag(buffer, TAG)

    def key(self, value):
        cell = self.k.ExAllocatePoolWithTag(0, 12, "Key ")
        self.k.write(cell, struct.pack("<IQ", value, value * 10))
        return cell

    def insert(self, value):
        return self.k.RtlInsertElementGenericTableAvl(self.table, self.key(value), 12)

    def ids(self):
        out, element = [], self.k.RtlEnumerateGenericTableAvl(self.table, 1)
        while element:
            out.append(int.from_bytes(self.k.read(element, 4), "little"))
            element = self.k.RtlEnumerateGenericTableAvl(self.table, 0)
        return out


def machine():
    return ntpool.Kernel(nonpaged_pool_bytes=2 << 20, paged_pool_bytes=2 << 20)


def q(k, address):
    return int.from_bytes(k.read(address, 8), "little")


def check_tree(k, table):
    """The links are a binary search tree hanging from BalancedRoot.RightChild, each node's
    Parent pointing back, every Balance the heights' difference (-1, 0, 1); the height."""
    def walk(node, parent):
        if not node:
            return 0, []
        assert q(k, node + T.PARENT) == parent
        hl, left = walk(q(k, node + T.LEFT), node)
        hr, right = walk(q(k, node + T.RIGHT), node)
        balance = struct.unpack("b", k.read(node + T.BALANCE, 1))[0]
        assert balance == hr - hl and -1 <= balance <= 1
        key = int.from_bytes(k.read(node + T.LINKS_SIZE, 4), "little")
        return 1 + max(hl, hr), left + [key] + right
    assert q(k, table + T.PARENT) == table  # BalancedRoot.Parent is BalancedRoot
    height, keys = walk(q(k, table + T.RIGHT), table)
    assert keys == sorted(keys)
    return height, keys


def test_the_table_is_the_wdks_structure_and_asks_for_links_plus_data():
    k = machine()
    driver = Driver(k)
    table = driver.table
    assert q(k, table + T.TABLE_CONTEXT) == 0x1234
    assert all(q(k, table + offset) for offset in (T.COMPARE_ROUTINE, T.ALLOCATE_ROUTINE, T.FREE_ROUTINE))
    assert k.RtlIsGenericTableEmptyAvl(table) == 1
    element, new = driver.insert(5)
    assert new == 1 and driver.sizes == [T.LINKS_SIZE + 12]  # sizeof(RTL_BALANCED_LINKS) + data
    assert k.read(element, 12) == struct.pack("<IQ", 5, 50)
    assert q(k, table + T.RIGHT) == element - T.LINKS_SIZE  # the root hangs on the right
    assert struct.unpack_from("<I", k.read(table + T.NUMBER_OF_ELEMENTS, 4))[0] == 1
    assert driver.insert(5) == (element, 0)  # equal: the one already there, nothing allocated
    assert len(driver.sizes) == 1
    # The nodes are the driver's pool, under its tag.
    assert {r.TagUlong: r for r in k.pool.tracker.snapshot()}[tag_value(TAG)].PagedAllocs == 1


def test_lookup_delete_and_the_free_routine():
    k = machine()
    driver = Driver(k)
    for value in (8, 3, 10, 1, 6, 14, 4, 7, 13):
        driver.insert(value)
    assert driver.ids() == [1, 3, 4, 6, 7, 8, 10, 13, 14]
    found = k.RtlLookupElementGenericTableAvl(driver.table, driver.key(6))
    assert k.read(found + 4, 8) == struct.pack("<Q", 60)
    assert k.RtlLookupElementGenericTableAvl(driver.table, driver.key(5)) == 0
    eight = k.RtlLookupElementGenericTableAvl(driver.table, driver.key(8))
    assert k.RtlDeleteElementGenericTableAvl(driver.table, driver.key(8)) == 1  # two children
    assert driver.freed == [eight - T.LINKS_SIZE]  # the node, as the allocate routine gave it
    assert k.RtlDeleteElementGenericTableAvl(driver.table, driver.key(8)) == 0
    assert driver.ids() == [1, 3, 4, 6, 7, 10, 13, 14]
    check_tree(k, driver.table)
    assert k.RtlNumberGenericTableElementsAvl(driver.table) == 8
    assert [int.from_bytes(k.read(k.RtlGetElementGenericTableAvl(driver.table, i), 4), "little")
            for i in range(8)] == [1, 3, 4, 6, 7, 10, 13, 14]
    assert k.RtlGetElementGenericTableAvl(driver.table, 8) == 0


def test_enumeration_without_splaying_keeps_its_key_in_the_callers_memory():
    k = machine()
    driver = Driver(k)
    for value in range(20, 0, -3):
        driver.insert(value)
    restart = k.ExAllocatePoolWithTag(0, 8, "Rstr")
    k.write(restart, bytes(8))
    seen = []
    while True:
        element = k.RtlEnumerateGenericTableWithoutSplayingAvl(driver.table, restart)
        if not element:
            break
        assert q(k, restart) == element - T.LINKS_SIZE
        seen.append(int.from_bytes(k.read(element, 4), "little"))
    assert seen == sorted(range(20, 0, -3))


def test_an_allocate_routine_that_fails_makes_the_insert_null():
    k = machine()
    driver = Driver(k, fail=True)
    assert driver.insert(1) == (0, 0)
    assert k.RtlIsGenericTableEmptyAvl(driver.table) == 1


def test_a_table_the_driver_never_empties_is_its_leak():
    k = machine()
    driver = Driver(k)
    for value in range(10):
        driver.insert(value)
    row = {r.TagUlong: r for r in k.pool.tracker.snapshot()}[tag_value(TAG)]
    assert row.PagedAllocs - row.PagedFrees == 10
    while not k.RtlIsGenericTableEmptyAvl(driver.table):
        element = k.RtlGetElementGenericTableAvl(driver.table, 0)
        assert k.RtlDeleteElementGenericTableAvl(driver.table, element) == 1
    row = {r.TagUlong: r for r in k.pool.tracker.snapshot()}[tag_value(TAG)]
    assert row.PagedAllocs == row.PagedFrees == 10


def test_a_table_over_freed_memory_faults():
    k = machine()
    table = k.ExAllocatePoolWithTag(0, 2 * 4096, "TblH")
    driver = Driver(k)
    k.RtlInitializeGenericTableAvl(table, driver.compare, driver.allocate, driver.free, 0)
    k.ExFreePoolWithTag(table, "TblH")
    with pytest.raises(BugCheck) as caught:
        k.RtlInsertElementGenericTableAvl(table, driver.key(1), 12)
    assert caught.value.code == BugCheckCode.PAGE_FAULT_IN_NONPAGED_AREA


@settings(max_examples=40, deadline=None)
@given(steps=st.lists(st.tuples(st.booleans(), st.integers(0, 40)), max_size=60))
def test_inserts_and_deletes_keep_a_balanced_search_tree_like_a_set(steps):
    k = machine()
    driver = Driver(k)
    model = set()
    for insert, value in steps:
        if insert:
            element, new = driver.insert(value)
            assert new == (value not in model) and element
            model.add(value)
        else:
            assert k.RtlDeleteElementGenericTableAvl(driver.table, driver.key(value)) == (value in model)
            model.discard(value)
        height, keys = check_tree(k, driver.table)
        assert keys == sorted(model)
        assert height <= 1.45 * (len(model) + 2).bit_length() + 1
    assert driver.ids() == sorted(model)
    assert k.RtlNumberGenericTableElementsAvl(driver.table) == len(model)
