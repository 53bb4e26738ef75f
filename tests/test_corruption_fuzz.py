"""A driver that corrupts the pool on purpose never breaks the model (hypothesis, stateful).

Rules allocate, free and corrupt (overrun, underrun, use-after-free write, double free,
stale free, wild writes into headers and freed chunks) on both pools, small and big
chunks, with lookasides on and off. Invariant: only BugCheck or NtStatusError escape (NULL
returns are fine); after a bug check the machine is halted, can still be inspected, and
its dump opens with ntpool's reader and ``!analyze -v`` runs on it. The long run is
``python -m ntpool.tools.corruption_fuzz --runs 100000`` (README).
"""

import random
import tempfile

import pytest

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

import ntpool
from ntpool import BugCheck, NtStatusError
from ntpool.tools.corruption_fuzz import SloppyDriver, check_after_bugcheck, run_one


class CorruptingDriverMachine(RuleBasedStateMachine):
    driver: SloppyDriver
    windows = "7"

    @initialize(lookasides=st.booleans(), seed=st.integers(0, 2**32 - 1))
    def boot(self, lookasides, seed):
        self.driver = SloppyDriver(random.Random(seed), lookasides, self.windows)
        self.stopped = None

    def _step(self, operation: str, seed: int) -> None:
        self.driver.rng.seed(seed)
        try:
            getattr(self.driver, operation)()
        except NtStatusError:
            pass
        except BugCheck as error:  # Windows' answer: the run ends here
            self.stopped = error
            with tempfile.TemporaryDirectory() as folder:
                check_after_bugcheck(self.driver.k, folder)

    def running(self) -> bool:
        return self.stopped is None

    @precondition(running)
    @rule(seed=st.integers(0, 2**32 - 1))
    def allocate(self, seed):
        self._step("allocate", seed)

    @precondition(running)
    @rule(seed=st.integers(0, 2**32 - 1))
    def free(self, seed):
        self._step("free", seed)

    @precondition(running)
    @rule(seed=st.integers(0, 2**32 - 1))
    def overrun(self, seed):
        self._step("overrun", seed)

    @precondition(running)
    @rule(seed=st.integers(0, 2**32 - 1))
    def underrun(self, seed):
        self._step("underrun", seed)

    @precondition(running)
    @rule(seed=st.integers(0, 2**32 - 1))
    def use_after_free(self, seed):
        self._step("use_after_free", seed)

    @precondition(running)
    @rule(seed=st.integers(0, 2**32 - 1))
    def double_free(self, seed):
        self._step("double_free", seed)

    @precondition(running)
    @rule(seed=st.integers(0, 2**32 - 1))
    def stale_free(self, seed):
        self._step("stale_free", seed)

    @precondition(running)
    @rule(seed=st.integers(0, 2**32 - 1))
    def wild_write(self, seed):
        self._step("wild_write", seed)

    @precondition(running)
    @rule(seed=st.integers(0, 2**32 - 1))
    def flush_lookasides(self, seed):
        self._step("flush", seed)

    @precondition(lambda self: self.stopped is not None)
    @rule()
    def halted_machine_refuses_routines_plainly(self):
        import ntpool

        try:
            self.driver.k.ExAllocatePoolWithTag(0, 16, "Late")
        except ntpool.MachineHalted:
            pass
        else:
            raise AssertionError("a halted machine allocated")


