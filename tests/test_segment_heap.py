"""Windows 10/11's segment-heap pool, read byte by byte in simulated memory.

Every backend, threshold and encoding the model implements is checked here from the bytes
a debugger would read (segment-heap.md is the fact sheet).
"""

import struct

import pytest
from hypothesis import given, settings, strategies as st

import ntpool
from ntpool.pool.segment_heap import layout as L
from ntpool.pool.segment_heap.heap import SegmentHeap
from ntpool.tags import tag_value
from ntpool.windows import windows_version

MiB = 1 << 20
NP = ntpool.PoolType.NonPagedPool
NX = ntpool.PoolType.NonPagedPoolNx
PP = ntpool.PoolType.PagedPool


@pytest.fixture
def k11():
    return ntpool.Kernel(nonpaged_pool_bytes=8 * MiB, paged_pool_bytes=8 * MiB, windows="11")


def qword(k, va):
    return struct.unpack("<Q", k.read(va, 8))[0]


def heap_key(k):
    """HeapKey as a debugger finds it: RtlpHpHeapGlobals, via ExPoolState's first field."""
    state = k.heap_state.state_va
    return struct.unpack("<QQ", k.read(qword(k, state), 16))


def pool_header(k, body):
    return tuple(L.POOL_HEADER.unpack_from(k.read(body - 16, 16)))


def vs_header(k, chunk):
    key, _ = heap_key(k)
    return L.decode_vs_bits(qword(k, chunk), chunk, key)


def activate(k, pool_type, size, tag="Warm"):
    """Make the LFH bucket of ``size`` active: 17 blocks live at once."""
    return [k.ExAllocatePoolWithTag(pool_type, size, tag) for _ in range(L.LFH_ACTIVATE_LIVE)]


def range_flags(k, va):
    heap = k.pool.locate(va)
    return heap.descriptor(va)[0]


# --- choosing Windows ---------------------------------------------------------------------------

def test_windows_7_is_the_default_and_keeps_its_allocator():
    k = ntpool.Kernel(nonpaged_pool_bytes=MiB, paged_pool_bytes=MiB)
    assert k.windows.build == 7601 and not k.windows.segment_heap
    assert not isinstance(k.nonpaged_pool, SegmentHeap)


@pytest.mark.parametrize("windows, build, entry", [("10", 19041, 0x18), ("11", 22621, 0x20),
                                                   (26100, 26100, 0x20), ("18362", 18362, 0x18)])
def test_windows_10_and_11_run_the_segment_heap(windows, build, entry):
    k = ntpool.Kernel(nonpaged_pool_bytes=MiB, paged_pool_bytes=MiB, windows=windows)
    assert k.windows.build == build and k.windows.big_page_entry_size == entry
    assert isinstance(k.paged_pool, SegmentHeap) and isinstance(k.nonpaged_pool_nx, SegmentHeap)


@pytest.mark.parametrize("bad", ["8", "XP", 10240, 3.0, None])
def test_unknown_windows_is_refused(bad):
    with pytest.raises((ValueError, TypeError), match="windows"):
        windows_version(bad)


def test_each_pool_type_has_its_own_heap(k11):
    heaps = {k11.pool.locate(k11.ExAllocatePoolWithTag(t, 64, "Heap")).name for t in (NP, NX, PP)}
    assert heaps == {"NonPagedPool", "NonPagedPoolNx", "PagedPool"}
    state = L.POOL_STATE.unpack(k11.read(k11.heap_state.state_va, L.POOL_STATE.size))
    assert state[2:5] == (k11.nonpaged_pool.heap_va, k11.nonpaged_pool_nx.heap_va,
                          k11.paged_pool.heap_va)
    for heap in (k11.nonpaged_pool, k11.nonpaged_pool_nx, k11.paged_pool):
        assert struct.unpack("<I", k11.read(heap.heap_va + 0x10, 4))[0] == 0xDDEEDDEE


# --- the LFH -------------------------------------------------------------------------------

