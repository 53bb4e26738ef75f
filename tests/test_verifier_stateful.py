"""Random driver work under Driver Verifier keeps pool, special pool and tracking consistent."""

from collections import Counter

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import ntpool
from ntpool.tags import tag_value

TAGS = ["Spc1", "Spc2", "Nrm "]


class Worker:
    name = "worker.sys"

    def DriverEntry(self, k, path):
        return 0

    def DriverUnload(self, k):
        pass

    def allocate(self, k, pool_type, size, tag):
        return k.ExAllocatePoolWithTag(pool_type, size, tag)

    def free(self, k, p, tag):
        k.ExFreePoolWithTag(p, tag)

    def fill(self, k, p, data):
        k.write(p, data)


class VerifiedPoolMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.k = ntpool.Kernel(nonpaged_pool_bytes=64 * 4096, paged_pool_bytes=64 * 4096)
        self.k.verifier.special_pool.resize(8)
        self.driver = Worker()
        self.k.load_driver(self.driver)
        self.k.verifier.enable("worker.sys", special_pool=True, pool_tracking=True,
                               special_pool_tags=["?cp*"])
        self.live = {}

    @rule(pool_type=st.sampled_from([0, 1]), size=st.integers(1, 6000), tag=st.sampled_from(TAGS))
    def allocate(self, pool_type, size, tag):
        p = self.driver.allocate(self.k, pool_type, size, tag)
        if p:
            self.live[p] = (pool_type, size, tag)

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def free(self, data):
        p = data.draw(st.sampled_from(sorted(self.live)))
        self.driver.free(self.k, p, self.live.pop(p)[2])

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def fill_exactly(self, data):
        p = data.draw(st.sampled_from(sorted(self.live)))
        self.driver.fill(self.k, p, b"\xEE" * self.live[p][1])

    @invariant()
    def special_pool_holds_the_matching_small_allocations(self):
        special = self.k.verifier.special_pool
        for p, (_, size, tag) in self.live.items():
            if special.contains(p):
                assert tag.startswith("Spc") and size <= 4096 - 16
                assert (p + ((size + 15) & ~15)) & 0xFFF == 0
        assert len(special.live) == sum(1 for p in self.live if special.contains(p))

    @invariant()
    def tracking_lists_exactly_the_live_allocations(self):
        assert {row.address for row in self.k.verifier.outstanding("worker.sys")} == set(self.live)

    @invariant()
    def tracker_counts_live_allocations(self):
        live = Counter(tag_value(tag) for _, _, tag in self.live.values())
        for row in self.k.pool_tags():
            assert row.NonPagedAllocs + row.PagedAllocs - row.NonPagedFrees - row.PagedFrees == live[row.TagUlong]

    def teardown(self):
        for p, (_, _, tag) in list(self.live.items()):
            self.driver.free(self.k, p, tag)
        self.k.unload_driver(self.driver)  # no leak left: no 0xC4/0x62
        assert not self.k.halted


VerifiedPoolMachine.TestCase.settings = settings(max_examples=40, stateful_step_count=40, deadline=None)
TestVerifiedPoolMachine = VerifiedPoolMachine.TestCase


class Bystander:
    """A second driver with code of its own (a call site belongs to the driver whose code it is)."""

    name = "bystander.sys"

    def DriverEntry(self, k, path):
        return 0

    def DriverUnload(self, k):
        pass

    def allocate(self, k, pool_type, size, tag):
        return k.ExAllocatePoolWithTag(pool_type, size, tag)

    def free(self, k, p, tag):
        k.ExFreePoolWithTag(p, tag)


class TrackedPoolMachine(RuleBasedStateMachine):
    """Pool tracking alone, beside a driver that is not verified: the allocator serves most
    of both drivers' requests in its lane and frees them on its fast path, and the records,
    the tracker and the pool must come out as the checked path leaves them."""

    def __init__(self):
        super().__init__()
        self.k = ntpool.Kernel(nonpaged_pool_bytes=self.pool_bytes, paged_pool_bytes=self.pool_bytes,
                               windows=self.windows)
        self.drivers = {"worker.sys": Worker(), "bystander.sys": Bystander()}
        for driver in self.drivers.values():
            self.k.load_driver(driver)
        self.warm_up()
        self.k.verifier.enable("worker.sys", pool_tracking=True)
        self.live = {}  # address -> (driver name, pool type, size, tag)

    windows = "7"
    pool_bytes = 64 * 4096

    def warm_up(self):
        pass

    @rule(name=st.sampled_from(["worker.sys", "bystander.sys"]), pool_type=st.sampled_from([0, 1]),
          size=st.integers(1, 700), tag=st.sampled_from(TAGS))
    def allocate(self, name, pool_type, size, tag):
        p = self.drivers[name].allocate(self.k, pool_type, size, tag)
        if p:
            self.live[p] = (name, pool_type, size, tag)

    @precondition(lambda self: self.live)
    @rule(data=st.data(), by_owner=st.booleans())
    def free(self, data, by_owner):
        p = data.draw(st.sampled_from(sorted(self.live)))
        name, _, _, tag = self.live.pop(p)
        freer = name if by_owner else ({"worker.sys", "bystander.sys"} - {name}).pop()
        self.drivers[freer].free(self.k, p, tag)

    @rule()
    def raise_and_lower_irql(self):
        old = self.k.KeRaiseIrql(2)  # nonpaged only; the lanes follow the IRQL
        self.k.KeLowerIrql(old)

    @invariant()
    def tracking_lists_exactly_the_workers_live_allocations(self):
        rows = self.k.verifier.outstanding("worker.sys")
        assert {(row.address, row.size, row.tag) for row in rows} == {
            (p, size, tag_value(tag)) for p, (name, _, size, tag) in self.live.items()
            if name == "worker.sys"}
        assert self.k.verifier.outstanding("bystander.sys") == []

    @invariant()
    def tracker_counts_live_allocations(self):
        live = Counter(tag_value(tag) for _, _, _, tag in self.live.values())
        for row in self.k.pool_tags():
            assert row.NonPagedAllocs + row.PagedAllocs - row.NonPagedFrees - row.PagedFrees == live[row.TagUlong]

    def teardown(self):
        for p, (name, _, _, tag) in list(self.live.items()):
            self.drivers[name].free(self.k, p, tag)
        for driver in self.drivers.values():
            self.k.unload_driver(driver)  # no leak left: no 0xC4/0x62
        assert not self.k.halted


TrackedPoolMachine.TestCase.settings = settings(max_examples=40, stateful_step_count=40, deadline=None)
TestTrackedPoolMachine = TrackedPoolMachine.TestCase


class TrackedSegmentHeapMachine(TrackedPoolMachine):
    """The same on Windows 11's segment heap, with the LFH serving a few sizes from the start
    (it takes over a size at its 2040th request), so the lane and the LFH free fast path
    see both drivers' blocks."""

    windows = "11"
    pool_bytes = 4 << 20

    def warm_up(self):
        from ntpool.pool.segment_heap.layout import LFH_ACTIVATE_REQUESTS

        bystander = self.drivers["bystander.sys"]
        for pool_type in (0, 1):
            for size in (24, 100, 200):
                held = [bystander.allocate(self.k, pool_type, size, TAGS[0])
                        for _ in range(LFH_ACTIVATE_REQUESTS + 8)]
                for p in held:
                    bystander.free(self.k, p, TAGS[0])


TrackedSegmentHeapMachine.TestCase.settings = settings(max_examples=15, stateful_step_count=40,
                                                       deadline=None)
TestTrackedSegmentHeapMachine = TrackedSegmentHeapMachine.TestCase
