"""Driver Verifier's pool options, each shown catching a small buggy driver."""

import pytest

import ntpool
from ntpool.tags import tag_value

NP = ntpool.PoolType.NonPagedPool
PP = ntpool.PoolType.PagedPool
MiB = 1 << 20


class Driver:
    name = "buggy.sys"

    def DriverEntry(self, k, path):
        return 0

    def DriverUnload(self, k):
        pass


@pytest.fixture
def k():
    return ntpool.Kernel(nonpaged_pool_bytes=4 * MiB, paged_pool_bytes=4 * MiB)


def stop(call):
    with pytest.raises(ntpool.BugCheck) as info:
        call()
    return info.value


# --- special pool ---------------------------------------------------------------------------

class Overrunner(Driver):
    def allocate(self, k, size=100):
        return k.ExAllocatePoolWithTag(NP, size, "Ovrn")

    def overrun(self, k, p, size, by):
        k.write(p, b"x" * (size + by))


def test_special_pool_puts_the_allocation_against_a_guard_page(k):
    d = Overrunner()
    k.load_driver(d)
    k.verifier.enable("buggy.sys", special_pool=True)
    p = d.allocate(k, 100)
    assert (p + 112) & 0xFFF == 0  # 100 rounded to 112, ending at the page's end
    k.write(p, b"y" * 100)
    e = stop(lambda: d.overrun(k, p, 112, 1))  # one byte past the page: the guard page
    assert e.code == 0xD6  # DRIVER_PAGE_FAULT_BEYOND_END_OF_ALLOCATION: a driver did it
    assert e.parameters[0] == p + 112 and e.parameters[1] == 1
    assert e.parameters[2] != 0  # the faulting instruction: an address in buggy.sys's image
    assert e.parameters[2] >= k.drivers[0].image_base


def test_slack_damage_is_found_at_free(k):
    d = Overrunner()
    k.load_driver(d)
    k.verifier.enable("buggy.sys", special_pool=True)
    p = d.allocate(k, 100)
    d.overrun(k, p, 100, 3)  # lands in the 12 bytes of slack: no fault yet
    e = stop(lambda: k.ExFreePoolWithTag(p, "Ovrn"))
    assert (e.code, e.parameters[0], e.parameters[1], e.parameters[3]) == (0xC1, p, p + 100, 0x24)


def test_underrun_mode_catches_underruns(k):
    d = Overrunner()
    k.load_driver(d)
    k.verifier.enable("buggy.sys", special_pool=True, special_pool_underruns=True)
    p = d.allocate(k, 100)
    assert p & 0xFFF == 0
    e = stop(lambda: k.write(p - 1, b"u"))
    assert e.code == 0xCD and e.parameters[0] == p - 1


class UseAfterFree(Driver):
    def run(self, k):
        p = k.ExAllocatePoolWithTag(NP, 64, "Uaf ")
        k.ExFreePoolWithTag(p, "Uaf ")
        return k.read(p, 4)


def test_touching_freed_special_pool_faults(k):
    d = UseAfterFree()
    k.load_driver(d)
    k.verifier.enable("buggy.sys", special_pool=True)
    e = stop(lambda: d.run(k))
    assert e.code == 0xD5  # a driver touched it; 0xCC when no driver can be named
    assert e.parameters[1] == 0


def test_freed_special_pool_touched_by_no_driver_is_0xcc(k):
    d = Overrunner()
    k.load_driver(d)
    k.verifier.enable("buggy.sys", special_pool=True)
    p = d.allocate(k, 64)
    k.ExFreePoolWithTag(p, "Ovrn")
    assert stop(lambda: k.write(p, b"z")).code == 0xCC


