"""Low resources simulation: allocations fail on purpose, at random or systematically."""

import random
from fnmatch import fnmatchcase
from typing import NamedTuple

from ..tags import display


class InjectedFailure(NamedTuple):
    site: int
    tag: int


class LowResourcesSimulation:
    """Random failures: a probability, a seed, a tag filter, and a delay in allocations."""

    def __init__(self, kernel):
        self.kernel = kernel
        self._state: dict[str, list] = {}  # driver pattern -> [rng, allocations seen]
        self.injected: list[InjectedFailure] = []

    def configure(self, options) -> None:
        self._state[options.name] = [random.Random(options.fault_seed), 0]

    def should_fail(self, options, tag: int) -> bool:
        state = self._state[options.name]
        state[1] += 1
        if state[1] <= options.fault_delay:
            return False
        if options.fault_tags and not any(fnmatchcase(display(tag), p) for p in options.fault_tags):
            return False
        if state[0].random() < options.fault_probability:
            self.injected.append(InjectedFailure(0, tag))
            return True
        return False


class SystematicLowResources:
    """The first call from each distinct call site fails; later calls from it pass."""

    def __init__(self, kernel):
        self.kernel = kernel
        self.failed_sites: list[int] = []
        self._seen: set[int] = set()

    def should_fail(self, site: int) -> bool:
        if site in self._seen:
            return False
        self._seen.add(site)
        self.failed_sites.append(site)
        return True

    def reset(self, already_failed=()) -> None:
        """Start over, treating ``already_failed`` sites as failed before."""
        self.failed_sites = []
        self._seen = set(already_failed)
