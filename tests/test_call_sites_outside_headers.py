"""Call sites are kept outside the simulated POOL_HEADER: its bytes 8-15 are ProcessBilled
(zero unless quota is charged), as on Windows 7 without the kernel stack trace database,
and crash dumps carry the sites in ntpool's allocation-site table."""

import pytest

import ntpool
from ntpool.dump import DumpReader
from ntpool.pool.layout import POOL_HEADER
from ntpool.tags import tag_value

NP = ntpool.PoolType.NonPagedPool
PP = ntpool.PoolType.PagedPool
MiB = 1 << 20


class Driver:
    name = "sites.sys"

    def DriverEntry(self, k, path):
        return 0

    def DriverUnload(self, k):
        pass

    def small(self, k, pool_type=NP, size=100):
        return k.ExAllocatePoolWithTag(pool_type, size, "Site")

    def aligned(self, k):
        return k.ExAllocatePoolWithTag(ntpool.PoolType.NonPagedPoolCacheAligned, 200, "Algn")


def machine(**kwargs):
    return ntpool.Kernel(nonpaged_pool_bytes=4 * MiB, paged_pool_bytes=4 * MiB, **kwargs)


def header(k, p):
    return POOL_HEADER.at(k.read(p - 16, 16))


def test_header_bytes_8_to_15_are_zero_and_the_site_is_kept_aside():
    k = machine()
    d = Driver()
    k.load_driver(d)
    first = d.small(k)                # a fresh page
    k.ExFreePoolWithTag(first, "Site")
    again = d.small(k)                # the lookaside (fast path)
    paged = d.small(k, PP, 1000)      # from a list
    aligned = d.aligned(k)            # cache-aligned
    for p in (again, paged, aligned):
        assert header(k, p).ProcessBilled == 0
        entry = k.allocation_site(p)
        assert entry.function.endswith(("Driver.small", "Driver.aligned"))
        assert k.allocation_driver(p).name == "sites.sys"


def test_the_stack_trace_database_option_writes_the_site_in_the_header():
    k = machine(stack_trace_database=True)
    d = Driver()
    k.load_driver(d)
    p = d.small(k)
    site = k.pool.site_of(p)
    assert site and header(k, p).AllocatorBackTraceIndex == site
    k.ExFreePoolWithTag(p, "Site")
    q = d.small(k)  # from the lookaside
    assert header(k, q).AllocatorBackTraceIndex == site
    with pytest.raises(TypeError, match="stack_trace_database"):
        machine(stack_trace_database="yes")


def test_a_quota_chunk_has_its_process_billed_and_keeps_its_site():
    k = machine()
    d = Driver()
    k.load_driver(d)
    process = k.create_process("app.exe")
    k.set_current_process(process)
    p = k.ExAllocatePoolWithQuotaTag(NP, 100, "Quot")
    assert header(k, p).ProcessBilled == process.address
    assert k.pool.site_of(p)  # the site is not lost to ProcessBilled


def test_the_dump_carries_the_sites_outside_the_headers(tmp_path):
    k = machine()
    d = Driver()
    k.load_driver(d)
    live = [d.small(k, NP, size) for size in (16, 100, 300, 1000)] + [d.small(k, PP, 200)]
    path = k.write_dump(tmp_path / "sites.dmp", "kernel")
    with DumpReader(path) as reader:
        for p in live:
            raw = reader.read(p - 16, 16)
            assert raw[8:16] == bytes(8)
            assert reader.allocation_site(p - 16) == k.pool.site_of(p) != 0
        assert reader.allocation_site(0xFFFFF80000000000) is None