def test_special_pool_targets_tags_and_sizes(k):
    d = Overrunner()
    k.load_driver(d)
    k.verifier.enable("buggy.sys", special_pool=True, special_pool_tags=["nr*"])
    assert k.verifier.special_pool.contains(d.allocate(k, 64))  # shows as "nrvO"
    k.verifier.enable("buggy.sys", special_pool=True, special_pool_tags=["Nope"])
    assert not k.verifier.special_pool.contains(d.allocate(k, 64))
    k.verifier.enable("buggy.sys", special_pool=True, special_pool_sizes=(1, 32))
    assert not k.verifier.special_pool.contains(d.allocate(k, 64))
    assert k.verifier.special_pool.contains(d.allocate(k, 16))


def test_special_pool_falls_back_to_normal_pool_when_exhausted(k):
    d = Overrunner()
    k.load_driver(d)
    k.verifier.special_pool.resize(2)
    k.verifier.enable("buggy.sys", special_pool=True)
    a, b, c = (d.allocate(k, 64) for _ in range(3))
    assert k.verifier.special_pool.contains(a) and k.verifier.special_pool.contains(b)
    assert k.nonpaged_pool.contains(c) and k.verifier.special_pool.fallbacks == 1
    for p in (a, b, c):
        k.ExFreePoolWithTag(p, "Ovrn")
    assert all(r.NonPagedUsed == 0 for r in k.pool_tags())


def test_special_pool_is_only_for_the_verified_driver(k):
    d = Overrunner()
    k.load_driver(d)
    k.verifier.enable("other.sys", special_pool=True)
    assert k.nonpaged_pool.contains(d.allocate(k))


def test_special_pool_allocation_records_its_site(k):
    d = Overrunner()
    k.load_driver(d)
    k.verifier.enable("buggy.sys", special_pool=True)
    p = d.allocate(k)
    assert k.allocation_driver(p).name == "buggy.sys"


# --- pool tracking --------------------------------------------------------------------------

class Leaker(Driver):
    def DriverEntry(self, k, path):
        self.kept = k.ExAllocatePoolWithTag(NP, 40, "Leak")
        self.lost = k.ExAllocatePoolWithTag(PP, 5000, "Leak")
        return 0

    def DriverUnload(self, k):
        k.ExFreePoolWithTag(self.kept, "Leak")


def test_unloading_with_allocations_outstanding_is_0xc4_0x62(k):
    d = Leaker()
    k.verifier.enable("buggy.sys", pool_tracking=True)
    loaded = k.load_driver(d)
    listing = k.verifier.format_outstanding("buggy.sys")
    assert "Current Pool Allocations         2" in listing
    assert "kaeL" in listing and "Leaker.DriverEntry" in listing
    e = stop(lambda: k.unload_driver(d))
    assert e.code == 0xC4 and e.parameters == (0x62, loaded.name_va, 0, 1)
    name_length = int.from_bytes(k.read(loaded.name_va, 2), "little")
    buffer = int.from_bytes(k.read(loaded.name_va + 8, 8), "little")
    assert k.read(buffer, name_length).decode("utf-16-le") == "buggy.sys"


def test_without_pool_tracking_a_leak_is_not_a_bug_check(k):
    d = Leaker()
    k.load_driver(d)
    k.unload_driver(d)
    assert not k.halted


# --- low resources simulation ---------------------------------------------------------------

class Careful(Driver):
    def run(self, k, n):
        results = []
        for _ in range(n):
            results.append(k.ExAllocatePoolWithTag(NP, 32, "Care"))
        return results


def test_random_low_resources_fails_with_the_given_probability_and_seed(k):
    d = Careful()
    k.load_driver(d)
    k.verifier.enable("buggy.sys", low_resources=True, fault_probability=0.25, fault_seed=7)
    results = d.run(k, 2000)
    failures = results.count(0)
    assert 400 < failures < 600
    injected = k.verifier.low_resources.injected
    assert len(injected) == failures
    assert {k.call_sites.table[f.site].function for f in injected} == {"Careful.run"}
    k2 = ntpool.Kernel(nonpaged_pool_bytes=4 * MiB, paged_pool_bytes=4 * MiB)
    d2 = Careful()
    k2.load_driver(d2)
    k2.verifier.enable("buggy.sys", low_resources=True, fault_probability=0.25, fault_seed=7)
    assert [r == 0 for r in d2.run(k2, 2000)] == [r == 0 for r in results]


