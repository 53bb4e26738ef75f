"""Generic tables (ntddk.h): the AVL form, RTL_AVL_TABLE, whose elements the driver's own
routines compare, allocate and free.

The table is the caller's structure at the WDK's x64 offsets (RTL_AVL_TABLE, 0x68 bytes:
BalancedRoot, OrderedPointer, WhichOrderedElement, NumberGenericTableElements, DepthOfTree,
RestartKey, DeleteCount, CompareRoutine, AllocateRoutine, FreeRoutine, TableContext), and
every element is a node the driver's AllocateRoutine returned: an RTL_BALANCED_LINKS
(Parent, LeftChild, RightChild, Balance: 0x20 bytes) followed by the caller's data, so the
routine is asked for sizeof(RTL_BALANCED_LINKS) + BufferSize bytes and the element pointer a
routine returns is the node + 0x20. As in Windows the tree hangs from
BalancedRoot.RightChild, and BalancedRoot.Parent points at BalancedRoot itself.

The routines are called through the addresses in the table: a compiled driver's code runs
on the CPU, a Python driver's callables (given to RtlInitializeGenericTableAvl, which stores
an address standing for each) are called with the kernel first, as every Python routine is.
The allocations are the driver's own (its tag, its line), so poolmon and leak detection see
them; an AllocateRoutine that returns NULL makes the insert return NULL. Nodes, links and
counts are read and written through the machine: a table over freed pool, or a link a driver
overwrote, faults or misbehaves as it would on Windows.

CompareRoutine answers GenericLessThan (0), GenericGreaterThan (1) or GenericEqual (2); any
other value is taken as equal.
"""

from __future__ import annotations


from ..packing import x64_struct
from .registry import register_type, routine

for _name in ("PRTL_AVL_TABLE", "PRTL_AVL_COMPARE_ROUTINE", "PRTL_AVL_ALLOCATE_ROUTINE",
              "PRTL_AVL_FREE_ROUTINE"):
    register_type(_name, 8, pointer=True)
register_type("CLONG", 4)
register_type("PBOOLEAN", 8, pointer=True, pointee="BOOLEAN")

# RTL_BALANCED_LINKS (x64)
PARENT, LEFT, RIGHT, BALANCE = 0x00, 0x08, 0x10, 0x18
LINKS_SIZE = 0x20
# RTL_AVL_TABLE (x64)
ORDERED_POINTER = 0x20
WHICH_ORDERED_ELEMENT = 0x28
NUMBER_OF_ELEMENTS = 0x2C
DEPTH_OF_TREE = 0x30
RESTART_KEY = 0x38
DELETE_COUNT = 0x40
COMPARE_ROUTINE = 0x48
ALLOCATE_ROUTINE = 0x50
FREE_ROUTINE = 0x58
TABLE_CONTEXT = 0x60
RTL_AVL_TABLE_SIZE = 0x68

GenericLessThan, GenericGreaterThan, GenericEqual = 0, 1, 2
_Q = x64_struct("<Q")
_LINKS = x64_struct("<QQQb")


