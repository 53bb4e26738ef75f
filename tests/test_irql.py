"""IRQL per processor, spin locks, the pool's IRQL rules, and paging (issue 3, part 4)."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ntpool
from ntpool.machine.memory import PTE_PRESENT
from ntpool.tags import tag_value

NP = ntpool.PoolType.NonPagedPool
PP = ntpool.PoolType.PagedPool
DISPATCH = ntpool.DISPATCH_LEVEL


def bugcheck(call):
    with pytest.raises(ntpool.BugCheck) as info:
        call()
    return info.value


class Driver:
    name = "test.sys"


# --- KeRaiseIrql / KeLowerIrql / KeGetCurrentIrql -----------------------------------------

def test_irql_starts_at_passive_and_raise_returns_the_old_irql(k):
    assert k.KeGetCurrentIrql() == 0
    assert k.KeRaiseIrql(DISPATCH) == 0
    assert k.KeGetCurrentIrql() == DISPATCH
    assert k.KeRaiseIrql(DISPATCH) == DISPATCH  # raising to the same level is allowed
    k.KeLowerIrql(0)
    assert k.KeGetCurrentIrql() == 0


def test_raising_to_a_lower_irql_is_irql_not_greater_or_equal(k):
    k.KeRaiseIrql(DISPATCH)
    e = bugcheck(lambda: k.KeRaiseIrql(ntpool.APC_LEVEL))
    assert (e.code, e.parameters) == (0x9, (DISPATCH, 1, 0, 0))
    assert e.name == "IRQL_NOT_GREATER_OR_EQUAL"


def test_lowering_to_a_higher_irql_is_irql_not_less_or_equal(k):
    e = bugcheck(lambda: k.KeLowerIrql(DISPATCH))
    assert (e.code, e.parameters) == (0xA, (0, DISPATCH, 0, 0))


@pytest.mark.parametrize("value, error", [(16, ValueError), (-1, ValueError), ("2", TypeError),
                                          (2.0, TypeError), (True, TypeError)])
def test_bad_irql_values_name_the_parameter(k, value, error):
    with pytest.raises(error, match="NewIrql"):
        k.KeRaiseIrql(value)
    assert not k.halted and k.KeGetCurrentIrql() == 0


def test_each_processor_has_its_own_irql():
    k = ntpool.Kernel(nonpaged_pool_bytes=1 << 20, paged_pool_bytes=1 << 20, processors=2)
    k.KeRaiseIrql(DISPATCH)
    k.set_current_processor(1)
    assert k.KeGetCurrentIrql() == 0 and k.KeGetCurrentProcessorNumber() == 1
    k.ExFreePoolWithTag(k.ExAllocatePoolWithTag(PP, 10, "Cpu1"), "Cpu1")  # fine at PASSIVE
    k.set_current_processor(0)
    e = bugcheck(lambda: k.ExAllocatePoolWithTag(PP, 10, "Cpu0"))
    assert e.parameters[:2] == (0x08, DISPATCH)


def test_selecting_a_processor_selects_its_lookasides():
    k = ntpool.Kernel(nonpaged_pool_bytes=1 << 20, paged_pool_bytes=1 << 20, processors=2)
    a = k.ExAllocatePoolWithTag(NP, 64, "Look")
    k.ExFreePoolWithTag(a, "Look")
    k.set_current_processor(1)
    assert k.ExAllocatePoolWithTag(NP, 64, "Look") != a
    k.set_current_processor(0)
    assert k.ExAllocatePoolWithTag(NP, 64, "Look") == a


@pytest.mark.parametrize("number", [2, -1, "0", None])
def test_bad_processor_number(number):
    k = ntpool.Kernel(nonpaged_pool_bytes=1 << 20, paged_pool_bytes=1 << 20, processors=2)
    with pytest.raises(ValueError, match="processor"):
        k.set_current_processor(number)


# --- spin locks ------------------------------------------------------------------------------

def test_spin_lock_raises_to_dispatch_and_restores(k):
    lock = k.ExAllocatePoolWithTag(NP, 8, "Lock")
    k.KeInitializeSpinLock(lock)
    old = k.KeAcquireSpinLock(lock)
    assert old == 0 and k.KeGetCurrentIrql() == DISPATCH
    assert int.from_bytes(k.read(lock, 8), "little") != 0  # held
    k.KeReleaseSpinLock(lock, old)
    assert k.KeGetCurrentIrql() == 0
    assert k.read(lock, 8) == bytes(8)


def test_acquiring_an_owned_spin_lock_again(k):
    lock = k.ExAllocatePoolWithTag(NP, 8, "Lock")
    k.KeInitializeSpinLock(lock)
    k.KeAcquireSpinLock(lock)
    e = bugcheck(lambda: k.KeAcquireSpinLock(lock))
    assert (e.code, e.parameters[0]) == (0xF, lock)


def test_releasing_a_spin_lock_not_owned(k):
    lock = k.ExAllocatePoolWithTag(NP, 8, "Lock")
    k.KeInitializeSpinLock(lock)
    e = bugcheck(lambda: k.KeReleaseSpinLock(lock, 0))
    assert (e.code, e.parameters[0]) == (0x10, lock)


def test_spin_lock_held_on_another_processor_is_a_plain_error():
    k = ntpool.Kernel(nonpaged_pool_bytes=1 << 20, paged_pool_bytes=1 << 20, processors=2)
    lock = k.ExAllocatePoolWithTag(NP, 8, "Lock")
    k.KeInitializeSpinLock(lock)
    k.KeAcquireSpinLock(lock)
    k.set_current_processor(1)
    with pytest.raises(RuntimeError, match="spin forever"):
        k.KeAcquireSpinLock(lock)
    assert not k.halted


def test_spin_lock_at_dpc_level_needs_dispatch(k):
    lock = k.ExAllocatePoolWithTag(NP, 8, "Lock")
    k.KeInitializeSpinLock(lock)
    e = bugcheck(lambda: k.KeAcquireSpinLockAtDpcLevel(lock))
    assert (e.code, e.parameters[:2]) == (0x9, (lock, 0))


@pytest.mark.parametrize("lock, error", [("x", TypeError), (0, ValueError), (1 << 64, ValueError)])
def test_bad_spin_lock_argument(k, lock, error):
    with pytest.raises(error, match="SpinLock"):
        k.KeAcquireSpinLock(lock)
    assert k.KeGetCurrentIrql() == 0


def test_a_held_spin_lock_has_windows_lock_bit_on_every_processor():
    """Bit 0 is the lock (x64's lock bts); ntpool records the owner above it. Processor 1's
    hold was 2, bit 0 clear: a lock Windows' code would see as free."""
    k = ntpool.Kernel(nonpaged_pool_bytes=1 << 20, paged_pool_bytes=1 << 20, processors=2)
    lock = k.ExAllocatePoolWithTag(NP, 8, "Lock")
    k.KeInitializeSpinLock(lock)
    k.set_current_processor(1)
    old = k.KeAcquireSpinLock(lock)
    assert int.from_bytes(k.read(lock, 8), "little") == 0b11
    k.KeReleaseSpinLock(lock, old)
    assert k.read(lock, 8) == bytes(8)


def test_a_misaligned_spin_lock_works_as_on_x64(k):
    """No Windows check refuses a misaligned KSPIN_LOCK (x64's lock bts runs anywhere)."""
    lock = k.ExAllocatePoolWithTag(NP, 16, "Lock") + 3
    k.KeInitializeSpinLock(lock)
    old = k.KeAcquireSpinLock(lock)
    assert k.read(lock, 8) != bytes(8) and k.KeGetCurrentIrql() == 2
    k.KeReleaseSpinLock(lock, old)
    assert k.read(lock, 8) == bytes(8) and k.KeGetCurrentIrql() == 0


# --- the pool's IRQL rules ------------------------------------------------------------------

@pytest.mark.parametrize("size", [100, 5000])
def test_paged_allocation_at_dispatch_is_c2_08(k, size):
    k.KeRaiseIrql(DISPATCH)
    e = bugcheck(lambda: k.ExAllocatePoolWithTag(PP, size, "Fred"))
    assert (e.code, e.parameters) == (0xC2, (0x08, DISPATCH, PP, size))


def test_nonpaged_allocation_and_free_at_dispatch_work(k):
    k.KeRaiseIrql(DISPATCH)
    for size in (100, 700, 5000):
        p = k.ExAllocatePoolWithTag(NP, size, "Disp")
        assert p
        k.ExFreePoolWithTag(p, "Disp")
    assert not k.halted


def test_any_allocation_above_dispatch_is_c2_08(k):
    k.KeRaiseIrql(ntpool.HIGH_LEVEL)
    e = bugcheck(lambda: k.ExAllocatePoolWithTag(NP, 100, "Fred"))
    assert (e.code, e.parameters) == (0xC2, (0x08, 15, NP, 100))


@pytest.mark.parametrize("size", [100, 5000])
def test_paged_free_at_dispatch_is_c2_09(k, size):
    p = k.ExAllocatePoolWithTag(PP, size, "Fred")
    k.KeRaiseIrql(DISPATCH)
    e = bugcheck(lambda: k.ExFreePoolWithTag(p, "Fred"))
    assert (e.code, e.parameters) == (0xC2, (0x09, DISPATCH, PP, p))


def test_any_free_above_dispatch_is_c2_09(k):
    p = k.ExAllocatePoolWithTag(NP, 100, "Fred")
    k.KeRaiseIrql(13)
    e = bugcheck(lambda: k.ExFreePool(p))
    assert (e.code, e.parameters) == (0xC2, (0x09, 13, NP, p))


def test_apc_level_may_use_paged_pool(k):
    k.KeRaiseIrql(ntpool.APC_LEVEL)
    p = k.ExAllocatePoolWithTag(PP, 100, "Apc ")
    k.ExFreePoolWithTag(p, "Apc ")
    assert not k.halted


def test_lowering_irql_restores_the_fast_paths(k):
    k.KeRaiseIrql(DISPATCH)
    assert 1 not in k.pool.fast_pools
    k.KeLowerIrql(0)
    assert 1 in k.pool.fast_pools and k.pool.paged.base >> 39 in k.pool.fast_free_slots
    k.ExFreePoolWithTag(k.ExAllocatePoolWithTag(PP, 10, "Back"), "Back")


def test_the_fast_paths_tables_kept_per_irql_follow_a_processor_change():
    """The tables an IRQL change refills are made again after a processor change: lowered
    on processor 1, the fast paths hold processor 1's lookaside lists, not processor 0's
    (kept from when processor 0 was at PASSIVE_LEVEL)."""
    from ntpool import Kernel
    from ntpool.pool.allocator import fast_frees_of, fast_lists_of

    k = Kernel(processors=2)
    old = k.KeRaiseIrql(DISPATCH)
    k.KeLowerIrql(old)
    k.KeRaiseIrql(DISPATCH)  # both rules' tables made on processor 0
    k.set_current_processor(1)
    k.KeLowerIrql(0)
    assert k.pool.fast_lists[PP] == fast_lists_of(k.paged_pool)
    assert k.pool.fast_lists[PP][0] is k.paged_pool.per_processor[1].head
    assert k.pool.fast_frees[k.paged_pool.base >> 39] == fast_frees_of(k.paged_pool)
    chunk = k.ExAllocatePoolWithTag(PP, 10, "Proc")
    k.ExFreePoolWithTag(chunk, "Proc")
    assert k.paged_pool.per_processor[1].count[2] >= 1  # the free went to processor 1's list
    k.KeRaiseIrql(DISPATCH)
    assert PP not in k.pool.fast_pools and NP in k.pool.fast_pools
    assert k.pool.fast_lists[NP][0] is k.nonpaged_pool.per_processor[1].head


def _same_tables(held: dict, made: dict) -> bool:
    """The fast path's table holds what ``_make_fast_tables`` makes: the same keys, each value
    the same object or a tuple of the same objects (ints equal)."""
    def same(a, b):
        if a is b:
            return True
        return type(a) is tuple and type(b) is tuple and len(a) == len(b) and \
            all(x is y or type(x) is int and x == y for x, y in zip(a, b))
    return held.keys() == made.keys() and all(same(held[key], made[key]) for key in made)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.integers(0, 15).map(lambda irql: ("irql", irql)),
                          st.integers(0, 1).map(lambda number: ("processor", number)),
                          st.just(("refresh", None))), max_size=25))
