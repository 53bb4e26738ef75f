"""A workload that never ends (a campaign stops it at its time limit)."""

DRIVERS = []


def workload(k, rng):
    while True:
        pass
