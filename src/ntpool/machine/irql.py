"""The IRQL rule of the pool routines, which the allocators and Driver Verifier share.

The processors' IRQLs and the Ke routines that change them (KeRaiseIrql, spin locks) are
routines drivers call: ``routines/ke_irql.py``.
"""

from ..constants import APC_LEVEL, DISPATCH_LEVEL


def pool_usable_at(irql: int, base_type: int) -> bool:
    """The pool routines' IRQL rule: any pool at or below DISPATCH_LEVEL, paged pool (base
    type 1) only at or below APC_LEVEL. Allocation, free, the fast paths and Driver
    Verifier's checks all ask this one function."""
    return irql <= (APC_LEVEL if base_type & 1 else DISPATCH_LEVEL)
