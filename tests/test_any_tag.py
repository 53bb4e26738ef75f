"""Any ULONG is a pool tag, as it is to a retail kernel: bytes above 0x7F, NULs, bit 31.

Allocation, the free with the tag, the tracker, crash dumps (writer and reader) and the
debugger's text, for every ULONG; a compiled driver passing such tags; Driver Verifier
still refusing what it refuses."""

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ntpool
from ntpool.debugger.pooltag import PoolTagDatabase
from ntpool.debugger.session import KdSession
from ntpool.dump import DumpReader
from ntpool.native.build import SOURCE_DIRECTORY
from ntpool.tags import display, from_display, tag_value

MiB = 1 << 20
NP, P = ntpool.PoolType.NonPagedPool, ntpool.PoolType.PagedPool
ULONGS = st.integers(0, 0xFFFFFFFF)


def machine(windows=7):
    return ntpool.Kernel(nonpaged_pool_bytes=4 * MiB, paged_pool_bytes=4 * MiB, windows=windows)


WINDOWS = st.sampled_from([7, 11])  # Windows 7's pool and the segment heap


def shown(tag: int) -> str:
    """What tools show, worked out here from the bytes (not with ntpool.tags.display)."""
    data = (tag & 0x7FFFFFFF).to_bytes(4, "little")
    if all(0x20 <= b <= 0x7E for b in data):
        return data.decode("ascii")
    return "0x%08x" % (tag & 0x7FFFFFFF)


@given(ULONGS)
def test_every_ulong_is_a_tag_that_shows_and_reads_back(tag):
    assert tag_value(tag) == tag
    assert display(tag) == shown(tag)
    assert from_display(display(tag)) == tag & 0x7FFFFFFF


@given(st.text(st.characters(max_codepoint=0xFF), min_size=1, max_size=4))
def test_str_tags_are_latin_1_bytes_of_the_c_literal(text):
    assert tag_value(text) == int.from_bytes(text.encode("latin-1"), "big")


def test_latin_1_letters_and_high_bytes():
    assert tag_value("Pr\xe9f") == 0x5072E966
    assert display(tag_value("f\xe9rP")) == "0x66e97250"  # bytes P r \xe9 f in memory
    assert display(0xDEADBEEF) == "0x5eadbeef"  # bit 31 is the protected bit, stripped
    assert from_display("0xdeadbeef") == 0xDEADBEEF
    assert ntpool.tag(0x00C80041).display == "0x00c80041"


@pytest.mark.parametrize("bad, words", [("\u0100abc", "U\\+0100"), ("\u20ac", "not one byte"),
                                        ("", "1 to 4"), ("abcde", "1 to 4")])
def test_str_tags_beyond_latin_1_or_too_long_are_refused(bad, words):
    with pytest.raises(ntpool.TagError, match=words):
        tag_value(bad)


@settings(max_examples=60, deadline=None)
@given(ULONGS, st.sampled_from([NP, P]), st.sampled_from([40, 300, 5000]), WINDOWS)
def test_allocate_free_with_the_tag_and_the_tracker_row(tag, pool_type, size, windows):
    k = machine(windows)
    p = k.ExAllocatePoolWithTag(pool_type, size, tag)
    assert p
    row = {r.TagUlong: r for r in k.pool_tags()}[tag & 0x7FFFFFFF]
    allocs, used = ((row.NonPagedAllocs, row.NonPagedUsed) if pool_type == NP
                    else (row.PagedAllocs, row.PagedUsed))
    assert allocs == 1 and used >= size and row.Tag == shown(tag)
    if size < 0xFE0 and windows == 7:
        assert k.read(p - 12, 4) == tag.to_bytes(4, "little")  # the header's PoolTag, bit 31 kept
    k.ExFreePoolWithTag(p, tag)
    row = {r.TagUlong: r for r in k.pool_tags()}[tag & 0x7FFFFFFF]
    frees, used = ((row.NonPagedFrees, row.NonPagedUsed) if pool_type == NP
                   else (row.PagedFrees, row.PagedUsed))
    assert frees == 1 and used == 0