def test_low_resources_delay_and_tag_filter(k):
    d = Careful()
    k.load_driver(d)
    k.verifier.enable("buggy.sys", low_resources=True, fault_probability=1.0, fault_delay=10)
    results = d.run(k, 15)
    assert all(results[:10]) and not any(results[10:])
    k.verifier.enable("buggy.sys", low_resources=True, fault_probability=1.0, fault_tags=["Othr"])
    assert all(d.run(k, 5))


class TwoSites(Driver):
    def first(self, k):
        return k.ExAllocatePoolWithTag(NP, 32, "Sit1")

    def second(self, k):
        return k.ExAllocatePoolWithTag(NP, 32, "Sit2")


def test_systematic_low_resources_fails_each_site_once(k):
    d = TwoSites()
    k.load_driver(d)
    k.verifier.enable("buggy.sys", systematic_low_resources=True)
    assert d.first(k) == 0 and d.first(k) != 0
    assert d.second(k) == 0 and d.second(k) != 0
    failed = [k.call_sites.table[s].function for s in k.verifier.failed_sites]
    assert failed == ["TwoSites.first", "TwoSites.second"]


# --- uninitialized memory disclosure --------------------------------------------------------

class Discloser(Driver):
    def query(self, k, user_buffer, zero_first):
        p = k.ExAllocatePoolWithTag(PP, 64, "Info")
        if zero_first:
            k.RtlZeroMemory(p, 64)
        k.write(p, b"version=1")
        k.copy_to_user(user_buffer, p, 64)
        k.ExFreePoolWithTag(p, "Info")


def test_copying_never_written_pool_to_user_mode_is_reported(k):
    d = Discloser()
    k.load_driver(d)
    k.verifier.enable("buggy.sys", uninitialized_memory=True)
    buffer = bytearray(64)
    d.query(k, buffer, zero_first=False)
    [report] = k.verifier.disclosures
    assert report.uninitialized_bytes == 64 - 9
    assert report.tag == tag_value("Info")
    assert k.call_sites.table[report.site].function == "Discloser.query"
    assert "buggy.sys" in report.describe(k)
    d.query(k, buffer, zero_first=True)
    assert len(k.verifier.disclosures) == 1  # the fixed path discloses nothing


def test_a_verified_request_the_lane_serves_is_shadowed_and_its_disclosure_reported(k, monkeypatch):
    # Once its tag has passed the tag stops, a verified driver's small request takes the
    # allocator's lane (uninitialized memory only observes): the shadow is kept all the same.
    d = Discloser()
    k.load_driver(d)
    k.verifier.enable("buggy.sys", uninitialized_memory=True, pool_tracking=True)
    buffer = bytearray(64)
    d.query(k, buffer, zero_first=True)  # the tag checked: the next requests take the lane
    monkeypatch.setattr(k.verifier, "allocate", lambda *args, **kw: pytest.fail("generic path"))
    d.query(k, buffer, zero_first=False)
    [report] = k.verifier.disclosures
    assert report.uninitialized_bytes == 64 - 9 and report.tag == tag_value("Info")
    assert k.call_sites.table[report.site].function == "Discloser.query"
    assert k.verifier.uninitialized.shadows == {} and k.verifier.uninitialized.starts == []


class Keeper(Driver):
    def keep(self, k):
        return [k.ExAllocatePoolWithTag(NP, 64, "Keep") for _ in range(3)]


@pytest.mark.parametrize("options, tracked, shadowed", [
    ({"force_irql_checking": True}, False, False),
    ({"pool_tracking": True}, True, False),
    ({"uninitialized_memory": True}, False, True),
    ({"uninitialized_memory": True, "pool_tracking": True, "force_irql_checking": True}, True, True),
])
def test_the_lane_keeps_what_the_options_keep(k, options, tracked, shadowed):
    d = Keeper()
    k.load_driver(d)
    k.verifier.enable("buggy.sys", **options)
    held = d.keep(k)  # the first through the checks, the others on the lane
    assert len(k.verifier.outstanding("buggy.sys")) == (3 if tracked else 0)
    assert sorted(k.verifier.uninitialized.shadows) == (sorted(held) if shadowed else [])


