"""ntpool kd as its users know it: scripts ending in q, the prompt (history, completion,
Ctrl-C), the display commands, !verifier 3, special pool and call sites."""

import io
import re
import struct

import pytest
from prompt_toolkit.document import Document
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput

import ntpool
from ntpool.cli.kd import KdCompleter, completion_words, run_kd
from ntpool.debugger.pooltag import PoolTagDatabase
from ntpool.debugger.session import KdSession
from ntpool.dump import DumpReader

MiB = 1 << 20
NP, P = ntpool.PoolType.NonPagedPool, ntpool.PoolType.PagedPool


class Leaky:
    name = "leaky.sys"

    def DriverEntry(self, k, path):
        self.kept = []
        for i in range(3):
            self.kept.append(k.ExAllocatePoolWithTag(NP, 40 + 16 * i, "LkNp"))
        self.paged = k.ExAllocatePoolWithTag(P, 200, "LkPg")
        return 0

    def DriverUnload(self, k):
        k.ExFreePoolWithTag(self.kept[0], "LkNp")  # the other two and the paged one leak


class Special:
    name = "special.sys"

    def DriverEntry(self, k, path):
        return 0

    def allocate(self, k, size, tag="SpPl"):
        return k.ExAllocatePoolWithTag(NP, size, tag)

    def free(self, k, p, tag="SpPl"):
        k.ExFreePoolWithTag(p, tag)

    def touch(self, k, va, data=b"!"):
        k.write(va, data)

    def look(self, k, va):
        return k.read(va, 1)


def crash(k, action):
    with pytest.raises(ntpool.BugCheck) as stop:
        action()
    return stop.value


def session_of(k, tmp_path, name="d.dmp") -> KdSession:
    path = tmp_path / name
    k.write_dump(path, "kernel")
    return KdSession(DumpReader(path), PoolTagDatabase.default(environ={}))


@pytest.fixture
def leak(tmp_path):
    k = ntpool.Kernel(nonpaged_pool_bytes=4 * MiB, paged_pool_bytes=4 * MiB)
    k.verifier.enable("leaky.sys", pool_tracking=True)
    driver = Leaky()
    k.load_driver(driver)
    crash(k, lambda: k.unload_driver(driver))
    path = tmp_path / "leak.dmp"
    k.write_dump(path, "kernel")
    return k, driver, path, KdSession(DumpReader(path), PoolTagDatabase.default(environ={}))


def special_machine(underruns=False):
    k = ntpool.Kernel(nonpaged_pool_bytes=4 * MiB, paged_pool_bytes=4 * MiB)
    k.verifier.enable("special.sys", special_pool=True, special_pool_underruns=underruns)
    driver = Special()
    k.load_driver(driver)
    return k, driver


# --- scripts and the prompt ----------------------------------------------------------------

def test_q_ends_a_script(leak):
    *_, path, _session = leak
    out = io.StringIO()
    assert run_kd(str(path), "lm; q; .bugcheck", None, stdout=out) == 0
    text = out.getvalue()
    assert "leaky" in text and "Bugcheck code" not in text


def test_the_prompt_keeps_history_cancels_on_ctrl_c_and_quits(leak, tmp_path, monkeypatch):
    *_, path, _session = leak
    history = tmp_path / "history"
    monkeypatch.setenv("NTPOOL_KD_HISTORY", str(history))
    out = io.StringIO()
    with create_pipe_input() as keys:
        keys.send_text("lm\r")
        keys.send_text(".bugcheck half typed\x03")  # Ctrl-C: the line is dropped
        keys.send_text(".bugcheck\r")
        keys.send_text("q\r")
        assert run_kd(str(path), None, None, stdout=out, prompt_input=keys,
                      prompt_output=DummyOutput()) == 0
    text = out.getvalue()
    assert text.count("Bugcheck code 000000C4") == 1
    assert "half typed" not in text
    saved = history.read_text()
    assert "+lm" in saved and "+.bugcheck" in saved and "half typed" not in saved


def test_ctrl_d_quits_the_prompt(leak):
    *_, path, _session = leak
    with create_pipe_input() as keys:
        keys.send_text("\x04")
        assert run_kd(str(path), None, None, stdout=io.StringIO(), prompt_input=keys,
                      prompt_output=DummyOutput()) == 0