CorruptingDriverMachine.TestCase.settings = settings(
    max_examples=25, stateful_step_count=60, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
TestCorruptingDriver = CorruptingDriverMachine.TestCase


class CorruptingDriverSegmentHeapMachine(CorruptingDriverMachine):
    """The same driver on Windows 11's segment heap (LFH, VS and big blocks, NonPagedPoolNx):
    its answers are 0x13A, 0x19, 0xC2 and 0x50, never a Python error."""

    windows = "11"


CorruptingDriverSegmentHeapMachine.TestCase.settings = CorruptingDriverMachine.TestCase.settings
TestCorruptingDriverSegmentHeap = CorruptingDriverSegmentHeapMachine.TestCase


@pytest.mark.parametrize("windows", ["7", "10", "11"])
def test_seeded_runs_of_the_long_fuzzer_have_no_internal_error(tmp_path, windows):
    seeds = range(60) if windows == "7" else range(24)  # a segment-heap run warms its LFH first
    outcomes = [run_one(seed, steps=400, dump=seed % 10 == 0, dump_dir=str(tmp_path), windows=windows)
                for seed in seeds]
    assert [text for outcome, text in outcomes if outcome == "internal"] == []
    assert any(outcome.startswith("bugcheck") for outcome, _ in outcomes)
    # The segment heap answers damage to its own structures with 0x13A, as Windows 10 does.
    assert any(outcome == "bugcheck 0x13a" for outcome, _ in outcomes) == (windows != "7")


# --- the wilder driver (Wildness: the long fuzzer's options) ----------------------------------

def test_the_wild_driver_options_make_the_machine_they_name():
    from ntpool.tools.corruption_fuzz import Wildness

    wild = Wildness(pool_mib=2, memory_mib=512, targets=("structures", "anywhere"), processors=3,
                    dispatch=1.0)
    driver = SloppyDriver(random.Random(0), True, "7", wild)
    k = driver.k
    assert k.processors == 3 and k.nonpaged_pool.delay_frees  # 508 MiB or more: delayed frees
    assert not SloppyDriver(random.Random(0), True, "7").k.nonpaged_pool.delay_frees
    names = [name for name, _ in wild.operations()]
    assert {"structure_write", "anywhere_write", "switch_processor"} <= set(names)
    assert "overrun" not in names  # "near" was not asked for
    descriptors = driver._structures()
    assert (k.nonpaged_pool.descriptor_va, 0x1140) in descriptors
    driver.set_irql()
    assert k.KeGetCurrentIrql() == ntpool.DISPATCH_LEVEL
    for _ in range(20):
        driver.allocate()  # at DISPATCH_LEVEL: nonpaged pool only
    assert driver.live and all(not pool_type & 1 for _, _, pool_type, _ in driver.live)
    heap_driver = SloppyDriver(random.Random(0), True, "11", wild)
    sub = heap_driver.k.nonpaged_pool_nx.subsegment_of(
        heap_driver.k.ExAllocatePoolWithTag(ntpool.PoolType.NonPagedPoolNx, 0x50, "Warm"))
    assert any(address == sub.va for address, _ in heap_driver._structures())


def test_the_wild_driver_options_are_checked():
    from ntpool.tools.corruption_fuzz import main

    for bad in (["--targets", "near,nowhere"], ["--dispatch", "2"], ["--processors", "0"],
                ["--quota", "-0.5"]):
        with pytest.raises(SystemExit) as info:
            main(["--runs", "1", *bad])
        assert info.value.code == 2


@pytest.mark.parametrize("windows", ["7", "11"])
def test_seeded_runs_of_the_wild_driver_have_no_internal_error(tmp_path, windows):
    from ntpool.tools.corruption_fuzz import Wildness

    wild = Wildness(pool_mib=1, memory_mib=512 if windows == "7" else None,
                    targets=("near", "structures", "anywhere"), processors=2, dispatch=0.3)
    seeds = range(40) if windows == "7" else range(6)
    outcomes = [run_one(seed, steps=400, dump=seed % 10 == 0, dump_dir=str(tmp_path),
                        windows=windows, wildness=wild) for seed in seeds]
    assert [text for outcome, text in outcomes if outcome == "internal"] == []
    assert any(outcome.startswith("bugcheck") for outcome, _ in outcomes)


@pytest.mark.parametrize("windows", ["7", "11"])
def test_the_charging_driver_charges_its_process_and_breaks_nothing(tmp_path, windows):
    from ntpool.tools.corruption_fuzz import Wildness

    wild = Wildness(quota=1.0)
    driver = SloppyDriver(random.Random(1), True, windows, wild)
    for _ in range(20):
        driver.allocate()
    process = driver.k.current_process
    assert process is not driver.k.system_process and process.name == "sloppy.exe"
    assert process.nonpaged_quota_used + process.paged_quota_used > 0
    for _ in range(len(driver.live)):
        driver.free()
    assert process.nonpaged_quota_used == process.paged_quota_used == 0
    wild = Wildness(targets=("near", "structures", "anywhere"), quota=0.5)
    seeds = range(30) if windows == "7" else range(4)
    outcomes = [run_one(seed, steps=400, dump=seed % 10 == 0, dump_dir=str(tmp_path),
                        windows=windows, wildness=wild) for seed in seeds]
    assert [text for outcome, text in outcomes if outcome == "internal"] == []
    assert any(outcome.startswith("bugcheck") for outcome, _ in outcomes)
