"""Pool quota charged to a user process on the allocator's quota fast path
(``allocate_charged``): the usual request (a lookaside chunk on Windows 7, an active LFH
bucket's block on Windows 10/11) charged, billed in its header and attributed to the
driver's line exactly as the generic path (``allocate_with_quota``) does it, and refused
over quota with nothing changed."""

import struct
import sys

import pytest

import ntpool
from ntpool.constants import POOL_QUOTA_FAIL_INSTEAD_OF_RAISE
from ntpool.tags import DEFAULT_TAG_EX, DEFAULT_TAG_FSRTL, tag_value

NP = int(ntpool.PoolType.NonPagedPool)
MiB = 1 << 20
QUOTA_EXCEEDED = 0xC0000044
LFH_WARM_UP = 2_100  # the segment heap's LFH serves a size from its 2040th request


class ChargingDriver:
    """A driver (a file system, say) allocating in a user process's context."""

    name = "charging.sys"

    def DriverEntry(self, k, path):
        return 0

    def charge(self, k, size=100, pool_type=NP):
        self.line = sys._getframe().f_lineno + 1
        return k.ExAllocatePoolWithQuotaTag(pool_type, size, "Quot")

    def charge_fsrtl(self, k):
        self.line = sys._getframe().f_lineno + 1
        return k.FsRtlAllocatePoolWithQuotaTag(NP, 100, "Quot")

    def charge_zeroed(self, k):
        self.line = sys._getframe().f_lineno + 1
        return k.ExAllocatePoolQuotaZero(NP, 100, "Quot")

    def charge_default(self, k):  # the default tag 'None'
        self.line = sys._getframe().f_lineno + 1
        return k.ExAllocatePoolWithQuota(NP, 100)

    def charge_fsrtl_default(self, k):  # the default tag 'FSrt'
        self.line = sys._getframe().f_lineno + 1
        return k.FsRtlAllocatePoolWithQuota(NP, 100)


def _machine(windows: str):
    """A machine whose fast paths serve two 100-byte "Quot" requests (Windows 7: two chunks on
    its lookaside; Windows 11: an active LFH bucket), with the driver loaded and app.exe (4 KiB of
    nonpaged quota) current."""
    k = ntpool.Kernel(nonpaged_pool_bytes=8 * MiB, paged_pool_bytes=8 * MiB, windows=windows)
    driver = ChargingDriver()
    k.load_driver(driver)
    app = k.create_process("app.exe", nonpaged_quota=4096)
    for _ in range(LFH_WARM_UP if windows == "11" else 1):
        held = [k.ExAllocatePoolWithTag(NP, 100, "Quot") for _ in range(2)]
        for p in held:
            k.ExFreePoolWithTag(p, "Quot")
    k.set_current_process(app)
    return k, driver, app


def _no_generic_path(k, monkeypatch):
    def refuse(*args, **kwargs):
        pytest.fail(f"the charged request {args} left the quota fast path")
    monkeypatch.setattr(k.pool, "allocate_with_quota", refuse)


def _billed(k, body: int) -> tuple[int, int]:
    """The header's PoolType byte, and the EPROCESS its ProcessBilled names (decoded with
    ExpPoolQuotaCookie on the segment heap)."""
    header = body - 16
    pool_type = k.read(header + 3, 1)[0]
    billed = struct.unpack("<Q", k.read(header + 8, 8))[0]
    if k.windows.segment_heap:
        billed ^= struct.unpack("<Q", k.read(k.heap_state.cookie_va, 8))[0] ^ header
    return pool_type, billed


def _nonpaged_allocs(k) -> int:
    return {row.TagUlong: row for row in k.pool_tags()}[tag_value("Quot")].NonPagedAllocs


@pytest.mark.parametrize("windows", ["7", "11"])
def test_a_charged_request_is_billed_charged_counted_and_sited_on_the_fast_path(windows, monkeypatch):
    k, driver, app = _machine(windows)
    allocations = _nonpaged_allocs(k)
    _no_generic_path(k, monkeypatch)
    p = driver.charge(k)
    pool_type, billed = _billed(k, p)
    assert pool_type & 0x8 and billed == app.address  # the quota bit, ProcessBilled
    charge = 128  # the chunk: 100 bytes and the POOL_HEADER, in 16-byte units
    assert app.nonpaged_quota_used == charge and app.quota_peak[0] == charge
    assert _nonpaged_allocs(k) == allocations + 1
    if windows == "7":  # (the segment heap keeps a charged block's site nowhere: ProcessBilled)
        site = k.allocation_site(p)
        assert (site.function, site.lineno) == ("ChargingDriver.charge", driver.line)
        assert k.allocation_driver(p).name == "charging.sys"
    q = driver.charge(k)
    assert app.nonpaged_quota_used == app.quota_peak[0] == 2 * charge
    k.ExFreePoolWithTag(p, "Quot")
    k.ExFreePool(q)
    assert app.nonpaged_quota_used == 0 and app.quota_peak[0] == 2 * charge