def test_lfh_block_has_only_a_pool_header_and_a_busy_bitmap_entry(k11):
    activate(k11, NX, 100)
    body = k11.ExAllocatePoolWithTag(NX, 100, "Lfhb")
    assert range_flags(k11, body) == L.RANGE_LFH
    previous, index, block_size, pool_type, tag, _ = pool_header(k11, body)
    assert (previous, index, block_size, pool_type, tag) == (0, 0, 8, 0x02, tag_value("Lfhb"))
    sub = k11.nonpaged_pool_nx.subsegment_of(body)
    _, lfh_key = heap_key(k11)
    encoded = struct.unpack("<I", k11.read(sub.va + L.LFH_BLOCK_OFFSETS, 4))[0]
    block_bytes, first = L.decode_lfh_block_offsets(encoded, sub.va, lfh_key)
    assert block_bytes == 0x80 and (body - 16 - sub.va - first) % 0x80 in (0, *range(0, 0x1000, 16))
    slot = sub.index_of[body - 16 - sub.va]
    bits = (k11.read(sub.va + L.LFH_BITMAP + slot // 4, 1)[0] >> (slot % 4 * 2)) & 3
    assert bits == L.LFH_BUSY
    k11.ExFreePoolWithTag(body, "Lfhb")
    bits = (k11.read(sub.va + L.LFH_BITMAP + slot // 4, 1)[0] >> (slot % 4 * 2)) & 3
    assert bits == 0
    k11.pool.sync_to_memory()  # as before a dump: the fast paths keep the counts in Python
    free_count, block_count, free_hint = struct.unpack("<HHH", k11.read(sub.va + 0x20, 6))
    assert free_hint == slot and block_count == sub.block_count and free_count == sub.free_count


def test_paged_header_type_is_3(k11):
    activate(k11, PP, 40)
    assert pool_header(k11, k11.ExAllocatePoolWithTag(PP, 40, "Page"))[3] == 0x03


def test_lfh_serves_blocks_up_to_0x200_after_17_live(k11):
    first = activate(k11, NX, L.LFH_MAX_REQUEST)
    assert {range_flags(k11, p) for p in first[:16]} == {L.RANGE_VS}
    assert range_flags(k11, first[16]) == L.RANGE_LFH
    activate(k11, NX, L.LFH_MAX_REQUEST + 1)  # 0x1F1: its block is 0x210, past the LFH
    assert range_flags(k11, k11.ExAllocatePoolWithTag(NX, L.LFH_MAX_REQUEST + 1, "Vs  ")) == L.RANGE_VS


def test_lfh_bucket_also_activates_after_2040_requests(k11):
    for _ in range(L.LFH_ACTIVATE_REQUESTS - 1):
        k11.ExFreePoolWithTag(k11.ExAllocatePoolWithTag(NX, 48, "Pair"), "Pair")
    assert range_flags(k11, k11.ExAllocatePoolWithTag(NX, 48, "Pair")) == L.RANGE_LFH


def _lfh_addresses(seed):
    k = ntpool.Kernel(nonpaged_pool_bytes=4 * MiB, paged_pool_bytes=MiB, windows="11", seed=seed)
    activate(k, NX, 200)
    return [k.ExAllocatePoolWithTag(NX, 200, "Rand") for _ in range(20)]


def test_lfh_placement_is_randomised_and_seeded():
    one = _lfh_addresses(1)
    gaps = {b - a for a, b in zip(one, one[1:])}
    assert gaps != {0xD0 + 0x10} and len(gaps) > 3  # consecutive blocks are not neighbours
    assert _lfh_addresses(1) == one
    assert _lfh_addresses(2) != one


# --- the VS backend -----------------------------------------------------------------------------

def test_vs_chunk_header_is_encoded_with_the_heap_key_and_its_address(k11):
    body = k11.ExAllocatePoolWithTag(NX, 0x300, "Vsch")
    chunk = body - 0x20
    assert range_flags(k11, body) == L.RANGE_VS
    memory_cost, size, previous, allocated = vs_header(k11, chunk)
    assert allocated == 1 and size == (0x300 + 0x20) >> 4
    raw = qword(k11, chunk)
    assert raw != L.QWORD.unpack(L.VS_HEADER_BITS.pack(memory_cost, size, previous, 1, 0))[0]
    assert pool_header(k11, body)[2] == (0x300 + 0x10) >> 4  # BlockSize: POOL_HEADER + data


def test_vs_subsegment_signature(k11):
    body = k11.ExAllocatePoolWithTag(NX, 0x400, "Vsub")
    sub = k11.nonpaged_pool_nx.subsegment_of(body)
    size, signature = struct.unpack("<HH", k11.read(sub.va + 0x20, 4))
    assert size == (signature & 0x7FFF) ^ 0x2BED


def test_vs_data_never_straddles_a_page_nor_a_header_the_last_16_bytes(k11):
    bodies = [k11.ExAllocatePoolWithTag(NX, size, "Strd")
              for size in (0x7F0, 0xFE0, 0x250, 0x900, 0xFE0, 0x3F0, 0xFD0, 0xAB0) * 3]
    for body, size in zip(bodies, (0x7F0, 0xFE0, 0x250, 0x900, 0xFE0, 0x3F0, 0xFD0, 0xAB0) * 3):
        header = body - 16
        assert header & 0xFFF != 0xFF0
        assert (header & ~0xFFF) == ((body + size - 1) & ~0xFFF)


def test_vs_free_coalesces_neighbours(k11):
    a, b, c = (k11.ExAllocatePoolWithTag(NX, 0x500, "Coal") for _ in range(3))
    k11.ExFreePoolWithTag(a, "Coal")
    k11.ExFreePoolWithTag(b, "Coal")
    _, size, _, allocated = vs_header(k11, a - 0x20)
    chunk_units = vs_header(k11, c - 0x20)[1]
    assert not allocated and size >= 2 * chunk_units
    assert a - 0x20 + size * 16 == c - 0x20  # a, b and the gap before c are one free chunk
    assert vs_header(k11, c - 0x20)[2] == size  # the next chunk's UnsafePrevSize follows


def test_vs_delay_free_list_holds_small_chunks_until_32(k11):
    bodies = [k11.ExAllocatePoolWithTag(NX, 0x250, "Dlay") for _ in range(L.VS_DELAY_FREE_DEPTH)]
    for body in bodies[:-1]:
        k11.ExFreePoolWithTag(body, "Dlay")
    assert all(vs_header(k11, b - 0x20)[3] == 1 for b in bodies[:-1])  # still busy
    k11.ExFreePoolWithTag(bodies[-1], "Dlay")
    assert k11.nonpaged_pool_nx.delay_free == []
    assert vs_header(k11, bodies[0] - 0x20)[3] == 0


# --- the dynamic lookaside ----------------------------------------------------------------------

def test_dynamic_lookaside_reuses_a_freed_block_of_its_bucket(k11):
    heap = k11.nonpaged_pool_nx
    bucket = L.lookaside_bucket(0x300 + 16)
    for _ in range(3):  # every third pass enables the buckets that were used
        assert not heap.lookaside[bucket].enabled
        heap.lookaside[bucket].frees = 1
        k11.pool.balance_set_pass()
    assert heap.lookaside[bucket].enabled
    first = k11.ExAllocatePoolWithTag(NX, 0x300, "Look")
    second = k11.ExAllocatePoolWithTag(NX, 0x300, "Look")
    k11.ExFreePoolWithTag(first, "Look")
    k11.ExFreePoolWithTag(second, "Look")
    assert qword(k11, second - 16) == first - 16  # the SLIST link over the POOL_HEADER
    assert k11.ExAllocatePoolWithTag(NX, 0x300, "Agn ") == second
    assert pool_header(k11, second)[4] == tag_value("Agn ")


def test_lookaside_buckets_cover_512_to_0xf80():
    assert L.lookaside_bucket(0x200) == 0 and L.lookaside_bucket(0x210) == 1
    assert L.lookaside_bucket(1024) == 32 and L.lookaside_bucket(1025) == 33
    assert L.lookaside_bucket(2048) == 48 and L.lookaside_bucket(0xF80) == 64 - 1
    assert L.lookaside_bucket(0xF90) == 0


# --- big, segment and large allocations ----------------------------------------------------

@pytest.mark.parametrize("size", [L.VS_MAX_REQUEST + 1, 0x1000, 0x1808, L.VS_BIG_MAX_REQUEST])
def test_0xfe1_to_128k_are_vs_chunks_with_page_aligned_data_and_no_pool_header(k11, size):
    before = k11.ExAllocatePoolWithTag(PP, 0x300, "Befo")  # a small VS block first
    body = k11.ExAllocatePoolWithTag(PP, size, "Bigv")
    chunk = body - 16  # the VS chunk header ends where the page-aligned data begins
    assert body & 0xFFF == 0 and range_flags(k11, body) == L.RANGE_VS
    memory_cost, units, previous, allocated = vs_header(k11, chunk)
    assert allocated == 1 and units == (16 + size + 15) // 16 and memory_cost == units
    # The chunk before it (free: the gap up to the page) names it as its next.
    front = chunk - previous * 16
    assert vs_header(k11, front)[1] == previous and front >= before + 0x300
    assert k11.paged_pool.big_pages[body] == (tag_value("Bigv"), -(-size // 4096))
    assert k11.paged_pool.big_details[body][0] == size  # NumberOfBytes: what was asked
    assert k11.pool.allocation_size(body) == units * 16 - 16  # what the chunk holds
    row, = [r for r in k11.pool_tags() if r.TagUlong == tag_value("Bigv")]
    assert row.PagedUsed == -(-size // 4096) * 4096  # charged as whole pages
    sub = k11.paged_pool.subsegment_of(body)
    following = chunk + units * 16  # the rest of the last page stays in the VS backend
    if following < sub.end:
        assert vs_header(k11, following)[2] == units
    k11.ExFreePoolWithTag(body, "Bigv")
    assert body not in k11.paged_pool.big_pages
    if k11.paged_pool.subsegment_of(body) is sub:
        _, merged, _, allocated = vs_header(k11, front)  # coalesced with its free neighbours
        assert not allocated and front + merged * 16 > following - 16
    else:  # the subsegment it had to itself went back to the segment: its pages unmapped
        assert k11.space.translate(body) is None


@pytest.mark.parametrize("size", [L.VS_BIG_MAX_REQUEST + 1, 200 << 10, 600 << 10])
def test_above_128k_whole_pages_from_the_segment_backend(k11, size):
    body = k11.ExAllocatePoolWithTag(PP, size, "Bigp")
    assert body & 0xFFF == 0 and range_flags(k11, body) == L.RANGE_BIG
    assert k11.paged_pool.big_pages[body] == (tag_value("Bigp"), -(-size // 4096))
    assert k11.paged_pool.big_details[body][0] == size  # NumberOfBytes: what was asked


def test_a_vs_big_allocation_fills_the_gap_a_freed_one_left(k11):
    first = k11.ExAllocatePoolWithTag(NX, 0x3000, "Gap1")
    k11.ExAllocatePoolWithTag(NX, 0x2000, "Gap2")
    k11.ExFreePoolWithTag(first, "Gap1")
    assert k11.ExAllocatePoolWithTag(NX, 0x2800, "Gap3") == first  # best fit, page-aligned


def test_0xfe0_is_still_a_vs_block(k11):
    body = k11.ExAllocatePoolWithTag(PP, L.VS_MAX_REQUEST, "Last")
    assert body & 0xFFF == 0x10 and pool_header(k11, body)[4] == tag_value("Last")


def test_large_allocation_takes_whole_segments(k11):
    body = k11.ExAllocatePoolWithTag(NX, 2 * MiB, "Larg")
    assert body % L.SEGMENT_SIZE == 0
    k11.ExFreePoolWithTag(body, "Larg")
    assert k11.nonpaged_pool_nx.segment_state[(body - k11.nonpaged_pool_nx.base) // L.SEGMENT_SIZE] == 0


@pytest.mark.parametrize("windows, constant", [("11", 0xA2E64EADA2E64EAD), (26100, 0)])
def test_segment_signature(windows, constant):
    k = ntpool.Kernel(nonpaged_pool_bytes=4 * MiB, paged_pool_bytes=MiB, windows=windows)
    body = k.ExAllocatePoolWithTag(NX, 64, "Sgmt")
    segment = body & ~(L.SEGMENT_SIZE - 1)
    context = k.nonpaged_pool_nx.heap_va + L.SEG_CONTEXT_OFFSETS[0]
    assert qword(k, segment + 0x10) == segment ^ context ^ heap_key(k)[0] ^ constant


# --- the POOL_HEADER's quota and cache-aligned fields ----------------------------------------

def test_process_billed_is_encoded_with_the_quota_cookie(k11):
    process = k11.create_process("app.exe")
    k11.set_current_process(process)
    body = k11.ExAllocatePoolWithQuotaTag(PP, 0x80, "Quot")
    header = body - 16
    _, _, _, pool_type, _, billed = pool_header(k11, body)
    cookie = qword(k11, k11.heap_state.cookie_va)
    assert pool_type & L.POOL_TYPE_QUOTA and billed == process.address ^ cookie ^ header
    assert process.quota_usage[1] == 0x90  # the block: POOL_HEADER + 0x80
    k11.ExFreePoolWithTag(body, "Quot")
    assert process.quota_usage[1] == 0


def test_cache_aligned_chunk_has_a_second_header(k11):
    body = k11.ExAllocatePoolWithTag(ntpool.PoolType.NonPagedPoolCacheAligned, 0x40, "Algn")
    assert body % 64 == 0
    previous, _, block_size, pool_type, tag, _ = pool_header(k11, body)
    first = body - 16 - previous * 16
    first_type = pool_header(k11, first + 16)[3]
    assert pool_type & L.POOL_TYPE_ALIGNED and not first_type & L.POOL_TYPE_ALIGNED
    assert tag == tag_value("Algn") and pool_header(k11, first + 16)[4] == tag
    if previous >= 2:
        assert qword(k11, first + 16) == (body - 16) ^ qword(k11, k11.heap_state.cookie_va)
    k11.ExFreePoolWithTag(body, "Algn")
    assert k11.pool_tags()[0].NonPagedUsed == 0


# --- the tracker --------------------------------------------------------------------------------

def test_tracker_counts_blocks_and_pages(k11):
    small = k11.ExAllocatePoolWithTag(PP, 100, "Trak")
    big = k11.ExAllocatePoolWithTag(PP, 5000, "Trak")
    row, = [r for r in k11.pool_tags() if r.TagUlong == tag_value("Trak")]
    assert (row.PagedAllocs, row.PagedUsed) == (2, 0x80 + 0x2000)
    k11.ExFreePoolWithTag(small, "Trak")
    k11.ExFreePool(big)
    row, = [r for r in k11.pool_tags() if r.TagUlong == tag_value("Trak")]
    assert (row.PagedFrees, row.PagedUsed) == (2, 0)


# --- the fast paths' callers: ExFreePool, NdisFreeMemory's sized free, FsRtl's raise bit ------

def lfh_state(k, body):
    """The two bitmap bits of the LFH block whose body is at ``body`` (01 busy)."""
    heap = k.pool.locate(body)
    sub = heap.subsegment_of(body)
    index = sub.index_of[body - 16 - sub.va]
    return (k.read(sub.va + L.LFH_BITMAP + (index >> 2), 1)[0] >> ((index & 3) << 1)) & 3


def test_exfreepool_ndis_and_fsrtl_blocks_of_an_active_bucket(k11):
    activate(k11, NP, 100, "Ndis")
    status, va = k11.NdisAllocateMemoryWithTag(100, "Ndis")
    assert status == 0 and lfh_state(k11, va) == 1
    with pytest.raises(ntpool.NdisContractError):
        k11.NdisFreeMemory(va, 0x40, 0)  # the wrong Length: nothing freed
    assert lfh_state(k11, va) == 1
    k11.NdisFreeMemory(va, 100, 0)
    assert lfh_state(k11, va) == 0
    p = k11.FsRtlAllocatePoolWithTag(NP, 100, "Ndis")  # the raise bit, the same bucket
    assert lfh_state(k11, p) == 1 and range_flags(k11, p) == L.RANGE_LFH
    k11.ExFreePool(p)  # no tag to compare
    assert lfh_state(k11, p) == 0
    row, = [r for r in k11.pool_tags() if r.TagUlong == tag_value("Ndis")]
    assert (row.NonPagedAllocs - row.NonPagedFrees, row.NonPagedUsed) == (17, 17 * 0x80)


def test_exfreepool_of_a_protected_block_is_still_0xc2_0xa(k11):
    tag = tag_value("Prot") | ntpool.PROTECTED_POOL
    activate(k11, NP, 100, tag)
    p = k11.ExAllocatePoolWithTag(NP, 100, tag)
    with pytest.raises(ntpool.BugCheck) as info:
        k11.ExFreePool(p)
    assert (info.value.code, info.value.parameters[0]) == (0xC2, 0x0A)


_U64 = st.integers(0, (1 << 64) - 1)
_U16 = st.integers(0, 0xFFFF)


@settings(max_examples=300, deadline=None)
@given(address=_U64, key=_U64, size=_U16, previous=_U16, allocated=st.booleans(),
       memory_cost=st.integers(0, 1 << 20), encoded=_U64)
def test_vs_header_bits_are_the_structs_fields(address, key, size, previous, allocated,
                                                memory_cost, encoded):
    """The heap encodes and decodes VS headers with integer operations: they must give the
    bytes of _HEAP_VS_CHUNK_HEADER's fields (VS_HEADER_BITS) XORed with HeapKey and the address."""
    raw = L.VS_HEADER_BITS.pack(memory_cost & 0xFFFF, size, previous, int(allocated), 0)
    assert L.encode_vs_bits(address, key, size, previous, allocated, memory_cost) == \
        L.QWORD.unpack(raw)[0] ^ key ^ address
    assert L.decode_vs_bits(L.encode_vs_bits(address, key, size, previous, allocated, memory_cost),
                            address, key) == (memory_cost & 0xFFFF, size, previous, int(allocated))
    plain = L.QWORD.pack(encoded ^ key ^ address)
    assert L.decode_vs_bits(encoded, address, key) == L.VS_HEADER_BITS.unpack(plain)[:4]


@pytest.fixture(scope="module")
def scratch_pages():
    """A Windows 11 machine and three pages of a big allocation to write chunk headers on."""
    k = ntpool.Kernel(nonpaged_pool_bytes=8 * MiB, paged_pool_bytes=8 * MiB, windows="11")
    return k, k.ExAllocatePoolWithTag(NX, 0x3000, "Hdrs")


@settings(max_examples=300, deadline=None)
@given(offset=st.integers(0, 0x3000 // 16 - 1), size=st.integers(0, 0x4000),
       previous=st.integers(0, 0x4000), allocated=st.booleans(), unused=st.booleans(),
       encoded=_U64)
def test_the_heaps_vs_header_reads_and_writes_are_layouts_encoding(scratch_pages, offset, size,
                                                                   previous, allocated, unused,
                                                                   encoded):
    """SegmentHeap.vs_write and vs_read work the encoding out in place (the VS paths' hottest
    lines): the bytes written must be encode_vs_bits' QWORD (MemoryCost the size) and
    vs_page_offset_field's u32, and a header read must decode as decode_vs_bits says, for
    every chunk address and every size a subsegment can hold (at most 0x4000 units)."""
    k, pages = scratch_pages
    heap, chunk = k.nonpaged_pool_nx, pages + offset * 16
    key = heap.keys.heap_key
    segment = chunk & ~((L.SEGMENT_PAGES << 12) - 1)
    heap.vs_write(chunk, size, previous, allocated, unused)
    assert struct.unpack("<QI4x", k.read(chunk, 16)) == (
        L.encode_vs_bits(chunk, key, size, previous, allocated, size),
        L.vs_page_offset_field(chunk, segment, key, unused))
    assert heap.vs_read(chunk) == (size, size, previous, int(allocated))
    k.write(chunk, struct.pack("<Q", encoded))
    assert heap.vs_read(chunk) == L.decode_vs_bits(encoded, chunk, key)


def test_every_free_counts_toward_the_balance_set_pass_on_either_path():
    """Balance Set passes come every BALANCE_SET_INTERVAL frees whichever path frees: the LFH
    fast path counts its frees as free_generic counts them, and leaves the free that brings a
    pass to it (the pass first, then the free), so a machine whose frees take the general way
    has its passes at the same frees."""
    from ntpool.pool.segment_heap.allocator import BALANCE_SET_INTERVAL

    def run(general):
        k = ntpool.Kernel(windows="11")
        free = k.pool.free_generic if general else k.ExFreePoolWithTag
        blocks = [k.ExAllocatePoolWithTag(NP, 100, "Bal ") for _ in range(600)]
        lookaside = k.ExAllocatePoolWithTag(NP, 1000, "Bal ")  # a dynamic lookaside's size
        counts = []
        for block in blocks:
            free(block, "Bal ")
            counts.append((k.pool.balance_passes, k.pool._frees_since_pass))
        free(lookaside, "Bal ")
        return counts, k.pool._frees_since_pass
    fast, general = run(False), run(True)
    assert fast == general
    assert fast[0][BALANCE_SET_INTERVAL - 2] == (0, BALANCE_SET_INTERVAL - 1)
    assert fast[0][BALANCE_SET_INTERVAL - 1][0] == 1 and fast[0][-1][0] == 600 // BALANCE_SET_INTERVAL
