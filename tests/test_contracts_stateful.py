"""Random mixes of the contract routines keep the pool, the tracker and quota consistent
(hypothesis): cache-aligned and quota allocations, frees, paging out, IRQL changes."""

from collections import defaultdict

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import ntpool
from ntpool.pool.descriptor import PAGE_SMALL
from ntpool.pool.layout import page_problems, walk_page
from ntpool.tags import tag_value

TYPES = [0, 1, 4, 5, 512]
SIZES = st.one_of(st.integers(1, 600), st.integers(601, 0xFE0), st.integers(0xFE1, 2 * 4096))


def expected_charge(pool_type: int, size: int) -> int:
    """What Windows 7 charges a request, from the rules alone (not the allocator's code): the
    header and body in 16-byte blocks; pages for more than 0xFE0 bytes, and for a
    cache-aligned request whose blocks leave no room to align (more than 0xFF - 3)."""
    blocks = (size + 16 + 15) // 16
    if size > 0xFE0 or (pool_type & 4 and blocks > 0xFF - 3):
        return -(-size // 4096) * 4096
    return blocks * 16


def test_the_expected_charges_are_windows_own():
    assert [expected_charge(0, n) for n in (1, 16, 17, 100, 0xFE0)] == [32, 32, 48, 128, 0xFF0]
    assert [expected_charge(0, n) for n in (0xFE1, 4096, 4097)] == [4096, 4096, 8192]
    assert expected_charge(4, 0xFA0) == 0xFB0 and expected_charge(4, 0xFC0) == 4096


class ContractMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.k = ntpool.Kernel(nonpaged_pool_bytes=40 * 4096, paged_pool_bytes=40 * 4096)
        self.app = self.k.create_process("app.exe")
        self.live = {}  # address -> (pool type, size, quota charged)

    @rule(pool_type=st.sampled_from(TYPES), size=SIZES, quota=st.booleans())
    def allocate(self, pool_type, size, quota):
        k = self.k
        if pool_type & 1 and k.KeGetCurrentIrql() > 1:
            return
        if quota:
            k.set_current_process(self.app)
            p = k.ExAllocatePoolWithQuotaTag(pool_type | 8, size, "Quot")
            k.set_current_process(k.system_process)
        else:
            p = k.ExAllocatePoolWithTag(pool_type, size, "Rand")
        if p:
            if pool_type & 4:
                assert p % 64 == 0
            assert p not in self.live
            self.live[p] = (pool_type, size, quota)
            k.write(p, b"\x77" * size)

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def free(self, data):
        p = data.draw(st.sampled_from(sorted(self.live)))
        pool_type, _, quota = self.live[p]
        if pool_type & 1 and self.k.KeGetCurrentIrql() > 1:
            return
        del self.live[p]
        self.k.ExFreePoolWithTag(p, "Quot" if quota else "Rand")

    @rule()
    def page_out_everything(self):
        self.k.page_out()

    @rule(irql=st.sampled_from([0, 1, 2]))
    def change_irql(self, irql):
        k = self.k
        if irql >= k.KeGetCurrentIrql():
            k.KeRaiseIrql(irql)
        else:
            k.KeLowerIrql(irql)

    @invariant()
    def pages_are_consistent_and_live_chunks_intact(self):
        k = self.k
        if k.KeGetCurrentIrql() >= 2:
            return  # paged pool may not be touched now
        starts = {}
        for pool in (k.nonpaged_pool, k.paged_pool):
            for index, kind in enumerate(pool.page_kind):
                if kind == PAGE_SMALL:
                    va = pool.base + index * 4096
                    page = k.read(va, 4096)
                    assert page_problems(page, va) == []
                    for chunk in walk_page(page, va):
                        starts[chunk.body] = chunk
        for p, (_, size, _) in self.live.items():
            if p & 0xFFF:
                assert starts[p].state == "Allocated"
            assert k.read(p, size) == b"\x77" * size

    @invariant()
    def tracker_and_quota_match_the_live_allocations(self):
        expected = defaultdict(int)
        charged = [0, 0]
        for p, (pool_type, size, quota) in self.live.items():
            cost = expected_charge(pool_type, size)
            expected[(tag_value("Quot" if quota else "Rand"), pool_type & 1)] += cost
            if quota:
                charged[pool_type & 1] += cost
        rows = {r.TagUlong: r for r in self.k.pool_tags()}
        for tag in ("Quot", "Rand"):
            r = rows.get(tag_value(tag))
            used = (r.NonPagedUsed, r.PagedUsed) if r else (0, 0)
            assert used == (expected[(tag_value(tag), 0)], expected[(tag_value(tag), 1)])
        assert self.app.quota_usage == charged


ContractMachine.TestCase.settings = settings(max_examples=40, stateful_step_count=30,
                                             deadline=None)
test_contracts_stay_consistent = ContractMachine.TestCase
