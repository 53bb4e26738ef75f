"""``ntpool.Kernel``: the core machine with the layers that sit on top of it.

The core (``ntpool.kernel.Kernel``) never imports the edges (dumps, verifier, drivers'
tooling); this class is where they are put together for users.
"""

from .kernel import Kernel as CoreKernel


class Kernel(CoreKernel):
    """A fresh simulated x64 Windows machine (see ``ntpool.kernel.Kernel`` for arguments)."""
