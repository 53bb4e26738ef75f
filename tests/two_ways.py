"""What the fast-case tests share (imported by the test files beside it): each runs the same
steps on two machines, one as drivers run it and one made to take the general way, and
compares what each call ended in."""

from hypothesis import strategies as st

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


def address(regions, where):
    """A step's object: ``where`` is (which region: 0 nonpaged, 1 paged; offset in it)."""
    region, offset = where
    return regions[region] + offset


def common_steps(place):
    """The steps every step list mixes in, ``place`` drawing an object's place: a stray write
    over it, the IRQL set directly, a page of the paged region paged out."""
    return (st.tuples(st.just("stray"), place, st.binary(min_size=1, max_size=24)),
            st.tuples(st.just("irql"), st.integers(0, 3)),
            st.tuples(st.just("page_out"), st.integers(0, 2)))


def apply_step(k, regions, step, special=None):
    """Carry out ``step`` (a name, then its arguments; a tuple is an object's place, see
    ``address``): a kind of the test's own in ``special`` (name -> function of the machine,
    the regions and the arguments), a common step, else the routine of that name."""
    what, *args = step
    at = [address(regions, arg) if isinstance(arg, tuple) else arg for arg in args]
    if special is not None and what in special:
        return special[what](k, regions, *at)
    if what == "stray":
        return k.write(at[0], at[1])
    if what == "irql":
        return k._set_irql(at[0])
    if what == "page_out":
        return k.page_out(regions[1] + at[0] * 0x1000)
    return getattr(k, what)(*at)


def region_bytes(k, regions, size: int) -> list:
    """Each region's bytes, None for one with a page paged out (reading it would page it in)."""
    return [bytes(k.read(region, size)) if not any(k.pager.is_paged_out(region + page)
                                                  for page in range(0, size, 0x1000))
            else None for region in regions]


def run_both(make_machine, apply, state, steps, label=None):
    """Run ``steps`` on a machine as drivers run it (``make_machine(False)``) and on one sent
    the general way (``make_machine(True)``): after each step both must have ended the same
    way and be in the same ``state``; a bug check ends the run."""
    inline, inline_regions = make_machine(False)
    written, written_regions = make_machine(True)
    assert inline_regions == written_regions
    for step in steps:
        a = outcome(lambda: apply(inline, inline_regions, step))
        b = outcome(lambda: apply(written, written_regions, step))
        where = step if label is None else (label, step)
        assert a == b, where
        assert state(inline, inline_regions) == state(written, written_regions), where
        if a[0] == "bugcheck":
            break
