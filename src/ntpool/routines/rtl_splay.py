"""Generic tables, the splay-tree form (ntddk.h): RTL_GENERIC_TABLE, the older sibling of the
AVL tables (routines/rtl_tables.py), with the same three driver routines.

The table is the caller's structure at the WDK's x64 offsets (RTL_GENERIC_TABLE, 0x48 bytes:
TableRoot, InsertOrderList, OrderedPointer, WhichOrderedElement, NumberGenericTableElements,
CompareRoutine, AllocateRoutine, FreeRoutine, TableContext). Each element is a node from the
driver's AllocateRoutine: RTL_SPLAY_LINKS (Parent, LeftChild, RightChild: 0x18 bytes), then a
LIST_ENTRY on the table's InsertOrderList, then the caller's data at node + 0x28; the routine
is asked for that header plus BufferSize. A root's Parent points at itself (RtlIsRoot). An
insert or a successful lookup splays the element to the root (RtlSplay's zig, zig-zig and
zig-zag rotations); a delete unlinks the node as RtlDelete does (its in-order neighbour takes
its place) and splays its parent. RtlGetElementGenericTable counts in insertion order (the
InsertOrderList), as Windows does; the enumerations go in the CompareRoutine's order.
"""

from __future__ import annotations

import struct

from ..packing import x64_struct
from .registry import register_type, routine
from .rtl_tables import GenericGreaterThan, GenericLessThan, _address

for _name in ("PRTL_GENERIC_TABLE", "PRTL_GENERIC_COMPARE_ROUTINE", "PRTL_GENERIC_ALLOCATE_ROUTINE",
              "PRTL_GENERIC_FREE_ROUTINE"):
    register_type(_name, 8, pointer=True)

# RTL_SPLAY_LINKS and the node header (x64)
S_PARENT, S_LEFT, S_RIGHT = 0x00, 0x08, 0x10
NODE_LIST = 0x18
NODE_HEADER = 0x28
# RTL_GENERIC_TABLE (x64)
TABLE_ROOT = 0x00
INSERT_ORDER_LIST = 0x08
S_ORDERED_POINTER = 0x18
S_WHICH_ORDERED_ELEMENT = 0x20
S_NUMBER_OF_ELEMENTS = 0x24
S_COMPARE_ROUTINE = 0x28
S_ALLOCATE_ROUTINE = 0x30
S_FREE_ROUTINE = 0x38
S_TABLE_CONTEXT = 0x40
RTL_GENERIC_TABLE_SIZE = 0x48
_Q = x64_struct("<Q")


