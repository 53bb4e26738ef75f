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
        # Each driver draws from a stream of its own, seeded by the seed and the driver's
        # name: reproducible for a seed, and independent between drivers verified with the
        # same seed (one stream per seed alone failed every driver's n-th allocation
        # together). A str seed is hashed with SHA-512, the same in every process.
        self._state[options.name] = [random.Random(f"{options.fault_seed}:{options.name}"), 0]

    def should_fail(self, options, tag: int, site: int) -> bool:
        state = self._state[options.name]
        state[1] += 1
        if state[1] <= options.fault_delay:
            return False
        if options.fault_tags and not any(fnmatchcase(display(tag), p) for p in options.fault_tags):
            return False
        if state[0].random() < options.fault_probability:
            self.injected.append(InjectedFailure(site, tag))
            return True
        return False


class SystematicLowResources:
    """The first call from each distinct call site fails; later calls from it pass.

    With ``targets`` set (call-site keys: file, line, function), only those sites fail,
    once each: ``ntpool verify`` uses that to fail one site per run. With ``nth`` above 1,
    the n-th call from a target site fails instead of the first.
    """

    def __init__(self, kernel):
        self.kernel = kernel
        self.failed_sites: list[int] = []
        self.seen_keys: set[tuple] = set()
        self.targets: set[tuple] | None = None
        self.nth = 1
        self._seen: set[int] = set()
        self._calls: dict[int, int] = {}  # target site -> calls so far (only with nth > 1)

    def site_key(self, site: int) -> tuple:
        entry = self.kernel.call_sites.table[site]
        return (entry.filename, entry.lineno, entry.function)

    def should_fail(self, site: int) -> bool:
        if site in self._seen:
            return self._nth_call(site)
        self._seen.add(site)
        key = self.site_key(site)
        self.seen_keys.add(key)
        if self.targets is not None and key not in self.targets:
            return False
        if self.nth > 1:
            self._calls[site] = 0
            return self._nth_call(site)
        self.failed_sites.append(site)
        return True

    def _nth_call(self, site: int) -> bool:
        if site not in self._calls:
            return False
        self._calls[site] += 1
        if self._calls[site] != self.nth:
            return False
        del self._calls[site]
        self.failed_sites.append(site)
        return True

    def reset(self, targets=None, nth: int = 1) -> None:
        """Start over; with ``targets``, fail only the first (or ``nth``) call from those sites."""
        if not isinstance(nth, int) or nth < 1:
            raise ValueError(f"nth must be a positive call count, got {nth!r}")
        self.failed_sites = []
        self.seen_keys = set()
        self._seen = set()
        self._calls = {}
        self.nth = nth
        self.targets = None if targets is None else set(targets)