@given(ULONGS)
def test_ndis_and_fsrtl_take_any_ulong(tag):
    k = machine()
    status, va = k.NdisAllocateMemoryWithTag(64, tag)
    assert status == 0 and va
    k.NdisFreeMemoryWithTag(va, tag)
    p = k.FsRtlAllocatePoolWithTag(P, 64, tag)
    k.ExFreePoolWithTag(p, tag)
    assert {r.TagUlong for r in k.pool_tags()} >= {tag & 0x7FFFFFFF}


def test_a_protected_high_tag_must_be_freed_with_its_tag():
    k = machine()
    p = k.ExAllocatePoolWithTag(NP, 64, 0xDEADBEEF)  # bit 31 set: protected
    with pytest.raises(ntpool.BugCheck) as stop:
        k.ExFreePoolWithTag(p, 0xDEADBEEE)
    assert stop.value.code == 0xC2 and stop.value.parameters[:4] == (0x0A, p, 0x5EADBEEF, 0xDEADBEEE)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(ULONGS.filter(lambda t: t & 0x7FFFFFFF), min_size=1, max_size=4,
                unique_by=lambda t: t & 0x7FFFFFFF))
def test_dump_round_trip_and_the_debuggers_text(tmp_path, tags):
    k = machine()
    small = {tag: k.ExAllocatePoolWithTag(NP, 72, tag) for tag in tags}
    big = {tag: k.ExAllocatePoolWithTag(NP, 0x2000, tag) for tag in tags}
    path = tmp_path / "any.dmp"
    k.write_dump(path, "kernel")
    reader = DumpReader(path)
    keys = {e.Key: e for e in reader.tracker_entries()}
    session = KdSession(reader, PoolTagDatabase.default(environ={}))
    for tag in tags:
        entry = keys[tag & 0x7FFFFFFF]
        assert entry.NonPagedAllocs == 2
        text = shown(tag)
        assert f"*{small[tag] - 16:016x} size:" in (pool := session.execute(f"!pool {small[tag]:x}"))
        assert pool.split(f"*{small[tag] - 16:016x}")[1].splitlines()[0].rstrip().endswith(text)
        used = session.execute(f"!poolused 0 0x{tag:08x}").splitlines()
        assert [line.split()[0] for line in used[5:-1]] == [text]
        found = session.execute(f"!poolfind 0x{tag:x}")
        assert f"*{big[tag]:016x} :large page allocation, Tag is {text}," in found
        assert f"{small[tag] - 16:016x} size:" in found
        # A tag typed as its text: printable, no wildcard, no ";" (kd's command separator)
        if all(0x21 <= b <= 0x7E for b in (tag & 0x7FFFFFFF).to_bytes(4, "little")) and \
                not {"*", "?", ";"} & set(text):
            assert session.execute(f"!poolused 0 {text}").splitlines()[5].split()[0] == text


def test_the_compiled_driver_passes_high_tags(tmp_path):
    from ntpool.native import load_native_driver
    k = machine()
    with open(os.path.join(SOURCE_DIRECTORY, "any_tag.sys"), "rb") as handle:
        driver = load_native_driver(k, handle.read(), name="any_tag.sys")
    rows = {r.TagUlong: r for r in k.pool_tags()}
    assert rows[0x5EADBEEF].NonPagedAllocs == 1 and rows[0x5EADBEEF].Tag == "0x5eadbeef"
    latin = rows[0x66E97250]  # FsRtl's paged allocation, and NDIS's allocated and freed
    assert (latin.PagedAllocs, latin.NonPagedAllocs, latin.NonPagedFrees, latin.Tag) == (1, 1, 1, "0x66e97250")
    assert rows[0x00FF7F80].NonPagedUsed == 0x2000
    path = tmp_path / "native.dmp"
    k.write_dump(path, "kernel")
    session = KdSession(DumpReader(path), PoolTagDatabase.default(environ={}))
    assert "Tag is 0x00ff7f80, size is 0x2000 bytes" in session.execute("!poolfind 0x00ff7f80")
    assert "0x66e97250" in session.execute("!poolfind 0x66e97250 1")
    k.unload_driver(driver)
    rows = {r.TagUlong: r for r in k.pool_tags()}
    assert rows[0x5EADBEEF].NonPagedUsed == rows[0x66E97250].PagedUsed == rows[0x00FF7F80].NonPagedUsed == 0