def _address(name: str, value) -> int:
    """A pointer a Python caller passed, checked before it is packed into the table."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int address, got {type(value).__name__}")
    if not 0 <= value < 1 << 64:
        raise ValueError(f"{name} {value:#x} is no 64-bit address")
    return value


class GenericTableRoutines:
    # --- memory -----------------------------------------------------------------------------

    def _avl_q(self, address: int) -> int:
        return _Q.unpack(self.read(address, 8))[0]

    def _avl_set_q(self, address: int, value: int) -> None:
        self.write(address, _Q.pack(value & 0xFFFFFFFFFFFFFFFF))

    def _avl_root(self, table: int) -> int:
        return self._avl_q(table + RIGHT)

    def _avl_code_for(self, routine_value) -> int:
        """The address a table keeps for a routine: a Python callable gets one standing for
        it (one per callable), an int is already one."""
        if callable(routine_value):
            cells = self.__dict__.setdefault("_table_routine_code", {})
            address = cells.get(routine_value)
            if address is None:
                address = cells[routine_value] = self.code_address(routine_value, self.current_driver)
            return address
        return _address("a table routine", routine_value)

    def _avl_compare(self, table: int, first: int, second: int) -> int:
        result = self.call_code(self._avl_q(table + COMPARE_ROUTINE), table, first, second) & 0xFFFFFFFF
        return result if result in (GenericLessThan, GenericGreaterThan) else GenericEqual

    def _avl_find(self, table: int, buffer: int) -> tuple[int, int]:
        """(node, 0) when an element equals ``buffer``; else (the parent a new node would
        hang from, or 0 for an empty tree, and the side: LEFT or RIGHT)."""
        node = self._avl_root(table)
        if not node:
            return 0, 0
        while True:
            result = self._avl_compare(table, buffer, node + LINKS_SIZE)
            if result == GenericEqual:
                return node, 0
            side = LEFT if result == GenericLessThan else RIGHT
            child = self._avl_q(node + side)
            if not child:
                return node, side
            node = child

    # --- heights and rotations (Balance kept in each node, as Windows keeps it) -----------------

    def _avl_heights(self, table: int) -> dict:
        return self.__dict__.setdefault("_avl_height_tables", {}).setdefault(table, {})

    def _avl_height(self, heights: dict, node: int) -> int:
        return heights.get(node, 0) if node else 0

    def _avl_update(self, table: int, heights: dict, node: int) -> int:
        left, right = self._avl_q(node + LEFT), self._avl_q(node + RIGHT)
        hl, hr = self._avl_height(heights, left), self._avl_height(heights, right)
        heights[node] = 1 + max(hl, hr)
        balance = hr - hl
        self.write(node + BALANCE, bytes([balance & 0xFF]))
        return balance

    def _avl_replace_child(self, table: int, parent: int, old: int, new: int) -> None:
        if parent == table:
            self._avl_set_q(table + RIGHT, new)
        elif self._avl_q(parent + LEFT) == old:
            self._avl_set_q(parent + LEFT, new)
        else:
            self._avl_set_q(parent + RIGHT, new)

    def _avl_rotate(self, table: int, heights: dict, node: int, toward: int) -> int:
        """Rotate ``node`` down toward LEFT or RIGHT; returns the node now in its place."""
        away = RIGHT if toward == LEFT else LEFT
        pivot = self._avl_q(node + away)
        inner = self._avl_q(pivot + toward)
        parent = self._avl_q(node + PARENT)
        self._avl_set_q(node + away, inner)
        if inner:
            self._avl_set_q(inner + PARENT, node)
        self._avl_set_q(pivot + toward, node)
        self._avl_set_q(node + PARENT, pivot)
        self._avl_set_q(pivot + PARENT, parent)
        self._avl_replace_child(table, parent, node, pivot)
        self._avl_update(table, heights, node)
        self._avl_update(table, heights, pivot)
        return pivot

    def _avl_rebalance_up(self, table: int, node: int) -> None:
        heights = self._avl_heights(table)
        while node and node != table:
            balance = self._avl_update(table, heights, node)
            if balance > 1:
                right = self._avl_q(node + RIGHT)
                if self._avl_update(table, heights, right) < 0:
                    self._avl_rotate(table, heights, right, RIGHT)
                node = self._avl_rotate(table, heights, node, LEFT)
            elif balance < -1:
                left = self._avl_q(node + LEFT)
                if self._avl_update(table, heights, left) > 0:
                    self._avl_rotate(table, heights, left, LEFT)
                node = self._avl_rotate(table, heights, node, RIGHT)
            node = self._avl_q(node + PARENT)
        root = self._avl_root(table)
        self._put32(table + DEPTH_OF_TREE, self._avl_height(heights, root))

    # --- walking ------------------------------------------------------------------------------

    def _avl_leftmost(self, node: int) -> int:
        while True:
            left = self._avl_q(node + LEFT)
            if not left:
                return node
            node = left

    def _avl_successor(self, table: int, node: int) -> int:
        right = self._avl_q(node + RIGHT)
        if right:
            return self._avl_leftmost(right)
        while True:
            parent = self._avl_q(node + PARENT)
            if parent == table or not parent:
                return 0
            if self._avl_q(parent + LEFT) == node:
                return parent
            node = parent

    # --- the routines -------------------------------------------------------------------------

    @routine("VOID RtlInitializeGenericTableAvl(PRTL_AVL_TABLE Table, "
             "PRTL_AVL_COMPARE_ROUTINE CompareRoutine, PRTL_AVL_ALLOCATE_ROUTINE AllocateRoutine, "
             "PRTL_AVL_FREE_ROUTINE FreeRoutine, _In_opt_ PVOID TableContext)")
    def RtlInitializeGenericTableAvl(self, Table, CompareRoutine, AllocateRoutine, FreeRoutine,
                                     TableContext) -> None:
        """An empty table: BalancedRoot.Parent at itself, the counts 0, the routines and
        context stored. A Python driver may pass callables: compare(k, Table, First, Second),
        allocate(k, Table, ByteSize), free(k, Table, Buffer)."""
        compare, allocate, free = (self._avl_code_for(CompareRoutine), self._avl_code_for(AllocateRoutine),
                                   self._avl_code_for(FreeRoutine))
        data = bytearray(RTL_AVL_TABLE_SIZE)
        _Q.pack_into(data, PARENT, _address("Table", Table))
        for offset, value in ((COMPARE_ROUTINE, compare), (ALLOCATE_ROUTINE, allocate),
                              (FREE_ROUTINE, free),
                              (TABLE_CONTEXT, _address("TableContext", TableContext or 0))):
            _Q.pack_into(data, offset, value)
        self.write(Table, bytes(data))
        self._avl_heights(Table).clear()

    @routine("PVOID RtlInsertElementGenericTableAvl(PRTL_AVL_TABLE Table, PVOID Buffer, "
             "CLONG BufferSize, _Out_opt_ PBOOLEAN NewElement)")
    def RtlInsertElementGenericTableAvl(self, Table, Buffer, BufferSize) -> tuple[int, int]:
        """(the element, TRUE) for a new one, its BufferSize bytes copied from Buffer; (the
        element already equal to it, FALSE); (NULL, FALSE) when AllocateRoutine returns NULL."""
        size = BufferSize & 0xFFFFFFFF
        found, side = self._avl_find(Table, Buffer)
        if found and not side:
            return found + LINKS_SIZE, 0
        node = self.call_code(self._avl_q(Table + ALLOCATE_ROUTINE), Table, LINKS_SIZE + size) \
            & 0xFFFFFFFFFFFFFFFF
        if not node:
            return 0, 0
        parent = found or Table
        self.write(node, _LINKS.pack(parent, 0, 0, 0))
        self.write(node + LINKS_SIZE, self.read(Buffer, size))
        self._avl_heights(Table)[node] = 1
        self._avl_set_q((found + side) if found else Table + RIGHT, node)
        self._put32(Table + NUMBER_OF_ELEMENTS, self._get32(Table + NUMBER_OF_ELEMENTS) + 1)
        self._put32(Table + WHICH_ORDERED_ELEMENT, 0)
        self._avl_rebalance_up(Table, node)
        return node + LINKS_SIZE, 1

    @routine("PVOID RtlLookupElementGenericTableAvl(PRTL_AVL_TABLE Table, PVOID Buffer)")
    def RtlLookupElementGenericTableAvl(self, Table, Buffer) -> int:
        found, side = self._avl_find(Table, Buffer)
        return found + LINKS_SIZE if found and not side else 0

    @routine("BOOLEAN RtlDeleteElementGenericTableAvl(PRTL_AVL_TABLE Table, PVOID Buffer)")
    def RtlDeleteElementGenericTableAvl(self, Table, Buffer) -> int:
        """TRUE when an element equal to Buffer was unlinked and given to FreeRoutine."""
        node, side = self._avl_find(Table, Buffer)
        if not node or side:
            return 0
        heights = self._avl_heights(Table)
        left, right = self._avl_q(node + LEFT), self._avl_q(node + RIGHT)
        parent = self._avl_q(node + PARENT)
        if left and right:
            # The in-order successor takes the node's place in the tree.
            successor = self._avl_leftmost(right)
            start = self._avl_q(successor + PARENT)
            successor_right = self._avl_q(successor + RIGHT)
            if start != node:
                self._avl_set_q(start + LEFT, successor_right)
                if successor_right:
                    self._avl_set_q(successor_right + PARENT, start)
                self._avl_set_q(successor + RIGHT, right)
                self._avl_set_q(right + PARENT, successor)
            else:
                start = successor
            self._avl_set_q(successor + LEFT, left)
            self._avl_set_q(left + PARENT, successor)
            self._avl_set_q(successor + PARENT, parent)
            self._avl_replace_child(Table, parent, node, successor)
        else:
            child = left or right
            if child:
                self._avl_set_q(child + PARENT, parent)
            self._avl_replace_child(Table, parent, node, child)
            start = parent
        heights.pop(node, None)
        self._put32(Table + NUMBER_OF_ELEMENTS, self._get32(Table + NUMBER_OF_ELEMENTS) - 1)
        self._put32(Table + DELETE_COUNT, self._get32(Table + DELETE_COUNT) + 1)
        self._put32(Table + WHICH_ORDERED_ELEMENT, 0)
        if self._avl_q(Table + RESTART_KEY) == node:
            self._avl_set_q(Table + RESTART_KEY, 0)
        self._avl_rebalance_up(Table, start)
        self.call_code(self._avl_q(Table + FREE_ROUTINE), Table, node)
        return 1

    @routine("PVOID RtlEnumerateGenericTableAvl(PRTL_AVL_TABLE Table, BOOLEAN Restart)")
    def RtlEnumerateGenericTableAvl(self, Table, Restart) -> int:
        """The first element (Restart TRUE) or the one after the last returned (the table's
        RestartKey), in the CompareRoutine's order; NULL after the last."""
        key = 0 if Restart & 0xFF else self._avl_q(Table + RESTART_KEY)
        node = self._avl_next(Table, key)
        self._avl_set_q(Table + RESTART_KEY, node)
        return node + LINKS_SIZE if node else 0

    def _avl_next(self, table: int, key: int) -> int:
        if not key:
            root = self._avl_root(table)
            return self._avl_leftmost(root) if root else 0
        return self._avl_successor(table, key)

    @routine("PVOID RtlEnumerateGenericTableWithoutSplayingAvl(PRTL_AVL_TABLE Table, "
             "_Inout_ PVOID *RestartKey)")
    def RtlEnumerateGenericTableWithoutSplayingAvl(self, Table, RestartKey) -> int:
        """The element after the one *RestartKey names (the first when it is NULL); the key
        is updated for the next call."""
        node = self._avl_next(Table, self._avl_q(RestartKey))
        if node:
            self._avl_set_q(RestartKey, node)
        return node + LINKS_SIZE if node else 0

    @routine("PVOID RtlGetElementGenericTableAvl(PRTL_AVL_TABLE Table, ULONG I)")
    def RtlGetElementGenericTableAvl(self, Table, I) -> int:  # noqa: E741 (the WDK's name)
        """The I-th element (from 0) in order; NULL past the last."""
        index = I & 0xFFFFFFFF
        if index >= self._get32(Table + NUMBER_OF_ELEMENTS):
            return 0
        node = self._avl_next(Table, 0)
        for _ in range(index):
            node = self._avl_successor(Table, node)
        self._avl_set_q(Table + ORDERED_POINTER, node)
        self._put32(Table + WHICH_ORDERED_ELEMENT, index + 1)
        return node + LINKS_SIZE

    @routine("ULONG RtlNumberGenericTableElementsAvl(PRTL_AVL_TABLE Table)")
    def RtlNumberGenericTableElementsAvl(self, Table) -> int:
        return self._get32(Table + NUMBER_OF_ELEMENTS)

    @routine("BOOLEAN RtlIsGenericTableEmptyAvl(PRTL_AVL_TABLE Table)")
    def RtlIsGenericTableEmptyAvl(self, Table) -> int:
        return int(self._avl_root(Table) == 0)
