"""``ntpool demo``: a short built-in scenario (the demo issue grows it into the full show)."""

import random

from rich.console import Console
from rich.table import Table

from ..constants import PoolType
from ..errors import BugCheck
from ..kernel import Kernel
from ..tags import display


def _pool_table(kernel: Kernel) -> Table:
    table = Table(title="Pool usage by tag (as poolmon shows it)")
    for column in ("Tag", "Type", "Allocs", "Frees", "Diff", "Bytes", "Per Alloc"):
        table.add_column(column, justify="left" if column in ("Tag", "Type") else "right")
    for row in kernel.pool_tags():
        for kind, allocs, frees, used in (("Nonp", row.NonPagedAllocs, row.NonPagedFrees, row.NonPagedUsed),
                                          ("Paged", row.PagedAllocs, row.PagedFrees, row.PagedUsed)):
            if allocs:
                diff = allocs - frees
                table.add_row(display(row.TagUlong), kind, str(allocs), str(frees), str(diff),
                              str(used), str(used // diff if diff else 0))
    return table


def run_demo(seed: int = 1) -> int:
    console = Console()
    rng = random.Random(seed)
    kernel = Kernel(nonpaged_pool_bytes=16 << 20, paged_pool_bytes=16 << 20)
    console.print(f"[bold]ntpool[/bold]: booted an x64 machine (CR3 {kernel.space.cr3 << 12:#x}), seed {seed}")
    live: list[tuple[int, str]] = []
    for step in range(5000):
        if live and rng.random() < 0.45:
            address, tag = live.pop(rng.randrange(len(live)))
            kernel.ExFreePoolWithTag(address, tag)
            continue
        tag = rng.choice(["Fred", "Recv", "Filt", "Irp "])
        pool_type = PoolType.PagedPool if tag == "Filt" else PoolType.NonPagedPool
        size = rng.choice([24, 100, 256, 1500, 6000])
        address = kernel.ExAllocatePoolWithTag(pool_type, size, tag)
        if address:
            live.append((address, tag))
    console.print(_pool_table(kernel))
    address, tag = live[0]
    console.print(f"A buggy driver now frees {address:#x} (tag '{tag}') with the wrong tag 'Oops'...")
    try:
        kernel.ExFreePoolWithTag(address, "Oops")
    except BugCheck as error:
        console.print(f"[bold red]{error}[/bold red]")
        console.print(f"The allocation's header holds tag {display(error.parameters[2])!r}: the culprit "
                      f"is the code that freed {address:#x} with {display(error.parameters[3])!r}.")
    return 0