class Stager(Driver):
    def run(self, k):
        source = k.ExAllocatePoolWithTag(PP, 32, "Src ")
        staging = k.ExAllocatePoolWithTag(PP, 32, "Dst ")
        k.RtlZeroMemory(staging, 32)
        k.RtlCopyMemory(staging, source, 32)  # never-written bytes move into staging
        k.copy_to_user(bytearray(32), staging, 32)
        return staging


def test_copies_carry_uninitialized_bytes_along(k):
    d = Stager()
    k.load_driver(d)
    k.verifier.enable("buggy.sys", uninitialized_memory=True)
    staging = d.run(k)
    [report] = k.verifier.disclosures
    assert report.allocation == staging and report.uninitialized_bytes == 32


# --- misuse -------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, words", [
    ({}, "at least one"), ({"low_resources": True, "fault_probability": 2}, "between 0 and 1"),
    ({"special_pool": True, "special_pool_sizes": (9, 1)}, "smallest, largest"),
    ({"flags": 0x10}, "not verifier pool options"), ({"low_resources": True, "fault_delay": -1}, "non-negative"),
])
def test_bad_verifier_options_are_plain_errors(k, kwargs, words):
    with pytest.raises(ValueError, match=words):
        k.verifier.enable("buggy.sys", **kwargs)


def test_verifier_off_restores_the_fast_path(k):
    k.verifier.enable("buggy.sys", pool_tracking=True)
    assert k.pool.fast_pools == {}
    k.verifier.disable()
    assert k.pool.fast_pools and k.pool.layer is None


# --- bug classes caught without an option ------------------------------------------------

class Unchecked(Driver):
    def run(self, k):
        p = k.ExAllocatePoolWithTag(NP, 64, "Unch")
        k.write(p + 8, b"no check")  # p may be NULL


def test_unchecked_allocation_failure_surfaces_under_low_resources(k):
    d = Unchecked()
    k.load_driver(d)
    k.verifier.enable("buggy.sys", systematic_low_resources=True)
    e = stop(lambda: d.run(k))
    assert e.code == 0x1E and e.parameters[0] == 0xC0000005
    assert e.parameters[2:] == (1, 8)
    assert "Unchecked.run" in e.detail


class DoubleFreer(Driver):
    def run(self, k):
        p = k.ExAllocatePoolWithTag(NP, 1000, "Dbl ")  # past the lookasides
        k.ExAllocatePoolWithTag(NP, 1000, "Dbl ")
        k.ExFreePoolWithTag(p, "Dbl ")
        k.ExFreePoolWithTag(p, "Dbl ")


class WrongTagger(Driver):
    def run(self, k):
        k.ExFreePoolWithTag(k.ExAllocatePoolWithTag(NP, 64, tag_value("Mine") | ntpool.PROTECTED_POOL),
                            "Your")


@pytest.mark.parametrize("driver, verify, code, sub", [
    (DoubleFreer, False, 0xC2, 0x07), (DoubleFreer, True, 0xC4, 0x13),  # verifier's own stop
    (WrongTagger, False, 0xC2, 0x0A), (WrongTagger, True, 0xC2, 0x0A)])
def test_double_free_and_wrong_tag_by_a_driver(k, driver, verify, code, sub):
    d = driver()
    k.load_driver(d)
    if verify:
        k.verifier.enable("buggy.sys", pool_tracking=True)
    e = stop(lambda: d.run(k))
    assert (e.code, e.parameters[0]) == (code, sub)


class FailsEntryAndLeaks(Driver):
    def DriverEntry(self, k, path):
        k.ExAllocatePoolWithTag(NP, 32, "Ent1")
        if not k.ExAllocatePoolWithTag(NP, 32, "Ent2"):
            return ntpool.NtStatus.STATUS_INSUFFICIENT_RESOURCES  # forgets Ent1
        return 0