def test_the_fast_paths_tables_after_any_irql_changes_are_those_made_for_the_irql(steps):
    """IRQL changes only change the entries that differ between two rules (the paged pool's
    go out at DISPATCH_LEVEL and come back below it): after any sequence of IRQL changes,
    processor changes and refreshes, every table is what would be made for the IRQL now."""
    from ntpool import Kernel

    k = Kernel(processors=2)
    for what, value in steps:
        if what == "irql":
            k._set_irql(value)
        elif what == "processor":
            k.set_current_processor(value)
        else:
            k.pool.refresh_fast_paths()
        fast_pools, fast_lists, lane_pools, free_slots, fast_frees = k.pool._make_fast_tables()
        assert _same_tables(k.pool.fast_pools, fast_pools)
        assert _same_tables(k.pool.fast_lists, fast_lists)
        assert _same_tables(k.pool.fast_free_slots, free_slots)
        assert _same_tables(k.pool.fast_frees, fast_frees)
        assert k.pool.lane_pools == lane_pools


def test_a_spin_lock_taken_while_memory_writes_are_watched_publishes_them(k):
    """The usual acquire and release write the lock's QWORD themselves, unless someone
    listens for memory writes: then each goes through the machine's write, which tells them."""
    from ntpool.hooks import MemoryWritten

    lock = k.ExAllocatePoolWithTag(NP, 8, "Lock")
    k.KeInitializeSpinLock(lock)
    seen = []
    k.hooks.subscribe(MemoryWritten, lambda event: seen.append((event.address, event.length)))
    old = k.KeAcquireSpinLock(lock)
    assert seen == [(lock, 8)]
    assert int.from_bytes(k.read(lock, 8), "little") == 1
    k.KeReleaseSpinLock(lock, old)
    assert seen == [(lock, 8), (lock, 8)]
    assert int.from_bytes(k.read(lock, 8), "little") == 0