def test_a_damaged_site_table_costs_the_sites_not_the_reader(tmp_path):
    k = machine()
    d = Driver()
    k.load_driver(d)
    p = d.small(k)
    path = k.write_dump(tmp_path / "sites.dmp", "full")
    with DumpReader(path) as reader:
        table = reader.debugger_data()["AllocationSites"]
        pa = reader.translate(table)
        offset = reader.frame_offset(pa >> 12) + (pa & 0xFFF)
        assert reader.allocation_site(p - 16) == k.pool.site_of(p)
    data = bytearray(open(path, "rb").read())
    data[offset + 8 + 32:offset + 8 + 64] = b"\xff" * 32  # the nonpaged map's compressed bytes
    open(path, "wb").write(data)
    with DumpReader(path) as reader:
        assert reader.allocation_site(p - 16) is None  # no table: no sites, and no exception


def test_call_site_keys_are_addresses_inside_their_code_object():
    # CallSites.index keys a call by id(code) + f_lasti: unique only while every instruction
    # offset is smaller than the code object itself (3.11+ keep the bytecode inside it).
    import gc
    import sys
    import types

    from ntpool.drivers import site_key

    codes = [o for o in gc.get_objects() if isinstance(o, types.FunctionType)]
    assert len(codes) > 1000
    for function in codes:
        code = function.__code__
        assert len(code.co_code) < sys.getsizeof(code)
    frame = sys._getframe()
    assert id(frame.f_code) <= site_key(frame) < id(frame.f_code) + sys.getsizeof(frame.f_code)


class ThreeSites(Driver):
    """Three call sites, so neighbouring chunks from different sites can be told apart."""
    name = "three.sys"

    def first(self, k, size):
        return k.ExAllocatePoolWithTag(NP, size, "One ")

    def second(self, k, size):
        return k.ExAllocatePoolWithTag(NP, size, "Two ")

    def third(self, k, size):
        return k.ExAllocatePoolWithTag(NP, size, "Thre")


def test_the_site_map_holds_one_byte_per_32_bytes_of_pool_while_sites_fit_a_byte():
    k = machine()
    pool = k.nonpaged_pool
    assert len(pool.sites) == pool.page_count * 4096 // 32 and pool.sites.format == "B"
    p = k.ExAllocatePoolWithTag(NP, 0, "Zero")  # served as 1 byte: 2 blocks, as any chunk
    assert header(k, p).BlockSize == 2


def _many_sites(count: int):
    """A function making ``count`` allocations, each from a line of its own (its own site),
    alternately nonpaged and paged, sizes that go through the lookasides and the lists."""
    lines = [f"    out.append(k.ExAllocatePoolWithTag({n % 2}, {(n * 37) % 900 + 1}, 'Many'))\n"
             for n in range(count)]
    namespace: dict = {}
    exec(compile("def many(k, out):\n" + "".join(lines), __file__, "exec"), namespace)
    return namespace["many"]


def test_the_256th_site_widens_the_site_maps_to_a_ushort_keeping_every_site():
    k = machine()
    many = _many_sites(300)
    live: list = []
    many(k, live)  # the first line is site 1: the 256th site is made by line 256
    assert {pool.sites.format for pool in (k.nonpaged_pool, k.paged_pool)} == {"H"}
    assert len(k.nonpaged_pool.sites) == k.nonpaged_pool.page_count * 4096 // 32
    numbers = [k.pool.site_of(p) for p in live]
    assert numbers == list(range(1, 301))  # those made before the widening too
    assert [k.allocation_site(p).lineno for p in live] == list(range(2, 302))
    for p in live[::3]:  # freed and reallocated through the fast path, past the widening
        k.ExFreePoolWithTag(p, "Many")
    again: list = []
    many(k, again)
    assert [k.pool.site_of(p) for p in again] == list(range(1, 301))