class Verified:
    name = "verified.sys"

    def DriverEntry(self, k, path):
        return 0

    def allocate(self, k, tag):
        return k.ExAllocatePoolWithTag(NP, 64, tag)


def test_driver_verifier_still_refuses_a_tag_with_no_letter_or_digit():
    k = machine()
    driver = Verified()
    k.load_driver(driver)
    k.verifier.enable("verified.sys", pool_tracking=True)
    assert driver.allocate(k, "Pr\xe9f")  # a letter: served (any byte else)
    with pytest.raises(ntpool.BugCheck) as stop:
        driver.allocate(k, 0xDEADBEEF)  # no byte a letter or digit: Driver Verifier's 0x9D
    assert stop.value.code == 0xC2 and stop.value.parameters[:3] == (0x9D, 0xDEADBEEF, NP)


def test_poolmon_snapshot_and_pictures_show_high_tags_apart():
    from ntpool.tools.pictures import live_page_strips, pagemap_figure, save_figure
    from ntpool.tools.poolmon import Snapshot
    k = machine()
    for tag in (0xDEADBEEF, 0xFFFFFFFF, 0x00C80041, "f\xe9rP"):  # the last: bytes P r \xe9 f
        k.ExAllocatePoolWithTag(NP, 100, tag)
    snapshot = Snapshot.from_pool_tags(k.pool_tags())
    texts = {row.tag for row in snapshot.rows}
    assert {"0x5eadbeef", "0x7fffffff", "0x00c80041", "0x66e97250"} <= texts  # four rows, not one '....'
    again = Snapshot.from_json(snapshot.to_json())
    assert again.by_key() == snapshot.by_key()
    strips = live_page_strips(k, "nonpaged")
    shown_tags = {segment.tag for strip in strips for segment in strip.segments}
    assert {"0x5eadbeef", "0x66e97250"} <= shown_tags
    assert b"0x66e97250" in save_figure(pagemap_figure(strips), fmt="svg")


def test_ndis_free_memory_of_a_protected_tag_is_0xc2_0a():
    k = machine()
    status, va = k.NdisAllocateMemoryWithTag(48, 0xDEADBEEF)  # bit 31: protected
    assert status == 0
    with pytest.raises(ntpool.BugCheck) as stop:
        k.NdisFreeMemory(va, 48, 0)  # frees without a tag
    assert stop.value.code == 0xC2 and stop.value.parameters[:3] == (0x0A, va, 0x5EADBEEF)


def test_the_volatility3_plugin_spells_tags_as_kd_does():
    pytest.importorskip("volatility3")
    import importlib.util

    from ntpool.dump import isf
    path = os.path.join(isf.package_plugins_directory(), "ntpool", "tagscan.py")
    spec = importlib.util.spec_from_file_location("ntpool_tagscan_under_test", path)
    plugin = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plugin)
    for tag in (0xDEADBEEF, 0x66E97250, 0x00004162, 0x46726564):
        assert plugin._shown(tag) == display(tag)
        assert plugin._tag_bytes(display(tag)) == (tag & 0x7FFFFFFF).to_bytes(4, "little")