def test_a_spin_lock_whose_other_bits_a_stray_write_set_is_taken_and_released(k):
    """Bit 0 clear is free, whatever else the QWORD holds; the release stores 0."""
    lock = k.ExAllocatePoolWithTag(NP, 8, "Lock")
    k.write(lock, (0xABCD << 8).to_bytes(8, "little"))
    old = k.KeAcquireSpinLock(lock)
    assert int.from_bytes(k.read(lock, 8), "little") == 1  # processor 0's hold
    k.KeReleaseSpinLock(lock, old)
    assert int.from_bytes(k.read(lock, 8), "little") == 0
    assert k.KeGetCurrentIrql() == 0


# --- paging ---------------------------------------------------------------------------------

def test_page_out_leaves_a_non_present_pte_and_frees_the_frame(k):
    p = k.ExAllocatePoolWithTag(PP, 100, "Page")
    k.write(p, b"kept across paging")
    frames = k.physical.frames_used
    assert k.page_out(p) == 1
    pte = k.space.pte(p)
    assert not pte & PTE_PRESENT and pte != 0  # a software PTE: the page is in the page file
    assert k.physical.frames_used == frames - 1
    assert not k.is_resident(p)


def test_touching_a_paged_out_page_at_passive_pages_it_in(k):
    p = k.ExAllocatePoolWithTag(PP, 100, "Page")
    k.write(p, b"kept across paging")
    k.page_out()
    assert k.read(p, 18) == b"kept across paging"
    assert k.is_resident(p) and k.space.pte(p) & PTE_PRESENT


