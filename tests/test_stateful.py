"""Random allocate / free / write sequences keep the pool consistent (hypothesis)."""

from collections import defaultdict

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import ntpool
from ntpool.pool.descriptor import PAGE_SMALL
from ntpool.pool.layout import page_problems, walk_page
from ntpool.tags import tag_value

TAGS = ["Fred", "Barn", "Ndis", "Fs  "]
SIZES = st.one_of(st.integers(1, 496), st.integers(497, 0xFE0), st.integers(0xFE1, 3 * 4096))


class PoolMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.k = ntpool.Kernel(nonpaged_pool_bytes=48 * 4096, paged_pool_bytes=48 * 4096)
        self.live = {}  # address -> (pool type, size, tag)
        self.contents = {}  # address -> bytes written at its start

    @rule(pool_type=st.sampled_from([0, 1]), size=SIZES, tag=st.sampled_from(TAGS))
    def allocate(self, pool_type, size, tag):
        p = self.k.ExAllocatePoolWithTag(pool_type, size, tag)
        if p:
            assert p not in self.live
            self.live[p] = (pool_type, size, tag)

    @precondition(lambda self: self.live)
    @rule(data=st.data(), untagged=st.booleans())
    def free(self, data, untagged):
        p = data.draw(st.sampled_from(sorted(self.live)))
        _, _, tag = self.live.pop(p)
        self.contents.pop(p, None)
        if untagged:
            self.k.ExFreePool(p)
        else:
            self.k.ExFreePoolWithTag(p, tag)

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def write_inside(self, data):
        p = data.draw(st.sampled_from(sorted(self.live)))
        size = self.live[p][1]
        payload = data.draw(st.binary(min_size=1, max_size=min(size, 64)))
        payload = payload + bytes(size - len(payload)) if data.draw(st.booleans()) else payload
        self.k.write(p, payload)
        self.contents[p] = payload

    def chunks_of_pool(self, pool):
        for index, kind in enumerate(pool.page_kind):
            if kind == PAGE_SMALL:
                va = pool.base + index * 4096
                page = self.k.read(va, 4096)
                assert page_problems(page, va) == []
                yield from walk_page(page, va)

    @invariant()
    def headers_are_consistent_and_live_chunks_allocated(self):
        allocated = {}
        for pool in (self.k.nonpaged_pool, self.k.paged_pool):
            cached = pool.lookaside_chunks()  # marked in use in memory, as in Windows 7
            for chunk in self.chunks_of_pool(pool):
                if chunk.state == "Allocated" and chunk.address not in cached:
                    allocated[chunk.body] = chunk
        small_live = {p for p, (_, size, _) in self.live.items() if size <= 0xFE0}
        assert set(allocated) == small_live
        for p in small_live:
            pool_type, size, tag = self.live[p]
            chunk = allocated[p]
            assert chunk.tag == tag_value(tag)
            assert chunk.size >= size + 16
            assert chunk.pool_type == pool_type | 2

    @invariant()
    def live_allocations_do_not_overlap(self):
        spans = []
        for p, (_, size, _) in self.live.items():
            start = p - 16 if size <= 0xFE0 else p
            end = p + size
            spans.append((start, end))
        spans.sort()
        for (s1, e1), (s2, e2) in zip(spans, spans[1:]):
            assert e1 <= s2

    @invariant()
    def written_bytes_survive(self):
        for p, payload in self.contents.items():
            assert self.k.read(p, len(payload)) == payload

    @invariant()
    def tracker_equals_live_allocations(self):
        expected = defaultdict(lambda: [0, 0])
        for p, (pool_type, size, tag) in self.live.items():
            charged = ((size + 31) // 16) * 16 if size <= 0xFE0 else -(-size // 4096) * 4096
            expected[tag_value(tag)][pool_type] += charged
        actual = {r.TagUlong: [r.NonPagedUsed, r.PagedUsed] for r in self.k.pool_tags()}
        for tag in set(expected) | set(actual):
            assert actual.get(tag, [0, 0]) == expected.get(tag, [0, 0])
        for r in self.k.pool_tags():
            live_np = sum(1 for p, (t, _, g) in self.live.items() if t == 0 and tag_value(g) == r.TagUlong)
            assert r.NonPagedAllocs - r.NonPagedFrees == live_np


PoolMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=80, deadline=None)
TestPoolMachine = PoolMachine.TestCase