def test_without_a_terminal_lines_are_read_plainly_and_ctrl_c_cancels(leak):
    *_, path, _session = leak

    class Keyboard:
        lines = iter([KeyboardInterrupt, "lm\n", "q\n"])

        def readline(self):
            line = next(self.lines)
            if line is KeyboardInterrupt:
                raise KeyboardInterrupt
            return line

    out = io.StringIO()
    assert run_kd(str(path), None, None, stdin=Keyboard(), stdout=out) == 0
    assert "^C" in out.getvalue() and "leaky" in out.getvalue()


def test_completion_of_commands_tags_structures_modules_and_addresses(leak):
    k, _driver, _path, session = leak
    assert "!poolfind" in completion_words(session, "!poolf")
    assert "pNkL" in completion_words(session, "!poolfind ")  # the tag as tools show it
    assert "_POOL_HEADER" in completion_words(session, "dt ")
    assert "leaky.sys" in completion_words(session, "!verifier 3 ")
    name_va = k.bugcheck.parameters[1]
    assert f"{name_va:x}" in completion_words(session, "db ")
    completer = KdCompleter(session)
    offered = [c.text for c in completer.get_completions(Document("!poolfind pN"), None)]
    assert offered == ["pNkL"]
    assert [c.text for c in completer.get_completions(Document("dt _POOL_H"), None)] == \
        ["_POOL_HEADER"]
    # A command's name completes with the space its arguments follow ("!poolfindSl*" was
    # what Tab then typing gave).
    assert [c.text for c in completer.get_completions(Document("!poolf"), None)] == ["!poolfind "]
    assert [c.text for c in completer.get_completions(Document(""), None)][0].endswith(" ")


# --- display commands ------------------------------------------------------------------------

def test_db_dw_dd_dq_with_l_counts(tmp_path):
    k = ntpool.Kernel(nonpaged_pool_bytes=4 * MiB, paged_pool_bytes=4 * MiB)
    p = k.ExAllocatePoolWithTag(NP, 64, "Disp")
    k.write(p, bytes(range(0x41, 0x41 + 32)))
    session = session_of(k, tmp_path)
    db = session.execute(f"db {p:x} L20").splitlines()
    assert len(db) == 2
    assert db[0] == (f"{p >> 32:08x}`{p & 0xFFFFFFFF:08x}  41 42 43 44 45 46 47 48-"
                     f"49 4a 4b 4c 4d 4e 4f 50  ABCDEFGHIJKLMNOP")
    assert len(session.execute(f"db {p:x}").splitlines()) == 8  # kd's default: 0x80 bytes
    assert session.execute(f"dd {p:x} L1").endswith("  44434241")
    assert session.execute(f"dw {p:x} L 2").endswith("  4241 4443")
    dq = session.execute(f"dq {p:x} l0n3").splitlines()
    assert len(dq) == 2 and dq[0].endswith("48474645`44434241 504f4e4d`4c4b4a49")
    assert "????????`????????" in session.execute("dq 1000 L1")
    assert "Syntax error" in session.execute(f"db {p:x} 20")


def test_dps_names_what_pointers_point_at(leak, tmp_path):
    k, _driver, _path, _session = leak
    base = k.call_sites.drivers[1].image_base
    scratch = k.kernel_data.reserve(16)
    from ntpool.dump.layout import poke
    poke(k, scratch, struct.pack("<QQ", base + 0x123, 0))
    session = session_of(k, tmp_path, "again.dmp")
    lines = session.execute(f"dps {scratch:x} L2").splitlines()
    assert lines[0].endswith("leaky+0x123") and len(lines) == 2


def test_dt_pool_header_shows_the_fields_of_the_header(leak):
    k, driver, _path, session = leak
    header = driver.kept[1] - 16
    text = session.execute(f"dt _POOL_HEADER {header:x}")
    raw = k.read(header, 16)
    assert f"BlockSize               : 0y{raw[2]:08b} ({raw[2]:#x})" in text
    assert f"PoolType                : 0y{raw[3]:08b}" in text
    assert "PoolTag                 : 0x4c6b4e70 'pNkL'" in text  # as memory holds it
    site = int.from_bytes(raw[8:10], "little")
    assert f"AllocatorBackTraceIndex : {site}" in text
    layout = session.execute("dt nt!_POOL_HEADER")
    assert "+0x000 BlockSize               : Pos 16, 8 Bits" in layout
    for name in ("_POOL_TRACKER_BIG_PAGES", "_LIST_ENTRY", "_KLDR_DATA_TABLE_ENTRY"):
        assert "+0x000" in session.execute(f"dt {name}")
    assert "not found" in session.execute("dt _NO_SUCH_TYPE")