def test_a_failed_driver_entry_that_leaks_is_caught(k):
    k.verifier.enable("buggy.sys", systematic_low_resources=True, pool_tracking=True)
    k.verifier.systematic.reset({(__file__, FailsEntryAndLeaks.DriverEntry.__code__.co_firstlineno + 2,
                                  "FailsEntryAndLeaks.DriverEntry")})
    e = stop(lambda: k.load_driver(FailsEntryAndLeaks()))
    assert e.parameters[0] == 0x62 and e.parameters[3] == 1


# --- force IRQL checking ------------------------------------------------------------------

class TouchesPagedUnderLock(Driver):
    def DriverEntry(self, k, path):
        self.lock = k.ExAllocatePoolWithTag(NP, 8, "Lock")
        k.KeInitializeSpinLock(self.lock)
        self.table = k.ExAllocatePoolWithTag(PP, 256, "Tabl")  # paged: a bug under a lock
        k.write(self.table, b"entry")
        return 0

    def lookup(self, k):
        old = k.KeAcquireSpinLock(self.lock)
        value = k.read(self.table, 5)
        k.KeReleaseSpinLock(self.lock, old)
        return value


def test_without_force_irql_checking_the_bug_hides_while_the_page_is_resident(k):
    d = TouchesPagedUnderLock()
    k.load_driver(d)
    assert d.lookup(k) == b"entry"


def test_force_irql_checking_makes_paged_access_at_dispatch_fault_at_once(k):
    d = TouchesPagedUnderLock()
    k.load_driver(d)
    k.verifier.enable("buggy.sys", force_irql_checking=True)
    e = stop(lambda: d.lookup(k))
    assert (e.code, e.parameters[:3]) == (0xD1, (d.table, 2, 0))
    assert k.call_sites.table[e.site].function == "TouchesPagedUnderLock.lookup"


class AllocatesPagedUnderLock(TouchesPagedUnderLock):
    def grow(self, k):
        old = k.KeAcquireSpinLock(self.lock)
        k.ExAllocatePoolWithTag(PP, 64, "Grow")
        k.KeReleaseSpinLock(self.lock, old)


def test_paged_allocation_under_a_spin_lock(k):
    d = AllocatesPagedUnderLock()
    k.load_driver(d)
    e = stop(lambda: d.grow(k))
    assert (e.code, e.parameters) == (0xC2, (0x08, 2, PP, 64))
    assert e.driver_name == "buggy.sys"


class Pool2User(Driver):
    def query(self, k, flags):
        p = k.ExAllocatePool2(flags, 64, "Pl2 ")
        k.copy_to_user(bytearray(64), p, 64)
        return p


@pytest.mark.parametrize("special", [False, True])
def test_zeroing_routines_count_as_writes(k, special):
    d = Pool2User()
    k.load_driver(d)
    k.verifier.enable("buggy.sys", uninitialized_memory=True, special_pool=special)
    p = d.query(k, 0x40)  # POOL_FLAG_NON_PAGED: zeroed by the routine
    assert k.verifier.special_pool.contains(p) == special
    assert k.verifier.disclosures == []
    d.query(k, 0x40 | 0x2)  # POOL_FLAG_UNINITIALIZED
    assert len(k.verifier.disclosures) == 1