@pytest.mark.parametrize("windows", ["7", "11"])
def test_a_charged_request_over_quota_changes_nothing_on_the_fast_path(windows, monkeypatch):
    k, driver, app = _machine(windows)
    driver.charge(k, size=4000)  # 4016 bytes or more of the 4096: a 100-byte request no longer fits
    used, peak, allocations = app.nonpaged_quota_used, app.quota_peak[0], _nonpaged_allocs(k)
    head = k.nonpaged_pool.la.head[8] if windows == "7" else None  # the chunk a request would take
    _no_generic_path(k, monkeypatch)
    with pytest.raises(ntpool.NtStatusError) as raised:
        driver.charge(k)
    assert raised.value.status == QUOTA_EXCEEDED
    with pytest.raises(ntpool.NtStatusError) as raised:
        driver.charge_fsrtl(k)
    assert raised.value.status == QUOTA_EXCEEDED
    assert driver.charge(k, pool_type=NP | POOL_QUOTA_FAIL_INSTEAD_OF_RAISE) == 0
    assert (app.nonpaged_quota_used, app.quota_peak[0], _nonpaged_allocs(k)) == (used, peak, allocations)
    # The chunk the refused requests would have had is still there for the next one, unbilled.
    k.set_current_process(k.system_process)
    p = k.ExAllocatePoolWithTag(NP, 100, "Quot")
    assert head is None or p == head
    assert not _billed(k, p)[0] & 0x8


@pytest.mark.parametrize("routine, tag", [("charge_fsrtl", "Quot"), ("charge_zeroed", "Quot"),
                                          ("charge_default", DEFAULT_TAG_EX),
                                          ("charge_fsrtl_default", DEFAULT_TAG_FSRTL)])
def test_the_routines_built_on_the_quota_fast_path_bill_and_attribute_the_drivers_line(
        routine, tag, monkeypatch):
    k, driver, app = _machine("7")
    k.set_current_process(k.system_process)  # a chunk of the routine's tag freed, its tag known
    k.ExFreePoolWithTag(k.ExAllocatePoolWithTag(NP, 100, tag), tag)
    k.set_current_process(app)
    _no_generic_path(k, monkeypatch)
    p = getattr(driver, routine)(k)
    site = k.allocation_site(p)
    assert (site.function, site.lineno) == (f"ChargingDriver.{routine}", driver.line)
    assert _billed(k, p) == (0xA, app.address) and app.nonpaged_quota_used == 128
    assert struct.unpack("<I", k.read(p - 16 + 4, 4))[0] == tag_value(tag)
    k.ExFreePool(p)
    assert app.nonpaged_quota_used == 0


@pytest.mark.parametrize("windows", ["7", "11"])
def test_a_charged_zeroed_request_is_zeroed_on_the_fast_path(windows, monkeypatch):
    k, driver, app = _machine(windows)
    k.set_current_process(k.system_process)
    dirty = k.ExAllocatePoolWithTag(NP, 100, "Quot")
    k.write(dirty, b"\xAA" * 100)
    k.ExFreePoolWithTag(dirty, "Quot")
    k.set_current_process(app)
    _no_generic_path(k, monkeypatch)
    p = driver.charge_zeroed(k)
    assert p == dirty or windows == "11"  # (the LFH picks a block at random)
    assert k.read(p, 100) == bytes(100) and _billed(k, p)[1] == app.address
    assert app.nonpaged_quota_used == 128


@pytest.mark.parametrize("windows", ["7", "11"])
def test_driver_verifier_sees_every_charged_request(windows):
    k, driver, app = _machine(windows)
    k.verifier.enable(ChargingDriver.name, pool_tracking=True)
    p = driver.charge(k)
    assert [row.address for row in k.verifier.outstanding(ChargingDriver.name)] == [p]
    assert _billed(k, p)[1] == app.address and app.nonpaged_quota_used == 128
    k.ExFreePoolWithTag(p, "Quot")
    assert k.verifier.outstanding(ChargingDriver.name) == [] and app.nonpaged_quota_used == 0


