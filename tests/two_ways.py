"""What the fast-case tests share (imported by the test files beside it): each runs the same
steps on two machines, one as drivers run it and one made to take the general way, and
compares what each call ended in."""

import ntpool
from ntpool.hooks import MemoryWritten

NP = ntpool.PoolType.NonPagedPool
PAGED = ntpool.PoolType.PagedPool


def outcome(call):
    """What ``call()`` ended in: its result, the bug check it raised, or any other error by
    its type and message, so two machines' answers compare as values."""
    try:
        return ("ok", call())
    except ntpool.BugCheck as error:
        return ("bugcheck", error.code, error.parameters)
    except Exception as error:  # WaitForever, MachineHung, NtStatusError, TypeError...
        return (type(error).__name__, str(error))


def machine_with_regions(windows: str, published: bool, tag: str, size: int):
    """A machine and a region of ``size`` bytes in each pool (nonpaged, paged) for the steps'
    objects; ``published``: a MemoryWritten listener, which sends every call the general way."""
    k = ntpool.Kernel(windows=windows)
    if published:
        k.hooks.subscribe(MemoryWritten, lambda event: None)
    return k, (k.ExAllocatePoolWithTag(NP, size, tag), k.ExAllocatePoolWithTag(PAGED, size, tag))
