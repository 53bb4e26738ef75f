"""Crash dumps leave the pages the host never touched as holes (issue 18: bench-dump's write).

A machine's physical memory is a private anonymous mapping: a page nothing ever wrote or read
was never given by the host and holds zeros. The writer asks Linux's /proc/self/pagemap which
those are and seeks over runs of them instead of reading them (each read would fault the
page in); the file reads the same."""

import os
import sys

import pytest

import ntpool
from ntpool.constants import PAGE_SIZE
from ntpool.dump import format as f
from ntpool.dump import writer

MiB = 1 << 20
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/pagemap is Linux's")


def _machine():
    k = ntpool.Kernel(nonpaged_pool_bytes=16 * MiB, paged_pool_bytes=16 * MiB)
    chunks = [k.ExAllocatePoolWithTag(ntpool.PoolType.NonPagedPool, 5000, "Big ") for _ in range(20)]
    chunks += [k.ExAllocatePoolWithTag(ntpool.PoolType.PagedPool, 100, "Smal") for _ in range(2000)]
    for chunk in chunks[::3]:
        k.ExFreePool(chunk)
    return k


@linux_only
def test_the_pages_the_machine_never_touched_are_told_apart():
    k = ntpool.Kernel(nonpaged_pool_bytes=4 * MiB, paged_pool_bytes=4 * MiB)
    physical = k.physical
    untouched = writer.never_touched_pages(physical)
    assert untouched is not None and len(untouched) == physical.frame_count
    last = physical.frame_count - 1
    assert untouched[last] == 1  # nothing uses the last frame of a fresh machine
    physical.buffer[last * PAGE_SIZE + 100] = 7
    assert writer.never_touched_pages(physical)[last] == 0
    used = physical.frame_in_use.find(1, 1)  # a frame the machine wrote (a page table, its data)
    assert writer.never_touched_pages(physical)[used] == 0


@pytest.mark.parametrize("kind", ["full", "kernel"])
def test_a_dump_with_holes_holds_every_frame_as_memory_does(tmp_path, kind):
    k = _machine()
    path = str(tmp_path / f"{kind}.dmp")
    k.write_dump(path, kind, symbols=False)
    buffer = k.physical.buffer
    with open(path, "rb") as dump:
        data = dump.read()
    if kind == "full":
        frames = range(k.physical.frame_count)
        first_page = f.HEADER_SIZE
        assert len(data) == f.HEADER_SIZE + k.physical.frame_count * PAGE_SIZE
    else:
        frames = [pfn for pfn, used in enumerate(k.physical.frame_in_use) if used]
        first_page = int.from_bytes(data[f.HEADER_SIZE + f.SUMMARY_OFF_FIRST_PAGE:
                                         f.HEADER_SIZE + f.SUMMARY_OFF_FIRST_PAGE + 8], "little")
        assert len(data) == first_page + len(frames) * PAGE_SIZE
    for index, pfn in enumerate(frames):
        at = first_page + index * PAGE_SIZE
        assert data[at:at + PAGE_SIZE] == buffer[pfn * PAGE_SIZE:(pfn + 1) * PAGE_SIZE], pfn


@linux_only
def test_a_full_dump_of_a_mostly_unused_machine_is_a_sparse_file(tmp_path):
    k = ntpool.Kernel(nonpaged_pool_bytes=64 * MiB, paged_pool_bytes=64 * MiB)
    path = str(tmp_path / "full.dmp")
    k.write_dump(path, "full", symbols=False)
    size = os.path.getsize(path)
    assert size == f.HEADER_SIZE + k.physical.frame_count * PAGE_SIZE
    with open(path, "rb") as dump:
        hole = os.lseek(dump.fileno(), 0, os.SEEK_HOLE)
    if hole == size:
        pytest.skip("this file system keeps no holes")
    assert hole < size // 2  # the machine uses a few MiB of its 140 MiB


def test_runs_of_untouched_frames_are_sought_over_and_read_as_zeros(tmp_path):
    buffer = bytearray(64 * PAGE_SIZE)
    for pfn in (0, 3, 40, 63):
        buffer[pfn * PAGE_SIZE] = pfn + 1
    # Frames 4-39 and 41-62 untouched (runs of 36 and 22); 1-2 untouched too, but a run too
    # short for a hole: written.
    untouched = bytearray(64)
    for pfn in list(range(1, 3)) + list(range(4, 40)) + list(range(41, 63)):
        untouched[pfn] = 1
    path = tmp_path / "frames"
    with open(path, "wb") as out:
        writer._write_frames(out, buffer, 0, 64, bytes(untouched))
        out.truncate(out.tell())
    assert path.read_bytes() == bytes(buffer)
    with open(path, "wb") as out:
        writer._write_frames(out, buffer, 41, 22, bytes(untouched))  # all a hole: the end
        out.truncate(out.tell())
    assert path.read_bytes() == bytes(22 * PAGE_SIZE)
