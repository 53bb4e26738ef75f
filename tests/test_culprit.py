"""Beyond Windows: the first write that corrupted the pool is named (ntpool.pool.culprit)."""

import pytest

import ntpool
from ntpool.debugger.session import KdSession
from ntpool.dump.reader import DumpReader
from ntpool.samples.sloppy import SloppyDriver

NP = ntpool.PoolType.NonPagedPool


def test_the_overrun_is_named_in_the_bug_check_and_in_analyze_from_the_dump(k, tmp_path):
    driver = SloppyDriver()
    k.load_driver(driver)
    k.record_corrupting_writes()
    k.ExAllocatePoolWithTag(NP, 16, "Fill")
    with pytest.raises(ntpool.BugCheck) as info:
        for _ in range(5):
            driver.handle_request(k, "x" * 56)  # 112 bytes and a NUL the buffer has no room for
    e = info.value
    assert (e.code, e.parameters[0]) == (0x19, 0x20)
    assert "corrupted by sloppy.sys SloppyDriver.handle_request (sloppy.py:38)" in e.detail
    assert "running 2 bytes past the end of its 112-byte SlNm chunk" in e.detail
    path = str(tmp_path / "MEMORY.DMP")
    k.write_dump(path, kind="kernel", symbols=False)
    with DumpReader(path) as reader:
        text = KdSession(reader).execute("!analyze -v")
    assert "CORRUPTED_BY:  sloppy.sys SloppyDriver.handle_request (sloppy.py:38), a 114-byte " \
           "write running 2 bytes past the end of its 112-byte SlNm chunk" in text
    assert f"114 bytes at {e.corrupted_by.address:016x}: 78 00 78 00" in text


def test_a_write_to_a_chunk_cached_on_a_lookaside_is_a_write_into_freed_memory(k):
    k.record_corrupting_writes()
    p = k.ExAllocatePoolWithTag(NP, 100, "Uaf ")
    k.ExAllocatePoolWithTag(NP, 100, "Kept")
    k.ExFreePoolWithTag(p, "Uaf ")
    k.write(p + 32, b"late")
    first = k.culprit_recorder.first
    assert first.what == "a 4-byte write into freed memory, 32 bytes into a freed 112-byte  faU chunk"
    assert first.address == p + 32 and first.data == b"late"


def test_writes_inside_their_chunk_are_not_recorded_and_only_the_first_crossing_is(k):
    k.record_corrupting_writes()
    a = k.ExAllocatePoolWithTag(NP, 1000, "Ownr")
    b = k.ExAllocatePoolWithTag(NP, 1000, "Next")
    k.write(a, b"\x11" * 1008)  # all of a's body: inside
    k.RtlZeroMemory(b, 1000)
    assert k.culprit_recorder.first is None
    k.write(b - 2, b"\x22\x22")  # onto b's header (its tag): from a's end? b is not after a
    first = k.culprit_recorder.first
    assert first is not None and "onto the header of the txeN chunk" in first.what
    k.write(a + 1008, b"\x33")
    assert k.culprit_recorder.first is first


def test_recording_is_off_by_default_and_can_be_turned_off(k):
    assert getattr(k, "culprit_recorder", None) is None
    assert "write" not in vars(k)  # k.write keeps its fastest path: nothing listens
    k.record_corrupting_writes()
    assert "write" in vars(k) and "culprit recording" in k.pool.fast_path_blockers
    k.record_corrupting_writes(False)
    assert "write" not in vars(k) and not k.pool.fast_path_blockers
