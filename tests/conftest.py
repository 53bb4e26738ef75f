import pytest

import ntpool

MiB = 1 << 20


@pytest.fixture
def k():
    """A small machine: 4 MiB of each pool keeps tests fast and exhaustion reachable."""
    return ntpool.Kernel(nonpaged_pool_bytes=4 * MiB, paged_pool_bytes=4 * MiB)
