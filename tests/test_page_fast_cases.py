"""Windows 7's pool pages taken and given back on their usual way, against the long way.

A small request no lookaside serves (497 to 4,064 bytes) goes from the allocation fast path
straight to the pool's lists (``allocate_plain``'s steps inline), and when no listed chunk
fits, to a new page mapped on the spot (``Pool._allocate_from_fresh_page``: the page, the
frame, the PTE, the TLB entry written out). A free that makes its page whole unlinks the page's
remainder, its list's only entry, inline, and gives the page back the same way
(``Pool.release_small_page``: the PTE cleared, the TLB entry dropped and announced, the
frame freed). Each test runs the same steps on a machine as drivers run it and on one sent
the long way (every call on the allocator's generic path, and the pool's ListHeads work
through ``take_the_long_way``'s helpers, which take and release pages through
``take_pages`` / ``release_pages``): every result, bug check, byte of physical memory, frame,
PTE, TLB entry and MappingChanged announcement must be the same, whatever a driver wrote
where, with pages paged out and the IRQL raised."""

import hashlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ntpool
from ntpool.hooks import MappingChanged
from test_list_fast_cases import take_the_long_way
from two_ways import outcome

MiB = 1 << 20
SIZES = st.sampled_from([100, 400, 497, 600, 1000, 1000, 1000, 2000, 2048, 4000, 4064, 4065, 5000])


def machine(long_way: bool):
    k = ntpool.Kernel(nonpaged_pool_bytes=MiB, paged_pool_bytes=MiB)
    announced = []
    k.hooks.subscribe(MappingChanged, lambda event: announced.append(event.address))
    if long_way:
        k.pool.fast_path_blockers.add("the long way")
        k.pool.refresh_fast_paths()
        for pool in (k.nonpaged_pool, k.paged_pool):
            take_the_long_way(pool)
    return k, announced, []


def state(k, announced) -> tuple:
    physical, space = k.nonpaged_pool.physical, k.nonpaged_pool.space
    pools = tuple((bytes(pool.page_kind), tuple(pool.small_frames), pool.pages_in_use,
                   pool._page_hint, bytes(pool.listed)) for pool in (k.nonpaged_pool, k.paged_pool))
    return (hashlib.sha256(bytes(physical.buffer)).hexdigest(), bytes(physical.frame_in_use),
            physical.frames_used, physical._hint, sorted(space.tlb.items()), pools,
            sorted(k.pool.tracker.rows.items()), tuple(announced), k.halted)


def apply(k, live, step):
    what, *args = step
    if what == "allocate":
        pool_type, size = args
        address = k.ExAllocatePoolWithTag(pool_type, size, "Page")
        live.append(address)
        return address
    if not live:
        return None
    address = live[args[0] % len(live)]
    if what == "free":
        live.remove(address)
        k.ExFreePoolWithTag(address, "Page")  # (the fast path answers True, for NdisFreeMemory)
        return None
    if what == "stray":  # over the chunk's header or past its end, by a sloppy driver
        offset, data = args[1:]
        return k.write(address + offset, data)
    if what == "page_out":
        return k.page_out()
    if what == "irql":
        return k._set_irql(args[1])
    raise AssertionError(what)


STEPS = st.lists(st.one_of(
    st.tuples(st.just("allocate"), st.sampled_from([0, 0, 0, 1]), SIZES),
    st.tuples(st.just("free"), st.integers(0, 63)),
    st.tuples(st.just("stray"), st.integers(0, 63), st.sampled_from([-16, -14, -13, 0, 8, 992, 1008]),
              st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("page_out"), st.integers(0, 63)),
    st.tuples(st.just("irql"), st.integers(0, 63), st.integers(0, 2)),
), max_size=60)


def run_both(steps) -> None:
    (fast, fast_announced, fast_live), (slow, slow_announced, slow_live) = machine(False), machine(True)
    for step in steps:
        a, b = outcome(lambda: apply(fast, fast_live, step)), outcome(lambda: apply(slow, slow_live, step))
        assert a == b, step
        assert state(fast, fast_announced) == state(slow, slow_announced), step
        if a[0] == "bugcheck":
            break


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(STEPS)
def test_pages_taken_and_given_back_the_usual_way_match_the_long_way(steps):
    run_both(steps)