class EveryRoutine(Driver):
    def run(self, k):
        _, va = k.NdisAllocateMemoryWithTag(100, "NdT1")
        k.NdisFreeMemory(va, 100, 0)
        _, va = k.NdisAllocateMemory(100, 0, -1)
        k.NdisFreeMemory(va, 100, 0)
        k.ExFreePoolWithTag(k.FsRtlAllocatePoolWithTag(PP, 200, "FsT1"), "FsT1")
        k.ExFreePool2(k.ExAllocatePool2(0x100, 300, "Ep2 "), "Ep2 ", None, 0)
        k.ExFreePool(k.ExAllocatePoolWithTagPriority(NP, 64, "Pri ", 0))
        k.ExFreePool(k.ExAllocatePoolWithTag(NP | 4, 64, "Cach"))
        k.ExFreePool(k.ExAllocatePoolWithQuotaTag(NP, 64, "Quot"))
        k.ExFreePool(k.ExAllocatePoolZero(PP, 64, "Zero"))
        p = k.ExAllocatePoolWithTag(NP, 64, "Nz  ")
        k.NdisZeroMemory(p, 64)
        k.ExFreePool(p)


@pytest.mark.parametrize("options", [
    dict(special_pool=True), dict(pool_tracking=True), dict(uninitialized_memory=True),
    dict(special_pool=True, pool_tracking=True, uninitialized_memory=True, force_irql_checking=True),
])
def test_every_routine_works_under_every_option(k, options):
    d = EveryRoutine()
    k.load_driver(d)
    k.verifier.enable("buggy.sys", **options)
    d.run(k)
    k.unload_driver(d)  # nothing outstanding, so pool tracking lets it go
    assert not k.halted
    assert all(r.NonPagedUsed == 0 and r.PagedUsed == 0 for r in k.pool_tags())


@pytest.mark.parametrize("underrun, offset, selector", [
    (False, -1, 0x23),  # the byte before the buffer (between header and buffer)
    (False, 20, 0x24),  # slack after a 20-byte buffer
    (True, 20, 0x24),   # underrun mode: after the buffer
    (True, 4096 - 17, 0x24),  # underrun mode: last slack byte before the header
])
def test_special_pool_pattern_damage_anywhere_in_the_page_is_found(k, underrun, offset, selector):
    d = Overrunner()
    k.load_driver(d)
    k.verifier.enable("buggy.sys", special_pool=True, special_pool_underruns=underrun)
    p = d.allocate(k, 20)
    k.write(p + offset, b"\x00")
    e = stop(lambda: k.ExFreePoolWithTag(p, "Ovrn"))
    assert (e.code, e.parameters[1], e.parameters[3]) == (0xC1, p + offset, selector)


# --- calls the verifier only watches keep the allocator's fast paths (issue 18) ---------------

class Juggler(Driver):
    def allocate(self, k, count, size=64, tag="Jugl"):
        return [k.ExAllocatePoolWithTag(NP, size, tag) for _ in range(count)]

    def free(self, k, addresses, tag="Jugl"):
        for address in addresses:
            k.ExFreePoolWithTag(address, tag)


def test_pool_tracking_records_every_allocation_and_forgets_every_free(k):
    d = Juggler()
    loaded = k.load_driver(d)
    k.verifier.enable("buggy.sys", pool_tracking=True)
    held = d.allocate(k, 5)  # the first meets the tag stops; the others take the lane
    assert [row.address for row in k.verifier.outstanding("buggy.sys")] == sorted(held)
    assert {(row.size, row.tag, row.pool) for row in k.verifier.outstanding("buggy.sys")} == \
        {(64, tag_value("Jugl"), "NonPagedPool")}
    d.free(k, held[:4])  # through the free fast path, which tells the verifier
    assert [row.address for row in k.verifier.outstanding("buggy.sys")] == [held[4]]
    e = stop(lambda: k.unload_driver(d))
    assert e.code == 0xC4 and e.parameters == (0x62, loaded.name_va, 0, 1)