def test_dt_kldr_entry_reads_the_module_name(leak):
    k, *_rest, session = leak
    entry = k.call_sites.drivers[1].entry_va if hasattr(k.call_sites.drivers[1], "entry_va") else None
    head = session.reader.debugger_data()["PsLoadedModuleList"]
    first = session.reader.read_u64(head)
    text = session.execute(f"dt _KLDR_DATA_TABLE_ENTRY {first:x}")
    assert 'BaseDllName      : "leaky.sys"' in text
    del entry


def test_pte_walks_the_dumps_page_tables(leak):
    k, driver, _path, session = leak
    va = driver.kept[1]
    lines = session.execute(f"!pte {va:x}").splitlines()
    assert lines[1].startswith("PXE at FFFFF6FB7DBED") and "PTE at FFFFF6" in lines[1]
    pfn = session.reader.translate(va) >> 12
    assert f"pfn {pfn:x}" in lines[3]
    assert re.search(r"pfn \w+ +---DA--KWEV", lines[3])  # Windows 7 nonpaged pool: executable data
    assert "not valid" in session.execute("!pte 10000")


def test_lm_k_r_and_bugcheck(leak):
    k, _driver, _path, session = leak
    base = k.call_sites.drivers[1].image_base
    assert re.search(rf"{base >> 32:08x}`{base & 0xFFFFFFFF:08x} \S+ +leaky +\(leaky.sys\)",
                     session.execute("lm"))
    stack = session.execute("k")
    assert "nt!KeBugCheckEx" in stack and "leaky.sys!Leaky.DriverUnload (test_kd_commands.py:" in stack
    assert "leaky.sys!Leaky.DriverUnload" in session.execute("r")
    assert session.execute(".bugcheck").splitlines()[0] == "Bugcheck code 000000C4"


def test_vm_and_evaluate_and_help(leak):
    *_, session = leak
    vm = session.execute("!vm")
    assert "NonPagedPool Max:" in vm and " 1024 (" in vm  # 4 MiB of pool: 1024 pages
    assert session.execute("? 10+0n16*2") == "Evaluate expression: 48 = 00000000`00000030"
    assert session.execute("?0x20-1") == "Evaluate expression: 31 = 00000000`0000001f"
    help_text = session.execute(".help")
    assert help_text == session.execute("?")
    for command in ("!verifier", "!pte", "!vm", "db", "dps", "dt", "lm", ".bugcheck", "k / r"):
        assert command in help_text


# --- !verifier 3 and !analyze for leaks -------------------------------------------------------

def test_verifier_3_lists_outstanding_allocations_with_call_sites(leak):
    _k, driver, _path, session = leak
    text = session.execute("!verifier 3 leaky.sys")
    assert "Current Pool Allocations         3" in text
    for p in driver.kept[1:] + [driver.paged]:
        assert f"{p >> 32:08x}`{p & 0xFFFFFFFF:08x}" in text
    assert text.count("leaky.sys!Leaky.DriverEntry (") == 3
    freed = driver.kept[0]
    assert f"{freed >> 32:08x}`{freed & 0xFFFFFFFF:08x}" not in text  # freed before the unload
    assert "not loaded" in session.execute("!verifier 3 other.sys")


def test_analyze_for_a_leak_names_the_driver_and_lists_what_it_left(leak):
    *_, session = leak
    text = session.execute("!analyze -v")
    assert "DRIVER:  leaky.sys" in text and "(not recorded)" not in text
    assert "scenario.py" not in text and "<lambda>" not in text
    assert "Probably caused by : leaky.sys ( Leaky.DriverUnload (test_kd_commands.py:" in text
    rows = re.findall(r"0x\s*([0-9a-f]+)\s+(pNkL|gPkL)\s+\S+\s+leaky.sys!Leaky.DriverEntry "
                      r"\(\S+:(\d+)\)", text)
    assert len(rows) == 3
    total = sum(int(size, 16) for size, _, _ in rows)
    assert f"Current Pool Bytes        {total:8d}" in text


# --- special pool -------------------------------------------------------------------------

