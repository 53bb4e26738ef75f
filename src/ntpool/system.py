"""``ntpool.Kernel``: the core machine with the layers that sit on top of it.

The core (``ntpool.kernel.Kernel``) never imports the edges (dumps, verifier, drivers'
tooling); this class is where they are put together for users.
"""

from .kernel import Kernel as CoreKernel
from .verifier import DriverVerifier


class Kernel(CoreKernel):
    """A fresh simulated x64 Windows machine (see ``ntpool.kernel.Kernel`` for arguments).

    ``k.verifier`` is Driver Verifier: ``k.verifier.enable("driver.sys", special_pool=True)``.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.verifier = DriverVerifier(self)