def test_pool_tracking_pops_the_lookaside_as_the_retail_fast_path_does():
    """Windows 7: a request in the lane (pool tracking alone, a tag that passed) pops the
    processor's lookaside as the fast path would with no verifier: the same chunks, in the
    same order, their headers, the lookaside's count and hits, the call sites and the tag
    counts all as on a machine with no verifier; a Next a driver damaged to lead to mapped
    memory that is no chunk body (the lane cannot pop it) is handed out as retail does."""
    class Taker(Juggler):
        def take(self, k, count):  # another call site than ``allocate``'s
            return [k.ExAllocatePoolWithTag(NP, 100, "Jugl") for _ in range(count)]

    machines = []
    for verified in (False, True):
        k = ntpool.Kernel(nonpaged_pool_bytes=4 * MiB, paged_pool_bytes=4 * MiB)
        d = Taker()
        k.load_driver(d)
        if verified:
            k.verifier.enable("buggy.sys", pool_tracking=True)
        held = d.allocate(k, 6, size=100)
        allocate_site = k.pool.site_of(held[0])
        d.free(k, held)  # six chunks on the lookaside for 8 blocks
        taken = d.take(k, 3)
        live = taken[0]
        top = k.nonpaged_pool.la.head[8]
        k.write(top, (live + 8).to_bytes(8, "little"))  # a Next into a live chunk's body
        taken += d.take(k, 2)  # the damaged top, then what its Next leads to
        la = k.nonpaged_pool.la
        machines.append((taken, [k.read(p - 16, 32) for p in taken], la.count[8],
                         la.allocate_hits[8], la.head[8],
                         [k.pool.site_of(p) for p in taken[:4]],
                         sorted(k.pool_tags())))
        if verified:
            rows = {row.address for row in k.verifier.outstanding("buggy.sys")}
            assert rows == set(taken)  # each recorded, the one handed out twice once
    plain, lane = machines
    assert lane == plain
    assert plain[0][4] == plain[0][0] + 8  # the damaged Next was followed
    assert allocate_site not in plain[5]  # each chunk has its new call site


@pytest.mark.parametrize("windows", ["10", "11"])
def test_pool_tracking_keeps_the_segment_heaps_fast_paths(windows):
    """On the segment heap too, pool tracking alone leaves the requests it only watches in
    the allocator's lane and its LFH free fast path on, which tells the verifier."""
    from ntpool.pool.segment_heap.layout import LFH_ACTIVATE_REQUESTS

    k = ntpool.Kernel(nonpaged_pool_bytes=4 * MiB, paged_pool_bytes=4 * MiB, windows=windows)
    d = Juggler()
    loaded = k.load_driver(d)
    d.free(k, d.allocate(k, LFH_ACTIVATE_REQUESTS + 10))  # the 64-byte bucket's LFH active
    k.verifier.enable("buggy.sys", pool_tracking=True)
    assert k.pool.lane_pools and k.pool.fast_free_slots and not k.pool.fast_pools
    layer_allocations = []
    allocate = k.verifier.allocate
    k.verifier.allocate = lambda *args, **kw: (layer_allocations.append(args), allocate(*args, **kw))[1]
    held = d.allocate(k, 6)
    assert [row.address for row in k.verifier.outstanding("buggy.sys")] == sorted(held)
    assert len(layer_allocations) == 1  # only the first request, before its tag passed
    freed_generic = []
    free_generic = k.pool.free_generic
    k.pool.free_generic = lambda *args: (freed_generic.append(args), free_generic(*args))
    d.free(k, held[:5])
    assert freed_generic == []  # every free took the LFH fast path ...
    assert [row.address for row in k.verifier.outstanding("buggy.sys")] == [held[5]]  # ... and told it
    e = stop(lambda: k.unload_driver(d))
    assert e.code == 0xC4 and e.parameters == (0x62, loaded.name_va, 0, 1)


def test_pool_tracking_still_checks_each_request(k):
    d = Juggler()
    k.load_driver(d)
    k.verifier.enable("buggy.sys", pool_tracking=True)
    d.allocate(k, 2)
    assert stop(lambda: d.allocate(k, 1, size=0)).parameters[0] == 0x00  # 0xC4: zero bytes
    k2 = ntpool.Kernel(nonpaged_pool_bytes=4 * MiB, paged_pool_bytes=4 * MiB)
    d2 = Juggler()
    k2.load_driver(d2)
    k2.verifier.enable("buggy.sys", pool_tracking=True)
    d2.allocate(k2, 2)
    k2.ExAllocatePoolWithTag(NP, 64, "----")  # code not verified: retail takes any tag
    e = stop(lambda: d2.allocate(k2, 1, tag="----"))  # a verified driver: no letter or digit
    assert (e.code, e.parameters[0]) == (0xC2, 0x9D)