def test_a_widened_site_map_gives_the_dump_the_same_allocation_site_table():
    """Widening the map changes no site a dump carries: NTAS (a USHORT per block) is the same
    table byte for byte; NTA2 stores the map's width, and reads back the same sites."""
    from ntpool.dump.layout import allocation_site_table
    from ntpool.dump.reader import _parse_site_tables

    def sites_by_block(table):
        return [(base, stream.read(0, blocks)) for base, blocks, stream in _parse_site_tables(table)]

    k = machine()
    live: list = []
    _many_sites(200)(k, live)
    for p in live[::2]:  # stale sites of free chunks are in the table too
        k.ExFreePoolWithTag(p, "Many")
    narrow, narrow_v1 = allocation_site_table(k), allocation_site_table(k, 1)
    k.pool.widen_site_maps()
    assert k.nonpaged_pool.sites.format == "H"
    assert allocation_site_table(k, 1) == narrow_v1
    wide = allocation_site_table(k)
    assert wide != narrow and sites_by_block(wide) == sites_by_block(narrow) == sites_by_block(narrow_v1)
    assert any(sites.strip(b"\0") for _, sites in sites_by_block(wide))


def test_neighbouring_chunks_at_odd_and_even_blocks_keep_their_own_sites(tmp_path):
    """Chunks of 2 and 3 blocks from three sites, packed so that chunks start at odd and even
    blocks side by side; each keeps its site, live and in the dump, through frees and reuse."""
    k = machine()
    d = ThreeSites()
    k.load_driver(d)
    routines = (d.first, d.second, d.third)
    live = {}
    for n in range(300):
        which = n % 3
        live[routines[which](k, (1, 17, 30)[n * 7 % 3])] = which
    for p in list(live)[::4]:
        k.ExFreePoolWithTag(p, k.read(p - 12, 4).decode())
        del live[p]
    for n in range(60):
        live[routines[n % 3](k, (1, 17)[n % 2])] = n % 3
    names = ("ThreeSites.first", "ThreeSites.second", "ThreeSites.third")
    headers = sorted(p - 16 for p in live)
    assert any((b - a) == 32 and a & 16 for a, b in zip(headers, headers[1:]))  # odd starts
    assert any((b - a) == 16 * 3 for a, b in zip(headers, headers[1:]))
    for p, which in live.items():
        assert k.allocation_site(p).function.endswith(names[which])
    path = k.write_dump(tmp_path / "three.dmp", "kernel")
    with DumpReader(path) as reader:
        for p in live:
            assert reader.allocation_site(p - 16) == k.pool.site_of(p) != 0
        from ntpool.debugger import poolscan
        from ntpool.debugger.allocations import allocations
        found = {a.address: a.site for a in allocations(reader, poolscan.BigPageIndex(reader.big_pages()))}
        for p in live:
            assert found[p] == k.pool.site_of(p)


@pytest.mark.parametrize("windows", ["7", "10", "11"])
def test_each_design_names_the_allocating_line_of_small_and_big_chunks(windows):
    # Kernel.allocation_site asks the design (PoolAllocator.site_of): Windows 7 keeps the site
    # in its site map, the segment heap in the small block's header; big ones beside the table.
    k = machine(windows=windows)
    driver = Driver()
    k.load_driver(driver)
    small = driver.small(k)
    big = driver.small(k, size=3 * 4096)
    medium = driver.small(k, size=0x2000)  # a VS chunk on the segment heap
    for p in (small, big, medium):
        site = k.allocation_site(p)
        assert site.function == "Driver.small" and site.filename.endswith(__file__.rsplit("/", 1)[-1])
        assert k.allocation_driver(p).name == "sites.sys"


def test_a_drivers_code_in_a_file_of_ntpools_own_is_its_site_once_the_driver_loads():
    """Code in one of ntpool's own files is machinery (walked out of to its caller) until a
    driver that owns it loads: the lookup's cache of what is machinery is made again then."""
    import os
    import types

    k = ntpool.Kernel(nonpaged_pool_bytes=1 << 20, paged_pool_bytes=1 << 20)
    filename = os.path.join(os.path.dirname(ntpool.__file__), "owned_driver.py")
    namespace: dict = {}
    exec(compile("def allocate(k):\n    return k.ExAllocatePoolWithTag(0, 40, 'Ownd')\n",
                 filename, "exec"), namespace)
    allocate = namespace["allocate"]

    def here(k):  # the caller the machinery is walked out to
        return allocate(k)

    before = k.pool.site_of(here(k))
    assert k.call_sites.table[before].function.endswith("here")
    driver = types.ModuleType("owned")
    driver.allocate = allocate
    driver.DriverEntry = lambda k, path: 0
    k.load_driver(driver)
    after = k.pool.site_of(here(k))
    assert k.call_sites.table[after].function.endswith("allocate")
    assert k.call_sites.table[after].filename == filename