class SplayTableRoutines:
    def _sp_q(self, address: int) -> int:
        return _Q.unpack(self.read(address, 8))[0]

    def _sp_set(self, address: int, value: int) -> None:
        self.write(address, _Q.pack(value & 0xFFFFFFFFFFFFFFFF))

    def _sp_is_root(self, node: int) -> bool:
        return self._sp_q(node + S_PARENT) == node

    def _sp_find(self, table: int, buffer: int) -> tuple[int, int]:
        """(node, 0) for an equal element; else (the parent a new node would hang from, or 0,
        and its side)."""
        node = self._sp_q(table + TABLE_ROOT)
        if not node:
            return 0, 0
        while True:
            compare = self._sp_q(table + S_COMPARE_ROUTINE)
            result = self.call_code(compare, table, buffer, node + NODE_HEADER) & 0xFFFFFFFF
            if result not in (GenericLessThan, GenericGreaterThan):  # anything else: equal
                return node, 0
            side = S_LEFT if result == GenericLessThan else S_RIGHT
            child = self._sp_q(node + side)
            if not child:
                return node, side
            node = child

    def _sp_rotate_up(self, node: int) -> None:
        """Rotate ``node`` above its parent (which is not it)."""
        parent = self._sp_q(node + S_PARENT)
        grand = self._sp_q(parent + S_PARENT)
        parent_was_root = grand == parent
        if self._sp_q(parent + S_LEFT) == node:
            inner = self._sp_q(node + S_RIGHT)
            self._sp_set(parent + S_LEFT, inner)
            self._sp_set(node + S_RIGHT, parent)
        else:
            inner = self._sp_q(node + S_LEFT)
            self._sp_set(parent + S_RIGHT, inner)
            self._sp_set(node + S_LEFT, parent)
        if inner:
            self._sp_set(inner + S_PARENT, parent)
        self._sp_set(parent + S_PARENT, node)
        if parent_was_root:
            self._sp_set(node + S_PARENT, node)
        else:
            self._sp_set(node + S_PARENT, grand)
            side = S_LEFT if self._sp_q(grand + S_LEFT) == parent else S_RIGHT
            self._sp_set(grand + side, node)

    def _sp_splay(self, table: int, node: int) -> None:
        while not self._sp_is_root(node):
            parent = self._sp_q(node + S_PARENT)
            if self._sp_is_root(parent):
                self._sp_rotate_up(node)  # zig
                continue
            grand = self._sp_q(parent + S_PARENT)
            node_left = self._sp_q(parent + S_LEFT) == node
            parent_left = self._sp_q(grand + S_LEFT) == parent
            if node_left == parent_left:
                self._sp_rotate_up(parent)  # zig-zig
                self._sp_rotate_up(node)
            else:
                self._sp_rotate_up(node)  # zig-zag
                self._sp_rotate_up(node)
        self._sp_set(table + TABLE_ROOT, node)

    def _sp_leftmost(self, node: int) -> int:
        while True:
            left = self._sp_q(node + S_LEFT)
            if not left:
                return node
            node = left

    def _sp_successor(self, node: int) -> int:
        right = self._sp_q(node + S_RIGHT)
        if right:
            return self._sp_leftmost(right)
        while not self._sp_is_root(node):
            parent = self._sp_q(node + S_PARENT)
            if self._sp_q(parent + S_LEFT) == node:
                return parent
            node = parent
        return 0

    # --- the routines -------------------------------------------------------------------------

    @routine("VOID RtlInitializeGenericTable(PRTL_GENERIC_TABLE Table, "
             "PRTL_GENERIC_COMPARE_ROUTINE CompareRoutine, PRTL_GENERIC_ALLOCATE_ROUTINE AllocateRoutine, "
             "PRTL_GENERIC_FREE_ROUTINE FreeRoutine, _In_opt_ PVOID TableContext)")
    def RtlInitializeGenericTable(self, Table, CompareRoutine, AllocateRoutine, FreeRoutine,
                                  TableContext) -> None:
        """An empty table (InsertOrderList pointing at itself); Python callables are taken as
        for RtlInitializeGenericTableAvl."""
        table = _address("Table", Table)
        data = bytearray(RTL_GENERIC_TABLE_SIZE)
        _Q.pack_into(data, INSERT_ORDER_LIST, table + INSERT_ORDER_LIST)
        _Q.pack_into(data, INSERT_ORDER_LIST + 8, table + INSERT_ORDER_LIST)
        for offset, value in ((S_COMPARE_ROUTINE, self._avl_code_for(CompareRoutine)),
                              (S_ALLOCATE_ROUTINE, self._avl_code_for(AllocateRoutine)),
                              (S_FREE_ROUTINE, self._avl_code_for(FreeRoutine)),
                              (S_TABLE_CONTEXT, _address("TableContext", TableContext or 0))):
            _Q.pack_into(data, offset, value)
        self.write(table, bytes(data))

    @routine("PVOID RtlInsertElementGenericTable(PRTL_GENERIC_TABLE Table, PVOID Buffer, "
             "CLONG BufferSize, _Out_opt_ PBOOLEAN NewElement)")
    def RtlInsertElementGenericTable(self, Table, Buffer, BufferSize) -> tuple[int, int]:
        """As the AVL form: (element, TRUE) new, (element, FALSE) already there, (NULL, FALSE)
        when AllocateRoutine fails; the element is splayed to the root and the new one
        linked at the tail of the insertion order."""
        size = BufferSize & 0xFFFFFFFF
        found, side = self._sp_find(Table, Buffer)
        if found and not side:
            self._sp_splay(Table, found)
            return found + NODE_HEADER, 0
        node = self.call_code(self._sp_q(Table + S_ALLOCATE_ROUTINE), Table, NODE_HEADER + size) \
            & 0xFFFFFFFFFFFFFFFF
        if not node:
            return 0, 0
        head = Table + INSERT_ORDER_LIST
        tail = self._sp_q(head + 8)
        self.write(node, struct.pack("<QQQQQ", found or node, 0, 0, head, tail))
        self._sp_set(tail, node + NODE_LIST)  # tail->Flink
        self._sp_set(head + 8, node + NODE_LIST)  # head->Blink
        self.write(node + NODE_HEADER, self.read(Buffer, size))
        if found:
            self._sp_set(found + side, node)
        self._put32(Table + S_NUMBER_OF_ELEMENTS, self._get32(Table + S_NUMBER_OF_ELEMENTS) + 1)
        self._put32(Table + S_WHICH_ORDERED_ELEMENT, 0)
        self._sp_splay(Table, node)
        return node + NODE_HEADER, 1

    @routine("PVOID RtlLookupElementGenericTable(PRTL_GENERIC_TABLE Table, PVOID Buffer)")
    def RtlLookupElementGenericTable(self, Table, Buffer) -> int:
        found, side = self._sp_find(Table, Buffer)
        if not found or side:
            return 0
        self._sp_splay(Table, found)
        return found + NODE_HEADER

    @routine("BOOLEAN RtlDeleteElementGenericTable(PRTL_GENERIC_TABLE Table, PVOID Buffer)")
    def RtlDeleteElementGenericTable(self, Table, Buffer) -> int:
        node, side = self._sp_find(Table, Buffer)
        if not node or side:
            return 0
        was_root = self._sp_is_root(node)
        parent = self._sp_q(node + S_PARENT)
        left, right = self._sp_q(node + S_LEFT), self._sp_q(node + S_RIGHT)
        if left and right:
            replacement = self._sp_leftmost(right)
            start = self._sp_q(replacement + S_PARENT)
            if start != node:
                inner = self._sp_q(replacement + S_RIGHT)
                self._sp_set(start + S_LEFT, inner)
                if inner:
                    self._sp_set(inner + S_PARENT, start)
                self._sp_set(replacement + S_RIGHT, right)
                self._sp_set(right + S_PARENT, replacement)
            else:
                start = replacement
            self._sp_set(replacement + S_LEFT, left)
            self._sp_set(left + S_PARENT, replacement)
        else:
            replacement = left or right
            start = parent if not was_root else replacement
        if replacement:
            self._sp_set(replacement + S_PARENT, replacement if was_root else parent)
        if was_root:
            self._sp_set(Table + TABLE_ROOT, replacement)
        else:
            child_side = S_LEFT if self._sp_q(parent + S_LEFT) == node else S_RIGHT
            self._sp_set(parent + child_side, replacement)
        # Off the insertion order.
        flink, blink = self._sp_q(node + NODE_LIST), self._sp_q(node + NODE_LIST + 8)
        self._sp_set(blink, flink)
        self._sp_set(flink + 8, blink)
        self._put32(Table + S_NUMBER_OF_ELEMENTS, self._get32(Table + S_NUMBER_OF_ELEMENTS) - 1)
        self._put32(Table + S_WHICH_ORDERED_ELEMENT, 0)
        if start:
            self._sp_splay(Table, start)
        self.call_code(self._sp_q(Table + S_FREE_ROUTINE), Table, node)
        return 1

    @routine("PVOID RtlEnumerateGenericTable(PRTL_GENERIC_TABLE Table, BOOLEAN Restart)")
    def RtlEnumerateGenericTable(self, Table, Restart) -> int:
        """In order: the first element (Restart TRUE, the smallest splayed to the root), else
        the successor of the root (the element returned last, which this splays there)."""
        root = self._sp_q(Table + TABLE_ROOT)
        if not root:
            return 0
        node = self._sp_leftmost(root) if Restart & 0xFF else self._sp_successor(root)
        if not node:
            return 0
        self._sp_splay(Table, node)
        return node + NODE_HEADER

    @routine("PVOID RtlEnumerateGenericTableWithoutSplaying(PRTL_GENERIC_TABLE Table, "
             "_Inout_ PVOID *RestartKey)")
    def RtlEnumerateGenericTableWithoutSplaying(self, Table, RestartKey) -> int:
        key = self._sp_q(RestartKey)
        if not key:
            root = self._sp_q(Table + TABLE_ROOT)
            node = self._sp_leftmost(root) if root else 0
        else:
            node = self._sp_successor(key)
        if node:
            self._sp_set(RestartKey, node)
        return node + NODE_HEADER if node else 0

    @routine("PVOID RtlGetElementGenericTable(PRTL_GENERIC_TABLE Table, ULONG I)")
    def RtlGetElementGenericTable(self, Table, I) -> int:  # noqa: E741 (the WDK's name)
        """The I-th element (from 0) in insertion order; NULL past the last."""
        index = I & 0xFFFFFFFF
        if index >= self._get32(Table + S_NUMBER_OF_ELEMENTS):
            return 0
        entry = self._sp_q(Table + INSERT_ORDER_LIST)
        for _ in range(index):
            entry = self._sp_q(entry)
        self._sp_set(Table + S_ORDERED_POINTER, entry)
        self._put32(Table + S_WHICH_ORDERED_ELEMENT, index + 1)
        return entry - NODE_LIST + NODE_HEADER

    @routine("ULONG RtlNumberGenericTableElements(PRTL_GENERIC_TABLE Table)")
    def RtlNumberGenericTableElements(self, Table) -> int:
        return self._get32(Table + S_NUMBER_OF_ELEMENTS)

    @routine("BOOLEAN RtlIsGenericTableEmpty(PRTL_GENERIC_TABLE Table)")
    def RtlIsGenericTableEmpty(self, Table) -> int:
        return int(self._sp_q(Table + TABLE_ROOT) == 0)
