"""The story ``ntpool demo`` tells, for three drivers of either kind (compiled or Python).

1. Traffic: the miniport receives and sends frames, the filter opens and closes files,
   and the sloppy driver serves requests, leaking the ones that are cancelled.
2. A backup opens thousands of files at once: paged pool runs out, FsRtlAllocatePoolWithTag
   raises STATUS_INSUFFICIENT_RESOURCES, and the filter fails those opens cleanly.
3. The sloppy driver gets a name that fills its buffer exactly: the missing room for the
   NUL overruns into the next chunk's header, and the free is BAD_POOL_HEADER 0x19/0x20.

The drivers need only these methods (both ``ntpool.samples.compiled`` and the Python
samples have them): the miniport's ``indicate_receive``, ``return_buffer``, ``send``,
``send_complete`` and ``sends_in_flight``; the filter's ``open_file``, ``close_file`` and
``open_count``; the sloppy driver's ``handle_request``.
"""

MiB = 1 << 20
TRAFFIC_STEPS = 3000
STEPS_PER_CHECKPOINT = 100
BACKUP_FILES = 12000
GIVE_UP_AFTER = 1000  # failed opens before the backup gives up

# A 1 GiB machine: at least 127 * 1024 physical pages, so Windows 7 delays pool frees.
KERNEL = dict(nonpaged_pool_bytes=16 * MiB, paged_pool_bytes=1 * MiB, physical_memory_bytes=1024 * MiB)
# An estimate for progress bars: on Windows 7's 1 MiB paged pool about 2,900 opens succeed.
CHECKPOINTS = TRAFFIC_STEPS // STEPS_PER_CHECKPOINT + 3 + 2 + 1

FOLDERS = ["\\Windows\\System32\\", "\\Users\\ann\\Documents\\", "\\Program Files\\App\\"]
# Names whose UTF-16 length is not a multiple of 16 bytes: their NUL lands in the slack.
SAFE_NAMES = ["\\Device\\Serial0", "\\Device\\Widget12", "\\Device\\Net", "\\Device\\Harddisk3x"]
SAFE_NAMES = [name for name in SAFE_NAMES if len(name) % 8]
# 24 characters: 48 bytes of UTF-16 fill a 48-byte body exactly.
FATAL_NAME = "\\Device\\WidgetController"


def workload_for(miniport, fs_filter, sloppy):
    """The scenario's ``workload(k, rng, steps=..., backup_files=...)`` for these drivers."""

    def traffic(k, rng, steps: int):
        """Steady traffic; a checkpoint every STEPS_PER_CHECKPOINT steps."""
        for step in range(1, steps + 1):
            frame = rng.randbytes(rng.choice((64, 590, 1514)))
            miniport.indicate_receive(k, frame)
            if rng.random() < 0.9:
                miniport.return_buffer(k)
            miniport.send(k, frame)
            while miniport.sends_in_flight > rng.randrange(4):  # a few sends stay in flight
                miniport.send_complete(k)
            if rng.random() < 0.5:
                fs_filter.open_file(k, rng.choice(FOLDERS) + f"file{rng.randrange(10_000)}.txt")
            if fs_filter.open_count > 40 or rng.random() < 0.45:
                fs_filter.close_file(k)
            sloppy.handle_request(k, rng.choice(SAFE_NAMES), cancelled=rng.random() < 0.08)
            if step % STEPS_PER_CHECKPOINT == 0:
                yield "traffic"

    def backup(k, rng, files: int):
        """Open many files at once; the filter fails what paged pool cannot hold, and the
        backup gives up after GIVE_UP_AFTER failed opens."""
        failures = 0
        for index in range(files):
            name = f"\\Backup\\{index:06d}\\" + "x" * rng.randrange(8, 64)
            if fs_filter.open_file(k, name) != 0:
                failures += 1
                if failures == GIVE_UP_AFTER:
                    break
            if index % 1000 == 999:
                yield "backup: opening"
        yield "backup: all opened"
        while fs_filter.open_count:
            fs_filter.close_file(k)
        yield "backup: closed"

    def crash(k, rng):
        """The sloppy driver meets a name that fills its buffer exactly."""
        for attempt in range(64):
            sloppy.handle_request(k, FATAL_NAME)
            yield "fatal request"

    def workload(k, rng, steps: int = TRAFFIC_STEPS, backup_files: int = BACKUP_FILES):
        yield from traffic(k, rng, steps)
        yield from backup(k, rng, backup_files)
        yield from crash(k, rng)

    return workload
