"""The scenario ``ntpool demo`` runs: three compiled drivers, a day of traffic, a backup, a crash.

The drivers are the C samples in ``samples/native/`` (ndisminiport.sys, fsfilter.sys with
its compiled ``__try/__except``, sloppy.sys with its leak and overrun), their own machine
code running on the machine's pool; the story is ``demo_workload``'s:

1. Traffic: the miniport receives and sends frames, the filter opens and closes files,
   and the sloppy driver serves requests, leaking the ones that are cancelled.
2. A backup opens thousands of files at once: paged pool runs out, FsRtlAllocatePoolWithTag
   raises STATUS_INSUFFICIENT_RESOURCES, and the filter's __except fails those opens cleanly.
3. The sloppy driver gets a name that fills its buffer exactly: the missing room for the
   NUL overruns into the next chunk's header, and the free is BAD_POOL_HEADER 0x19/0x20.

Run it as ``ntpool run demo`` (or copy this file and change it). ``demo-python``
(``demo_python.py``, ``ntpool demo --python-drivers``) is the same story told by the
Python twins of these drivers.
"""

from ntpool.samples.compiled import CompiledFsFilter, CompiledNdisMiniport, CompiledSloppyDriver
from ntpool.samples.demo_workload import CHECKPOINTS, KERNEL, workload_for

miniport = CompiledNdisMiniport()
fs_filter = CompiledFsFilter()
sloppy = CompiledSloppyDriver()
DRIVERS = [miniport, fs_filter, sloppy]
workload = workload_for(miniport, fs_filter, sloppy)
__all__ = ["CHECKPOINTS", "DRIVERS", "KERNEL", "workload"]