@pytest.mark.parametrize("windows", ["7", "11"])
@pytest.mark.parametrize("size, tag, error", [(True, "Quot", TypeError), (100, 1.0, ntpool.TagError),
                                              (100, True, ntpool.TagError)])
def test_a_charged_request_of_another_type_is_refused_as_the_generic_path_refuses_it(
        windows, size, tag, error):
    # A bool or a float equal to a size or to a known tag (the int tag 1 here) would pass the
    # fast path's lookups: it refuses them as ``allocate_with_quota`` does, nothing charged.
    k, driver, app = _machine(windows)
    k.set_current_process(k.system_process)
    k.ExFreePoolWithTag(k.ExAllocatePoolWithTag(NP, 100, 1), 1)
    k.ExFreePoolWithTag(k.ExAllocatePoolWithTag(NP, 1, "Quot"), "Quot")  # (a bool's size: 1 byte)
    k.set_current_process(app)
    with pytest.raises(error):
        k.ExAllocatePoolWithQuotaTag(NP, size, tag)
    assert app.nonpaged_quota_used == 0


class Pool2ChargingDriver(ChargingDriver):
    name = "pool2charging.sys"

    def charge_pool2(self, k, flags):
        self.line = sys._getframe().f_lineno + 1
        return k.ExAllocatePool2(flags, 100, "Quot")


@pytest.mark.parametrize("windows", ["7", "11"])
@pytest.mark.parametrize("uninitialized", [False, True])
def test_exallocatepool2_with_use_quota_takes_the_quota_fast_path(windows, uninitialized, monkeypatch):
    """ExAllocatePool2 with POOL_FLAG_USE_QUOTA, charged to a process: the quota fast path,
    the memory zeroed unless POOL_FLAG_UNINITIALIZED, billed, charged and attributed to the
    driver's line; over quota, NULL or STATUS_QUOTA_EXCEEDED raised with nothing changed."""
    F = ntpool.PoolFlags
    k, _, app = _machine(windows)
    driver = Pool2ChargingDriver()
    k.load_driver(driver)
    flags = F.POOL_FLAG_NON_PAGED | F.POOL_FLAG_USE_QUOTA | (F.POOL_FLAG_UNINITIALIZED if uninitialized else 0)
    k.set_current_process(k.system_process)
    if windows == "11":  # ExAllocatePool2's nonpaged pool is NonPagedPoolNx, a heap of its own
        for _ in range(LFH_WARM_UP):
            k.ExFreePoolWithTag(k.ExAllocatePool2(F.POOL_FLAG_NON_PAGED, 100, "Quot"), "Quot")
    dirty = k.ExAllocatePoolWithTag(NP, 100, "Quot")
    k.write(dirty, b"\xAA" * 100)
    k.ExFreePoolWithTag(dirty, "Quot")  # the chunk the charged request takes, written on
    k.set_current_process(app)
    # A first request translates the Flags value (_allocate_pool2); the next ones are
    # ExAllocatePool2's usual charged call (_POOL2_CHARGED): the one tested below.
    k.ExFreePoolWithTag(driver.charge_pool2(k, flags), "Quot")
    big = driver.charge(k, size=3900)  # most of the 4 KiB charged: room for one 100-byte request
    before = app.nonpaged_quota_used
    assert 128 <= 4096 - before < 256
    _no_generic_path(k, monkeypatch)
    p = driver.charge_pool2(k, flags)
    pool_type, billed = _billed(k, p)
    assert pool_type & 0x8 and billed == app.address and app.nonpaged_quota_used == before + 128
    if windows == "7":
        assert p == dirty
        # (uninitialized: as it was left, but for the lookaside's Next in its first QWORD)
        assert (k.read(p + 8, 92) == b"\xAA" * 92) if uninitialized else (k.read(p, 100) == bytes(100))
        site = k.allocation_site(p)
        assert (site.function, site.lineno) == ("Pool2ChargingDriver.charge_pool2", driver.line)
    elif not uninitialized:
        assert k.read(p, 100) == bytes(100)
    used = app.nonpaged_quota_used
    assert driver.charge_pool2(k, flags) == 0  # less than 128 bytes of quota left
    with pytest.raises(ntpool.NtStatusError) as raised:
        driver.charge_pool2(k, flags | F.POOL_FLAG_RAISE_ON_FAILURE)
    assert raised.value.status == QUOTA_EXCEEDED and app.nonpaged_quota_used == used
    k.ExFreePoolWithTag(p, "Quot")
    k.ExFreePoolWithTag(big, "Quot")
    assert app.nonpaged_quota_used == 0