def test_allocator_copes_with_paged_out_pages(k):
    ps = [k.ExAllocatePoolWithTag(PP, n, "Page") for n in (50, 300, 900, 6000)]
    k.page_out()
    for p in ps:
        k.ExFreePoolWithTag(p, "Page")  # headers and free lists are paged back in
    k.page_out()
    q = k.ExAllocatePoolWithTag(PP, 300, "Page")  # may come from a paged-out lookaside chunk
    k.write(q, b"x" * 300)
    k.ExFreePool(q)
    assert [r for r in k.pool_tags() if r.Tag == "egaP"][0].PagedUsed == 0


def test_list_heads_path_pages_in_the_chunks_it_links(k):
    # 600-byte chunks (39 blocks) skip the lookasides: each step below works on ListHeads
    # while the chunk it links to, or takes, is paged out, and must page it back in.
    pool = k.pool.paged
    ps = [k.ExAllocatePoolWithTag(PP, 600, "Page") for _ in range(18)]  # 6 a page
    x, y = ps[1], ps[13]  # on different pages, their neighbours allocated

    def step(action):
        k.page_out()
        before = k.pager.pages_in
        result = action()
        pool.deferred_free()
        assert k.pager.pages_in > before
        return result

    step(lambda: k.ExFreePoolWithTag(x, "Page"))
    step(lambda: k.ExFreePoolWithTag(y, "Page"))  # inserted beside x, which is out
    assert pool.free_list(39) == [y - 16, x - 16]
    assert step(lambda: k.ExAllocatePoolWithTag(PP, 600, "Page")) == y  # unlinked beside x
    assert step(lambda: k.ExAllocatePoolWithTag(PP, 600, "Page")) == x  # x itself is out
    # Splitting a paged-out 78-block chunk: from its end, then (first on its page) its front.
    for p in (ps[7], ps[8], ps[12], ps[13]):
        k.ExFreePoolWithTag(p, "Page")
    pool.deferred_free()
    live = set(ps) - {ps[7], ps[8], ps[12], ps[13]}
    # One chunk split, its remainder taken whole, then the other chunk split.
    taken = {step(lambda: k.ExAllocatePoolWithTag(PP, 600, "Page")) for _ in range(3)}
    assert len(taken) == 3 and taken < {ps[7], ps[8], ps[12], ps[13]}
    live |= taken
    for p in live:
        k.ExFreePoolWithTag(p, "Page")
    pool.deferred_free()
    assert [r for r in k.pool_tags() if r.Tag == "egaP"][0].PagedUsed == 0
    assert pool.pages_in_use == 0 and not any(pool.listed)  # every page coalesced and given back