def test_kd_refuses_a_tag_string_beyond_ascii_and_names_the_0x_form(tmp_path):
    k = machine()
    k.write_dump(tmp_path / "d.dmp", "kernel")
    session = KdSession(DumpReader(tmp_path / "d.dmp"), PoolTagDatabase.default(environ={}))
    said = session.execute("!poolfind Pr\xe9f")  # the bytes P r \xe9 f: the ULONG 0x66e97250
    assert "'Pr\xe9f'" in said and "0x and its 8 hex digits; this one is 0x66e97250" in said


@pytest.mark.parametrize("windows", [7, 11])
def test_the_manifest_and_the_score_read_high_tags_as_kd_shows_them(tmp_path, windows):
    from ntpool.dump import truth
    from ntpool.forensics.score import score_files
    k = machine(windows)
    kept = [k.ExAllocatePoolWithTag(pool, size, tag) for tag in (0xDEADBEEF, "f\xe9rP", 0x00000141)
            for pool in (NP, P) for size in (64, 0x3000)]
    assert all(kept)
    path = k.write_dump(tmp_path / "MEMORY.DMP", "kernel", truth=tmp_path / "truth.json")
    document = truth.load(tmp_path / "truth.json")
    assert {"0x5eadbeef", "0x66e97250", "0x00000141"} <= {row[4] for row in document["chunks"]}
    with DumpReader(path) as reader:
        session = KdSession(reader, PoolTagDatabase.default(environ={}))
        text = "\n".join(session.execute(f"!poolfind {tag} {pool}") for tag in
                         ("0xdeadbeef", "0x66e97250", "0x141") for pool in (0, 1))
    (tmp_path / "poolfind.txt").write_text(text)
    result = score_files(tmp_path / "truth.json", [tmp_path / "poolfind.txt"])
    assert result["live allocations"]["recall"] == result["live allocations"]["precision"] == 1.0
    assert result["big allocations"]["recall"] == 1.0


def test_volatility3_finds_high_tags_with_ntpools_plugin(tmp_path):
    pytest.importorskip("volatility3")
    from ntpool.forensics.volatility import run_plugin
    k = machine()
    protected = [k.ExAllocatePoolWithTag(NP, 64 + 16 * i, 0xDEADBEEF) for i in range(3)]
    latin = [k.ExAllocatePoolWithTag(P, 100, "f\xe9rP") for _ in range(2)]
    path = k.write_dump(tmp_path / "high.dmp", "kernel")
    _, rows = run_plugin(path, "ntpool.tagscan", options={"tags": ["0x5eadbeef", "0x66e97250"]},
                         cache=tmp_path / "cache")
    with DumpReader(path) as reader:
        found = {}
        for tag, offset, _layer, _type, _size, _pool, state, is_protected in rows:
            if state == "Allocated":
                found.setdefault(tag, set()).add((offset, is_protected))
        assert {(reader.translate(p - 16), True) for p in protected} <= found["0x5eadbeef"]
        assert {(reader.translate(p - 16), False) for p in latin} <= found["0x66e97250"]


@pytest.mark.parametrize("text", ["'/M/", 'a"bc', "x\\yz", "'ok'"])
def test_a_tag_holding_a_quote_or_a_backslash_is_typed_as_it_is(tmp_path, text):
    """kd hands an extension its words as typed: a quote or a backslash in a tag is one of
    its characters, not shell quoting (hypothesis found '/M/ refused as unbalanced)."""
    k = machine()
    tag = int.from_bytes(text.encode("ascii"), "little")
    p = k.ExAllocatePoolWithTag(NP, 72, tag)
    path = tmp_path / "quoted.dmp"
    k.write_dump(path, "kernel")
    session = KdSession(DumpReader(path), PoolTagDatabase.default(environ={}))
    assert session.execute(f"!poolused 0 {text}").splitlines()[5].split()[0] == text
    assert f"{p - 16:016x} size:" in session.execute(f"!poolfind {text}")
