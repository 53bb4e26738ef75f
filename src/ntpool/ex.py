"""The executive's pool routines (wdm.h), as methods of the machine.

Each is a thin translation onto the one PoolAllocator (``self.pool``).
"""

from .tags import DEFAULT_TAG_EX


class ExecutiveRoutines:
    def ExAllocatePoolWithTag(self, PoolType, NumberOfBytes, Tag) -> int:
        """Allocate pool; returns the address, or 0 (NULL) when the pool is exhausted."""
        return self.pool.allocate(PoolType, NumberOfBytes, Tag)

    def ExAllocatePool(self, PoolType, NumberOfBytes) -> int:
        """Allocate pool with the default tag 'None'."""
        return self.pool.allocate(PoolType, NumberOfBytes, DEFAULT_TAG_EX)

    def ExFreePoolWithTag(self, P, Tag) -> None:
        """Free pool; ``Tag`` must be the tag it was allocated with (else 0xC2/0x0A)."""
        self.pool.free(P, Tag)

    def ExFreePool(self, P) -> None:
        """Free pool without naming its tag (a protected tag still must be named)."""
        self.pool.free(P, None)
