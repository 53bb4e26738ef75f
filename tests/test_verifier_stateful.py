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
