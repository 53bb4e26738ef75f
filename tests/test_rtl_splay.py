"""Splay-tree generic tables (routines/rtl_splay.py) from Python drivers: RTL_GENERIC_TABLE in
memory at the WDK's offsets, the driver's routines called for each element, a search tree
whose last element found is splayed to the root, the insertion order kept on its list;
against a model under hypothesis."""

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

import ntpool
from ntpool.routines import rtl_splay as S
from ntpool.routines import rtl_tables as T
from ntpool.tags import tag_value

TAG = "Splt"


class Driver:
    def __init__(self, k, fail=False):
        self.k = k
        self.fail = fail
        self.sizes = []
        self.table = k.ExAllocatePoolWithTag(0, S.RTL_GENERIC_TABLE_SIZE, "TblH")
        k.RtlInitializeGenericTable(self.table, self.compare, self.allocate, self.free, 0)

    def compare(self, k, table, first, second):
        a, b = (int.from_bytes(k.read(p, 4), "little") for p in (first, second))
        return T.GenericLessThan if a < b else T.GenericGreaterThan if a > b else T.GenericEqual

    def allocate(self, k, table, size):
        self.sizes.append(size)
        return 0 if self.fail else k.ExAllocatePoolWithTag(1, size, TAG)

    def free(self, k, table, buffer):
        k.ExFreePoolWithTag(buffer, TAG)

    def key(self, value):
        cell = self.k.ExAllocatePoolWithTag(0, 8, "Key ")
        self.k.write(cell, struct.pack("<II", value, value * 3))
        return cell

    def insert(self, value):
        return self.k.RtlInsertElementGenericTable(self.table, self.key(value), 8)


def q(k, address):
    return int.from_bytes(k.read(address, 8), "little")


def keys_in_order(k, table):
    """The tree's keys in order, checking each link's Parent (a root's is itself)."""
    def walk(node, parent):
        if not node:
            return []
        assert q(k, node + S.S_PARENT) == parent
        key = int.from_bytes(k.read(node + S.NODE_HEADER, 4), "little")
        return walk(q(k, node + S.S_LEFT), node) + [key] + walk(q(k, node + S.S_RIGHT), node)
    root = q(k, table + S.TABLE_ROOT)
    return walk(root, root) if root else []


def insertion_order(k, table):
    head = table + S.INSERT_ORDER_LIST
    out, entry = [], q(k, head)
    while entry != head:
        assert q(k, q(k, entry) + 8) == entry  # Flink's Blink points back
        out.append(int.from_bytes(k.read(entry - S.NODE_LIST + S.NODE_HEADER, 4), "little"))
        entry = q(k, entry)
    return out


def test_the_table_layout_the_node_header_and_splaying():
    k = ntpool.Kernel(nonpaged_pool_bytes=1 << 20, paged_pool_bytes=1 << 20)
    driver = Driver(k)
    table = driver.table
    assert q(k, table + S.INSERT_ORDER_LIST) == table + S.INSERT_ORDER_LIST
    assert k.RtlIsGenericTableEmpty(table) == 1
    for value in (5, 2, 9, 7):
        element, new = driver.insert(value)
        assert new == 1 and q(k, table + S.TABLE_ROOT) == element - S.NODE_HEADER  # splayed up
    assert driver.sizes == [S.NODE_HEADER + 8] * 4  # RTL_SPLAY_LINKS + LIST_ENTRY + the data
    assert driver.insert(9)[1] == 0 and len(driver.sizes) == 4
    found = k.RtlLookupElementGenericTable(table, driver.key(2))
    assert found and q(k, table + S.TABLE_ROOT) == found - S.NODE_HEADER
    assert k.read(found + 4, 4) == struct.pack("<I", 6)
    assert keys_in_order(k, table) == [2, 5, 7, 9]
    assert insertion_order(k, table) == [5, 2, 9, 7]
    assert [int.from_bytes(k.read(k.RtlGetElementGenericTable(table, i), 4), "little")
            for i in range(4)] == [5, 2, 9, 7]  # insertion order, as Windows counts
    seen, element = [], k.RtlEnumerateGenericTable(table, 1)
    while element:
        seen.append(int.from_bytes(k.read(element, 4), "little"))
        element = k.RtlEnumerateGenericTable(table, 0)
    assert seen == [2, 5, 7, 9]
    restart = k.ExAllocatePoolWithTag(0, 8, "Rstr")
    k.write(restart, bytes(8))
    seen = []
    while (element := k.RtlEnumerateGenericTableWithoutSplaying(table, restart)):
        seen.append(int.from_bytes(k.read(element, 4), "little"))
    assert seen == [2, 5, 7, 9]
    assert k.RtlDeleteElementGenericTable(table, driver.key(5)) == 1
    assert k.RtlDeleteElementGenericTable(table, driver.key(5)) == 0
    assert keys_in_order(k, table) == [2, 7, 9] and insertion_order(k, table) == [2, 9, 7]
    row = {r.TagUlong: r for r in k.pool.tracker.snapshot()}[tag_value(TAG)]
    assert (row.PagedAllocs, row.PagedFrees) == (4, 1)


def test_a_failed_allocation_inserts_nothing():
    k = ntpool.Kernel(nonpaged_pool_bytes=1 << 20, paged_pool_bytes=1 << 20)
    driver = Driver(k, fail=True)
    assert driver.insert(3) == (0, 0) and k.RtlNumberGenericTableElements(driver.table) == 0


@settings(max_examples=40, deadline=None)
@given(steps=st.lists(st.tuples(st.sampled_from(["insert", "delete", "lookup"]), st.integers(0, 30)),
                      max_size=60))
def test_the_splay_tree_stays_a_search_tree_like_a_set(steps):
    k = ntpool.Kernel(nonpaged_pool_bytes=1 << 20, paged_pool_bytes=1 << 20)
    driver = Driver(k)
    model, order = set(), []
    for action, value in steps:
        if action == "insert":
            assert driver.insert(value)[1] == (value not in model)
            if value not in model:
                order.append(value)
            model.add(value)
        elif action == "delete":
            assert k.RtlDeleteElementGenericTable(driver.table, driver.key(value)) == (value in model)
            if value in model:
                order.remove(value)
            model.discard(value)
        else:
            assert bool(k.RtlLookupElementGenericTable(driver.table, driver.key(value))) == (value in model)
        assert keys_in_order(k, driver.table) == sorted(model)
        assert insertion_order(k, driver.table) == order
    assert k.RtlNumberGenericTableElements(driver.table) == len(model)
    assert k.RtlIsGenericTableEmpty(driver.table) == (not model)
