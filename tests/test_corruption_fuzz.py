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
