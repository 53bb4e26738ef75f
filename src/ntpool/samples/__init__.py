"""Sample drivers and scenarios to read and copy.

- ``ndis_miniport``: an NDIS miniport keeping receive buffers from NdisAllocateMemoryWithTag.
- ``fs_filter``: a file-system filter that allocates with FsRtlAllocatePoolWithTag and
  handles STATUS_INSUFFICIENT_RESOURCES with try/except, as the documentation advises.
- ``sloppy``: a driver with two real bugs, a leak and an overrun.
- ``demo``: the scenario ``ntpool demo`` runs (also ``ntpool run demo``).
"""