def test_special_pool_serves_every_request_of_a_known_tag(k):
    d = Juggler()
    k.load_driver(d)
    k.verifier.enable("buggy.sys", special_pool=True, pool_tracking=True)
    held = d.allocate(k, 3)
    assert all(k.verifier.special_pool.contains(p) for p in held)
    d.free(k, held)
    assert k.verifier.outstanding("buggy.sys") == []


def test_a_driver_not_verified_is_not_recorded_while_another_is(k):
    verified, other = Juggler(), Juggler()
    other.name = "other.sys"
    k.load_driver(verified)
    k.load_driver(other)
    k.verifier.enable("buggy.sys", pool_tracking=True)
    held = other.allocate(k, 3)
    assert k.verifier.tracking.records == {} and k.verifier.outstanding("other.sys") == []
    other.free(k, held)
    k.unload_driver(other)
    assert not k.halted


class HighTagged(Driver):
    """Allocates with 'f\\xe9rP', a tag with a Latin-1 letter: tools show it as 0x66e97250."""

    def allocate(self, k):
        return k.ExAllocatePoolWithTag(NP, 32, "f\xe9rP")


@pytest.mark.parametrize("pattern", ["0x66e97250", "0x66E97250", 0x66E97250, 0xE6E97250, "0x66e9*"])
def test_special_pool_targets_a_tag_tools_show_as_its_ulong(k, pattern):
    d = HighTagged()
    k.load_driver(d)
    k.verifier.enable("buggy.sys", special_pool=True, special_pool_tags=[pattern])
    assert k.verifier.special_pool.contains(d.allocate(k))
    k.verifier.enable("buggy.sys", special_pool=True, special_pool_tags=["0x66e97251"])
    assert not k.verifier.special_pool.contains(d.allocate(k))


def test_low_resources_filters_a_tag_tools_show_as_its_ulong(k):
    d = HighTagged()
    k.load_driver(d)
    k.verifier.enable("buggy.sys", low_resources=True, fault_probability=1.0, fault_tags=["0x66E97250"])
    assert d.allocate(k) == 0
    k.verifier.enable("buggy.sys", low_resources=True, fault_probability=1.0, fault_tags=[0x12345678])
    assert d.allocate(k) != 0


@pytest.mark.parametrize("pattern", ["Fredd", -1, 1 << 32, 4.0, "0x123456789"])
def test_a_tag_pattern_that_is_no_tag_is_refused(k, pattern):
    with pytest.raises(ValueError, match="tag pattern"):
        k.verifier.enable("buggy.sys", special_pool=True, special_pool_tags=[pattern])


class CarefulToo(Driver):
    name = "other.sys"

    def run(self, k, n):  # code of its own: its call sites are other.sys's
        return [k.ExAllocatePoolWithTag(NP, 32, "Car2") for _ in range(n)]


def test_two_drivers_verified_with_one_seed_fail_independently(k):
    # Each driver's random failures come from a stream of its own: the same seed must not
    # fail both drivers' n-th allocations together, and a run again gives the same failures.
    def failures(kernel):
        first, second = Careful(), CarefulToo()
        kernel.load_driver(first)
        kernel.load_driver(second)
        for name in ("buggy.sys", "other.sys"):
            kernel.verifier.enable(name, low_resources=True, fault_probability=0.25, fault_seed=3)
        return [r == 0 for r in first.run(kernel, 400)], [r == 0 for r in second.run(kernel, 400)]

    first, second = failures(k)
    assert 50 < sum(first) < 150 and 50 < sum(second) < 150
    assert first != second
    assert failures(ntpool.Kernel(nonpaged_pool_bytes=4 * MiB, paged_pool_bytes=4 * MiB)) == (first, second)