@pytest.mark.parametrize("delayed", [False, True])
def test_a_free_leaves_the_tag_and_bytes_8_to_15(delayed):
    # WRK's ExFreePoolWithTag and ExDeferredFreePool write BlockSize and PoolType (the
    # latter PoolIndex too) of the header a freed chunk ends in, and a split from a chunk's
    # end its BlockSize: a quota chunk's ProcessBilled stays in its free header through all.
    k = machine(delayed_frees=delayed)
    process = k.create_process("app.exe")
    k.set_current_process(process)
    # 39 blocks each, past the lookasides: a page's first chunk, then from the page's end down
    first, last, middle, before, *_ = [k.ExAllocatePoolWithQuotaTag(NP, 600, "Quot") for _ in range(5)]
    assert before + 39 * 16 == middle and middle + 39 * 16 == last and (last + 39 * 16 - 16) % 4096 == 0

    def free(p):
        k.ExFreePoolWithTag(p, "Quot")
        k.nonpaged_pool.deferred_free()  # (nothing queued without delayed frees)

    free(middle)  # its neighbours in use: its own header becomes the free one
    freed = header(k, middle)
    assert (freed.PoolType, freed.BlockSize, freed.PreviousSize) == (0, 39, 39)
    assert freed.PoolTag == tag_value("Quot") and freed.ProcessBilled == process.address
    free(last)  # merges into the free chunk before it, whose header takes the sum
    merged = header(k, middle)
    assert (merged.PoolType, merged.BlockSize, merged.PreviousSize) == (0, 78, 39)
    assert merged.ProcessBilled == process.address
    p = k.ExAllocatePoolWithTag(NP, 1000, "Splt")  # 64 blocks: from the merged chunk's end
    assert p == middle + 14 * 16
    rest = header(k, middle)
    assert (rest.PoolType, rest.BlockSize) == (0, 14) and rest.ProcessBilled == process.address
    assert header(k, p).ProcessBilled == 0 and header(k, p).PreviousSize == 14


@pytest.mark.parametrize("delayed", [False, True])
def test_which_free_rewrites_pool_index(delayed):
    # WRK: ExFreePoolWithTag writes BlockSize and PoolType of the header a chunk ends in, and
    # ExDeferredFreePool also the freed chunk's own PoolIndex (ENCODE_POOL_INDEX); a split
    # from a free chunk's end writes its BlockSize alone. A PoolIndex a driver wrote into a
    # free header shows which one ran.
    k = machine(delayed_frees=delayed)
    first, last, middle, before, *_ = [k.ExAllocatePoolWithTag(NP, 600, "Idx ") for _ in range(5)]
    own_index = header(k, last).PoolIndex

    def free(p):
        k.ExFreePoolWithTag(p, "Idx ")
        k.nonpaged_pool.deferred_free()

    free(middle)
    k.write(middle - 16 + POOL_HEADER.PoolIndex, bytes([0x5A]))  # a stray write into the free header
    free(last)  # merges into ``middle``'s free header
    merged = header(k, middle)
    assert (merged.BlockSize, merged.PoolType) == (78, 0)
    assert merged.PoolIndex == (own_index if delayed else 0x5A)
    k.write(middle - 16 + POOL_HEADER.PoolIndex, bytes([0x3C]))
    p = k.ExAllocatePoolWithTag(NP, 1000, "Splt")  # 64 blocks from the merged chunk's end
    rest = header(k, middle)
    assert p == middle + 14 * 16 and (rest.BlockSize, rest.PoolType, rest.PoolIndex) == (14, 0, 0x3C)