def test_freeing_a_paged_out_big_allocation_drops_its_page_file_copy(k):
    p = k.ExAllocatePoolWithTag(PP, 3 * 4096, "Big ")
    assert k.page_out() == 3
    k.ExFreePoolWithTag(p, "Big ")
    assert k.pager.page_file == {} and k.space.pte(p) == 0


@pytest.mark.parametrize("write", [False, True])
def test_touching_paged_out_memory_at_dispatch_is_0xa_in_kernel_code(k, write):
    p = k.ExAllocatePoolWithTag(PP, 100, "Page")
    k.page_out(p)
    k.KeRaiseIrql(DISPATCH)
    e = bugcheck((lambda: k.write(p, b"!")) if write else (lambda: k.read(p, 1)))
    assert (e.code, e.parameters[:3]) == (0xA, (p, DISPATCH, int(write)))
    assert e.parameters[3] == k.call_sites.table[e.site].address  # the accessing line


def test_touching_paged_out_memory_at_dispatch_is_0xd1_in_a_driver(k):
    p = k.ExAllocatePoolWithTag(PP, 100, "Page")
    k.page_out(p)
    k.current_driver = Driver()
    old = k.KeRaiseIrql(DISPATCH)
    assert old == 0
    e = bugcheck(lambda: k.read(p, 4))
    assert (e.code, e.parameters[:3]) == (0xD1, (p, DISPATCH, 0))
    assert e.parameters[3] == k.call_sites.table[e.site].address != 0
    assert e.name == "DRIVER_IRQL_NOT_LESS_OR_EQUAL"


def test_resident_paged_memory_at_dispatch_is_readable(k):
    # The rule is about non-resident pages: touching a resident one does not fault.
    p = k.ExAllocatePoolWithTag(PP, 100, "Page")
    k.write(p, b"ok")
    k.KeRaiseIrql(DISPATCH)
    assert k.read(p, 2) == b"ok"


def test_a_spin_lock_in_paged_out_memory_faults_at_dispatch(k):
    lock = k.ExAllocatePoolWithTag(PP, 8, "Lock")
    k.KeInitializeSpinLock(lock)
    k.page_out(lock)
    k.current_driver = Driver()
    e = bugcheck(lambda: k.KeAcquireSpinLock(lock))
    # 1: the lock bts is a locked read-modify-write, which x86 reports as a write.
    assert (e.code, e.parameters[:3]) == (0xD1, (lock, DISPATCH, 1))


@pytest.mark.parametrize("address, error", [("p", TypeError), (0x1000, ValueError)])
def test_page_out_misuse(k, address, error):
    with pytest.raises(error, match="address"):
        k.page_out(address)


def test_nonpaged_pool_cannot_be_paged_out(k):
    p = k.ExAllocatePoolWithTag(NP, 100, "Np  ")
    with pytest.raises(ValueError, match="paged pool"):
        k.page_out(p)
    assert k.is_resident(p)


def test_paging_keeps_the_tracker_and_tags(k):
    p = k.ExAllocatePoolWithTag(PP, 100, tag_value("Trak") | ntpool.PROTECTED_POOL)
    k.page_out()
    e = bugcheck(lambda: k.ExFreePoolWithTag(p, "Other"[:4]))
    assert e.parameters == (0x0A, p, tag_value("Trak"), tag_value("Othe"))
