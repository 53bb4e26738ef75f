"""The demo's story (``demo_workload``) told by the Python sample drivers.

``ntpool demo --python-drivers`` runs it (also ``ntpool run demo-python``): the drivers
are Python objects calling the kernel's methods (``fs_filter.py`` catches
STATUS_INSUFFICIENT_RESOURCES with ``try/except ntpool.NtStatusError``), and the debugger
names their Python lines.
"""

from ntpool.samples.demo_workload import CHECKPOINTS, KERNEL, workload_for
from ntpool.samples.fs_filter import FsFilter
from ntpool.samples.ndis_miniport import NdisMiniport
from ntpool.samples.sloppy import SloppyDriver

miniport = NdisMiniport(receive_buffers=64)
fs_filter = FsFilter()
sloppy = SloppyDriver()
DRIVERS = [miniport, fs_filter, sloppy]
workload = workload_for(miniport, fs_filter, sloppy)
__all__ = ["CHECKPOINTS", "DRIVERS", "KERNEL", "workload"]
