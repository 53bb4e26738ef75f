"""kd on hostile Windows 10/11 dumps: the segment heap's structures (NTPL v2 fields, heap
ranges, segment descriptors, LFH BlockOffsets and bitmaps, encoded VS headers) damaged at
random give a clear DumpFormatError or sane output, never a traceback or a hang.

Set NTPOOL_FUZZ_EXAMPLES (e.g. 5000) for a longer run on demand.
"""

import os
import tempfile

from hypothesis import HealthCheck, given, settings, strategies as st

import ntpool
from ntpool.debugger.pooltag import PoolTagDatabase
from ntpool.debugger.session import KdSession
from ntpool.dump import DumpFormatError, DumpReader
from ntpool.dump import format as f

MiB = 1 << 20
EXAMPLES = int(os.environ.get("NTPOOL_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
NX = ntpool.PoolType.NonPagedPoolNx
POOLTAGS = PoolTagDatabase.default(environ={})


def _seed():
    k = ntpool.Kernel(nonpaged_pool_bytes=2 * MiB, paged_pool_bytes=2 * MiB,
                      physical_memory_bytes=24 * MiB, windows="11")
    lfh = [k.ExAllocatePoolWithTag(NX, 0x50, "Fred") for _ in range(24)]
    vs = [k.ExAllocatePoolWithTag(NX, size, "Vsfz") for size in (0x240, 0x700, 0x300)]
    k.ExFreePoolWithTag(vs[1], "Vsfz")
    k.ExAllocatePoolWithTag(ntpool.PoolType.PagedPool, 0x3000, "Bigg")
    big = k.ExAllocatePoolWithTag(NX, 0x500, "Ovrn")
    k.ExAllocatePoolWithTag(NX, 0x500, "Next")
    k.write(big, b"A" * (k.pool.allocation_size(big) + 0x10))
    try:
        k.ExFreePoolWithTag(big, "Ovrn")  # 0x13A: !analyze -v has a heap block to explain
    except ntpool.BugCheck:
        pass
    assert k.halted
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "d.dmp")
        k.write_dump(path, "kernel")
        data = open(path, "rb").read()
        with DumpReader(path) as reader:
            ntpl = reader.read_u64(reader.kd_debugger_data_block)  # KDBG's List.Flink
            data_ = reader.debugger_data()
            heap = k.nonpaged_pool_nx
            targets = [ntpl, data_["HeapRanges"], data_["PoolState"], heap.heap_va,
                       lfh[-1] & ~(MiB - 1), lfh[-1] & ~0xFFF, vs[0] & ~0xFFF]
            offsets = []
            for va in targets:
                pa = reader.translate(va & ~0xFFF)
                offsets.append(reader.frame_offset(pa >> 12) + (va & 0xFFF))
    return data, lfh[-1], vs[0], offsets


DATA, LFH_BLOCK, VS_BLOCK, TARGETS = _seed()
COMMANDS = ("!analyze -v; !poolused 1; !poolfind derF; !poolfind ?sV* 0; !pool {l:x}; !pool {v:x}; "
            "!pool {v:x} 3")


def _exercise(path) -> str:
    try:
        reader = DumpReader(path)
    except DumpFormatError as error:
        assert "\n" not in str(error)
        return ""
    with reader:
        out = KdSession(reader, POOLTAGS).execute(COMMANDS.format(l=LFH_BLOCK, v=VS_BLOCK))
        assert isinstance(out, str)
        return out


def test_the_seed_reads_back(tmp_path):
    path = tmp_path / "d.dmp"
    path.write_bytes(DATA)
    out = _exercise(path)
    assert "(segment heap)" in out and "derF" in out and "Lfh" in out and "Vs" in out
    assert "KERNEL_MODE_HEAP_CORRUPTION" in out and "CORRUPTION_AFTER" in out


@FUZZ
@given(edits=st.lists(st.tuples(st.sampled_from(range(len(TARGETS))), st.integers(0, 0x2FFF),
                                st.binary(min_size=1, max_size=16)), min_size=1, max_size=6))
def test_damaged_segment_heap_structures_never_crash_kd(tmp_path_factory, edits):
    raw = bytearray(DATA)
    for target, offset, patch in edits:
        at = (TARGETS[target] + offset) % len(raw)
        raw[at:at + len(patch)] = patch
    path = tmp_path_factory.mktemp("heapfuzz") / "m.dmp"
    path.write_bytes(bytes(raw))
    _exercise(path)


@FUZZ
@given(field=st.sampled_from([f.NTPL_POOL_STATE, f.NTPL_HEAP_RANGES, f.NTPL_HEAP_RANGE_COUNT,
                              f.NTPL_BIG_PAGE_ENTRY_SIZE, f.NTPL_NT_BUILD_NUMBER,
                              f.NTPL_POOL_QUOTA_COOKIE]),
       value=st.one_of(st.integers(0, (1 << 64) - 1), st.sampled_from([0, 1, 7601, 22621, 2 ** 64 - 1])))
def test_lying_ntpl_fields(tmp_path_factory, field, value):
    raw = bytearray(DATA)
    at = TARGETS[0] + field
    raw[at:at + 8] = value.to_bytes(8, "little")
    path = tmp_path_factory.mktemp("ntpl") / "m.dmp"
    path.write_bytes(bytes(raw))
    _exercise(path)


# --- a driver that writes anywhere near its blocks --------------------------------------------

SIZES = st.sampled_from([0x20, 0x50, 0x100, 0x1F0, 0x240, 0x500, 0xF80, 0x2000])
OPS = st.lists(st.tuples(st.sampled_from(["alloc", "free", "scribble", "aligned", "quota"]),
                         SIZES, st.integers(-0x60, 0x2100), st.binary(min_size=1, max_size=24)),
               min_size=1, max_size=120)


@FUZZ
@given(ops=OPS)
def test_scribbling_drivers_end_in_a_bug_check_never_a_python_error(ops):
    k = ntpool.Kernel(nonpaged_pool_bytes=2 * MiB, paged_pool_bytes=2 * MiB,
                      physical_memory_bytes=24 * MiB, windows="11")
    k.pool.balance_set_pass()
    live = []
    try:
        for op, size, offset, data in ops:
            if op in ("alloc", "aligned", "quota") or not live:
                pool_type = NX | (4 if op == "aligned" else 0)
                if op == "quota":
                    p = k.ExAllocatePoolWithQuotaTag(ntpool.PoolType.PagedPool, size, "Fuzz")
                else:
                    p = k.ExAllocatePoolWithTag(pool_type, size, "Fuzz")
                if p:
                    live.append(p)
            elif op == "free":
                k.ExFreePoolWithTag(live.pop(offset % len(live)), "Fuzz")
            else:
                target = live[size % len(live)] + offset
                if k.space.translate(target) is not None and k.space.translate(target + len(data) - 1):
                    k.write(target, data)
        for p in live:
            k.ExFreePoolWithTag(p, "Fuzz")
    except ntpool.BugCheck:
        assert k.halted


def test_a_heap_range_lying_about_its_end_costs_only_the_mapped_pages(tmp_path):
    """A heap whose range claims most of the address space (a damaged NTPL_HEAP_RANGE) is
    searched by the pages the dump maps, not segment by segment (2**44 of them)."""
    raw = bytearray(DATA)
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "d.dmp")
        open(path, "wb").write(DATA)
        with DumpReader(path) as reader:
            table = reader.debugger_data()["HeapRanges"]
            pa = reader.translate(table)
            at = reader.frame_offset(pa >> 12) + (table & 0xFFF)
    heap_va, start, _end, base_type, index = f.NTPL_HEAP_RANGE.unpack_from(raw, at)
    f.NTPL_HEAP_RANGE.pack_into(raw, at, heap_va, start, 0xFFFFFFFFFFF00000, base_type, index)
    path = tmp_path / "m.dmp"
    path.write_bytes(bytes(raw))
    out = _exercise(path)
    assert "derF" in out  # the LFH blocks are still found