def test_pool_and_poolfind_see_special_pool(tmp_path):
    k, driver = special_machine()
    p = driver.allocate(k, 40)
    session = session_of(k, tmp_path)
    text = session.execute(f"!pool {p:x}")
    assert "region is Special pool" in text
    assert f"*{p:016x} size:   28" in text and "(NonPaged) *lPpS" in text
    assert "Allocated by special.sys!Special.allocate" in text
    assert "overrun-checking" in text
    found = session.execute("!poolfind lPpS")
    assert f"*{p:016x} :special pool allocation, Tag is lPpS, size is 0x28 bytes" in found


def test_analyze_names_the_special_pool_allocation_overrun(tmp_path):
    k, driver = special_machine()
    p = driver.allocate(k, 40)
    check = crash(k, lambda: driver.touch(k, p + 48))  # 8 bytes past the page: the guard page
    assert check.code in (0xCD, 0xD6)  # 0xD6 when a driver made the access
    text = session_of(k, tmp_path).execute("!analyze -v")
    assert f"POOL_ADDRESS:  {p + 48:016x} Special pool" in text
    assert f"POOL_CHUNK:  {p:016x} size 0x28 (special pool, overrun-checking)" in text
    assert "POOL_TAG:  lPpS" in text and "ALLOCATED_BY:  special.sys!Special.allocate" in text
    assert "is on the guard page past the end of the allocation" in text


def test_analyze_names_use_after_free_in_special_pool(tmp_path):
    k, driver = special_machine()
    p = driver.allocate(k, 40)
    driver.free(k, p)
    check = crash(k, lambda: driver.look(k, p))
    assert check.code in (0xCC, 0xD5)
    text = session_of(k, tmp_path).execute("!analyze -v")
    assert f"POOL_ADDRESS:  {p:016x} Special pool" in text
    assert "a freed special pool allocation" in text


def test_analyze_names_special_pool_corruption_found_at_free(tmp_path):
    k, driver = special_machine(underruns=False)
    p = driver.allocate(k, 40)  # 40 bytes: 8 bytes of slack before the page's end
    driver.touch(k, p + 41)
    check = crash(k, lambda: driver.free(k, p))
    assert check.code == 0xC1
    text = session_of(k, tmp_path).execute("!analyze -v")
    assert f"POOL_CHUNK:  {p:016x} size 0x28 (special pool, overrun-checking)" in text


# --- call sites in !pool and !poolfind -------------------------------------------------------

def test_pool_and_poolfind_show_the_call_site(leak):
    _k, driver, _path, session = leak
    text = session.execute(f"!pool {driver.kept[1]:x}")
    assert "Allocated by leaky.sys!Leaky.DriverEntry (" in text
    found = session.execute("!poolfind pNkL").splitlines()
    for p in driver.kept[1:]:
        index = next(i for i, line in enumerate(found) if line.startswith(f"{p - 16:016x}"))
        assert found[index + 1].strip().startswith("Allocated by leaky.sys!Leaky.DriverEntry")


def test_poolfind_names_corrupt_pages_and_carries_on(tmp_path):
    k = ntpool.Kernel(nonpaged_pool_bytes=4 * MiB, paged_pool_bytes=4 * MiB)
    first = [k.ExAllocatePoolWithTag(NP, 100, "Fred") for _ in range(3)]
    while True:  # fill the page so the next allocations are on another one
        p = k.ExAllocatePoolWithTag(NP, 100, "Fred")
        if p & ~0xFFF != first[0] & ~0xFFF:
            break
    k.write(first[0] + 100, b"\x77" * 20)  # the first page's chain is now broken
    out = session_of(k, tmp_path).execute("!poolfind derF")
    assert f"{first[0] & ~0xFFF:016x} : the tag sits at a header position" in out
    assert f"{p - 16:016x} size:" in out  # the search went on past the corrupt page


def test_verifier_3_without_pool_tracking_reads_the_headers(tmp_path):
    k = ntpool.Kernel(nonpaged_pool_bytes=4 * MiB, paged_pool_bytes=4 * MiB)
    driver = Leaky()
    k.load_driver(driver)  # no verifier: the dump has no tracking list
    text = session_of(k, tmp_path).execute("!verifier 3 leaky.sys")
    assert "from the pool headers" in text
    for p in driver.kept + [driver.paged]:
        assert f"{p >> 32:08x}`{p & 0xFFFFFFFF:08x}" in text
    assert "Current Pool Allocations         4" in text