def test_the_large_pair_gives_its_page_back_and_maps_a_new_one_both_ways():
    """The 1,000-byte pair: each allocation maps a page, each free gives it back (its frame
    and PTE freed, its TLB entry dropped and announced), and the next reuses the frame."""
    steps = [("allocate", 0, 1000), ("free", 0)] * 3 + [("allocate", 1, 1000), ("free", 0)] * 2
    run_both(steps)
    k, announced, live = machine(False)
    pool = k.nonpaged_pool
    body = k.ExAllocatePoolWithTag(0, 1000, "Page")
    page, frame = body & ~0xFFF, pool.tlb[body >> 12]
    assert pool.small_frames[(page - pool.base) >> 12] == frame
    assert pool.space.pte(page) & ~0xFFF & ((1 << 52) - 1) == frame
    in_use = pool.pages_in_use
    k.ExFreePoolWithTag(body, "Page")
    assert body >> 12 not in pool.tlb and announced == [page] and pool.space.pte(page) == 0
    assert not pool.physical.frame_in_use[frame >> 12] and pool.pages_in_use == in_use - 1
    again = k.ExAllocatePoolWithTag(0, 1000, "Page")
    assert again == body and pool.tlb[again >> 12] == frame  # the same page and frame again


def test_a_damaged_remainder_link_stops_the_freeing_pair_both_ways():
    """The page's remainder, the only entry on its list, with a link rewritten (its own, or
    its list head's): the free that would unlink it bug-checks (0x19, code 3) the same way
    both ways."""
    for damaged, link in ((damaged, link) for damaged in ("entry", "head") for link in (0, 8)):
        stops = []
        for long_way in (False, True):
            k, _, _ = machine(long_way)
            body = k.ExAllocatePoolWithTag(0, 1000, "Page")
            remainder_body = body - 16 + 64 * 16 + 16
            at = remainder_body if damaged == "entry" else k.nonpaged_pool.list_head_at[192]
            k.write(at + link, (body + 0x100).to_bytes(8, "little"))
            stops.append(outcome(lambda: k.ExFreePoolWithTag(body, "Page")))
            stops[-1] += (hashlib.sha256(bytes(k.nonpaged_pool.mem)).hexdigest(),)
        assert stops[0] == stops[1]
        assert stops[0][0] == "bugcheck" and stops[0][1] == 0x19 and stops[0][2][0] == 3


def test_a_damaged_only_entry_before_the_freed_chunk_stops_both_ways():
    """A page holding two 1,000-byte chunks, the free chunk between them the only entry on
    its list: freeing the second merges backwards into it (unlinked inline as its list's
    only entry). With its Flink or Blink rewritten, or its list head's, that unlinking
    bug-checks (0x19, code 3) the same way both ways, with frees delayed or not."""
    for delayed, damaged in ((delayed, damaged) for delayed in (False, True) for damaged in ("entry", "head")):
        for link in (0, 8):
            stops = []
            for long_way in (False, True):
                k, _, _ = machine(long_way)
                k.nonpaged_pool.delay_frees = delayed
                first = k.ExAllocatePoolWithTag(0, 1000, "Page")  # the page's front
                second = k.ExAllocatePoolWithTag(0, 1000, "Page")  # the remainder's end
                between = first + 64 * 16  # the free chunk left between them: its body
                assert second == between + 128 * 16
                assert k.nonpaged_pool.free_list(128) == [between - 16]
                at = between if damaged == "entry" else k.nonpaged_pool.list_head_at[128]
                k.write(at + link, first.to_bytes(8, "little"))
                stops.append(outcome(lambda: (k.ExFreePoolWithTag(second, "Page"),
                                              k.nonpaged_pool.deferred_free())))
                stops[-1] += (hashlib.sha256(bytes(k.nonpaged_pool.mem)).hexdigest(),)
            assert stops[0] == stops[1]
            assert stops[0][0] == "bugcheck" and stops[0][1] == 0x19 and stops[0][2][0] == 3


def test_pages_found_past_a_hint_in_use_and_frames_past_one_in_use_both_ways():
    """The usual new page is the one at the pool's hint, on the frame at memory's: a page
    given back becomes both. Here the hints lead to a page and a frame in use (the page
    after a reused one, the frame after a reused one), and the search goes on past them,
    both ways alike."""
    for pool_type in (0, 1):
        steps = [("allocate", pool_type, 4000), ("allocate", pool_type, 4000),
                 ("allocate", pool_type, 4000), ("free", 0), ("allocate", pool_type, 4000),
                 ("page_out", 0),  # (paged pool: the page at the hint in use, not resident)
                 ("allocate", pool_type, 4000), ("free", 1), ("free", 1),
                 ("allocate", pool_type, 2048), ("allocate", pool_type, 2048),
                 ("allocate", pool_type, 2048)]
        run_both(steps)
        k, _, live = machine(False)
        for step in steps:
            apply(k, live, step)
        pool = k.paged_pool if pool_type else k.nonpaged_pool
        pages = sorted((address - pool.base) >> 12 for address in live)
        assert len(set(pages)) == len(pages)  # every live chunk on a page of its own
