"""ntpool kd: !analyze -v, !pool, !poolval, !poolused, !poolfind on real dumps."""

import re
from types import SimpleNamespace

import pytest

import ntpool
from ntpool.tags import tag_value
from ntpool.cli.main import main
from ntpool.debugger.pooltag import PoolTagDatabase, PoolTagFile
from ntpool.debugger.session import KdSession
from ntpool.dump import DumpReader

MiB = 1 << 20
CHUNK_LINE = re.compile(r"^([* ])([0-9a-f]{16}) size: +([0-9a-f]+) previous size: +([0-9a-f]+) +"
                        r"\((Allocated|Free|Lookaside)\) +\*?(.{4})$")


def session_for(k, path, kind="kernel", pooltag_text=None):
    k.write_dump(path, kind)
    files = [PoolTagFile.parse(pooltag_text, "test")] if pooltag_text else []
    database = PoolTagDatabase(files + PoolTagDatabase.default(environ={}).files)
    return KdSession(DumpReader(path), database)


@pytest.fixture
def machine():
    k = ntpool.Kernel(nonpaged_pool_bytes=4 * MiB, paged_pool_bytes=4 * MiB)
    NP, P = ntpool.PoolType.NonPagedPool, ntpool.PoolType.PagedPool
    fred = [k.ExAllocatePoolWithTag(NP, 100, "Fred") for _ in range(3)]
    decoy = k.ExAllocatePoolWithTag(NP, 400, "Dcoy")
    # A tag-shaped string inside a body, exactly where a header's tag would sit.
    k.write(decoy + 16 + 4, b"derF")
    k.write(decoy + 64, b"derF" * 8)
    paged = k.ExAllocatePoolWithTag(P, 200, "Fred")
    big = k.ExAllocatePoolWithTag(NP, 5000, "Fred")
    return SimpleNamespace(k=k, fred=fred, decoy=decoy, paged=paged, big=big)


def test_poolfind_finds_real_headers_and_not_strings_in_bodies(machine, tmp_path):
    session = session_for(machine.k, tmp_path / "d.dmp")
    out = session.execute("!poolfind derF")
    found = [m for m in map(CHUNK_LINE.match, (" " + line for line in out.splitlines())) if m]
    # Free chunks keep the tag of their last owner, as in Windows; they are listed as Free.
    allocated = [int(m.group(2), 16) for m in found if m.group(5) == "Allocated"]
    assert sorted(allocated) == sorted(p - 16 for p in machine.fred)
    assert {m.group(5) for m in found} <= {"Allocated", "Free"}
    assert f"*{machine.big:016x} :large page allocation, Tag is derF, size is 0x2000 bytes" in out
    assert f"{machine.decoy + 16:016x}" not in out and f"{machine.decoy + 64:016x}" not in out
    paged = session.execute("!poolfind derF 1")
    assert f"{machine.paged - 16:016x} size:   e0" in paged
    assert f"{machine.fred[0] - 16:016x}" not in paged
    wildcard = session.execute("!poolfind d?r*")
    assert all(f"{p - 16:016x}" in wildcard for p in machine.fred)


def test_poolfind_reports_pages_whose_chain_is_corrupt(machine, tmp_path):
    machine.k.write(machine.fred[0] + 100, b"\x77" * 20)  # overrun the next header
    out = session_for(machine.k, tmp_path / "d.dmp").execute("!poolfind derF")
    assert f"{machine.fred[0] & ~0xFFF:016x} : the tag sits at a header position" in out


def test_pool_walks_the_page_and_marks_the_chunk(machine, tmp_path):
    session = session_for(machine.k, tmp_path / "d.dmp", "full")
    target = machine.fred[1]
    lines = session.execute(f"!pool {target + 5:x}").splitlines()
    assert lines[0] == f"Pool page {target + 5:016x} region is Nonpaged pool"
    chunks = [CHUNK_LINE.match(line) for line in lines if CHUNK_LINE.match(line)]
    marked = [m for m in chunks if m.group(1) == "*"]
    assert len(marked) == 1 and int(marked[0].group(2), 16) == target - 16
    assert marked[0].group(3) == "80" and marked[0].group(6) == "derF"
    assert sum(int(m.group(3), 16) for m in chunks) == 0x1000  # the whole page
    assert "Pooltag derF : ntpool - Examples and benchmarks" in "\n".join(lines)
    only = session.execute(f"!pool {target:x} 2")
    assert len([line for line in only.splitlines() if CHUNK_LINE.match(line)]) == 1
    assert "68 65 6c" not in only
    machine.k.write(target, b"hello")
    contents = session_for(machine.k, tmp_path / "e.dmp").execute(f"!pool {target:x} 1")
    assert "68 65 6c 6c 6f" in contents
    big = session.execute(f"!pool {machine.big + 0x1010:x}")
    assert f"*{machine.big:016x} : large page allocation, tag is derF, size is 0x2000 bytes" in big


def test_poolval_valid_and_corrupt(machine, tmp_path):
    page = machine.fred[0] & ~0xFFF
    assert f"Pool page [ {page:016x} ] is VALID." in \
        session_for(machine.k, tmp_path / "a.dmp").execute(f"!poolval {page:x}")
    machine.k.write(machine.fred[0] + 100, b"\x77" * 20)
    out = session_for(machine.k, tmp_path / "b.dmp").execute(f"!poolval {page:x}")
    assert "is __inVALID." in out and "PreviousSize 0x77" in out


def test_poolused_reads_the_dump_table_sorts_and_filters(machine, tmp_path):
    session = session_for(machine.k, tmp_path / "d.dmp", pooltag_text="Dcoy - decoy.sys - a decoy\n")
    out = session.execute("!poolused")
    rows = {line.split()[0]: line for line in out.splitlines()[5:]}
    assert rows["derF"].split()[1:5] == ["4", str(3 * 128 + 8192), "1", "224"]  # 3 small, 1 big
    assert rows["yocD"].split("\t")[1].startswith("UNKNOWN pooltag 'yocD'")
    assert "TOTAL" in rows
    sorted_np = session.execute("!poolused 2").splitlines()
    assert sorted_np[0].strip() == "Sorting by NonPaged Pool Usage"
    assert sorted_np[5].split()[0] == "derF"  # 8576 bytes beats 416
    filtered = session.execute("!poolused 0 yo*")
    assert "yocD" in filtered and "derF" not in filtered
    verbose = session.execute("!poolused 1 derF")
    assert verbose.splitlines()[5].split()[1:5] == ["4", "0", "4", str(3 * 128 + 8192)]


def test_poolused_uses_the_dump_not_the_machine(machine, tmp_path):
    session = session_for(machine.k, tmp_path / "d.dmp")
    machine.k.ExAllocatePoolWithTag(ntpool.PoolType.NonPagedPool, 100, "Late")
    assert "etaL" not in session.execute("!poolused")


def test_analyze_wrong_tag_free(machine, tmp_path):
    machine.k.current_driver = SimpleNamespace(name="buggy.sys")
    # Only a protected allocation's tag is compared on free (Windows 7): protect fred[1]'s.
    header = machine.fred[1] - 16
    machine.k.write(header + 4, (tag_value("Fred") | ntpool.PROTECTED_POOL).to_bytes(4, "little"))
    with pytest.raises(ntpool.BugCheck):
        machine.k.ExFreePoolWithTag(machine.fred[1], "Oops")
    out = session_for(machine.k, tmp_path / "d.dmp").execute("!analyze -v")
    assert "BAD_POOL_CALLER (c2)" in out
    assert "Arg1: 000000000000000a, Attempt to free pool with an incorrect tag" in out
    assert f"Arg2: {machine.fred[1]:016x}, Address of the pool being freed" in out
    assert "TAG_IN_ARG3: derF" in out and "TAG_IN_ARG4: spoO" in out
    assert f"POOL_CHUNK:  {machine.fred[1] - 16:016x} size 0x80 (Allocated)" in out
    assert "POOL_TAG_OWNER:  ntpool - Examples and benchmarks" in out
    header = machine.fred[1] - 16
    previous = header - machine.k.read(header, 1)[0] * 16
    assert f"PREVIOUS_CHUNK:  {previous:016x}" in out
    following = header + 0x80
    assert f"NEXT_CHUNK:  {following:016x}" in out or \
        (following & 0xFFF == 0 and "NEXT_CHUNK:  (none on this page)" in out)
    assert "DRIVER:  buggy.sys" in out and "Probably caused by : buggy.sys" in out


def test_analyze_overrun_names_the_overrunning_chunk(machine, tmp_path):
    machine.k.write(machine.fred[0] + 100, b"\x77" * 20)
    with pytest.raises(ntpool.BugCheck):
        machine.k.ExFreePoolWithTag(machine.fred[0], "Fred")
    out = session_for(machine.k, tmp_path / "d.dmp").execute("!analyze -v")
    assert "BAD_POOL_HEADER (19)" in out
    assert "A pool block header size is corrupt (the block was overrun)" in out
    assert f"POOL_CHUNK:  {machine.fred[0] - 16:016x}" in out and "POOL_TAG:  derF" in out
    assert "*** Bad pool header" in out and "DRIVER:  (not recorded)" in out


def test_analyze_on_a_live_dump_and_bad_commands(machine, tmp_path):
    session = session_for(machine.k, tmp_path / "d.dmp")
    assert "did not bug-check" in session.execute("!analyze -v")
    assert session.execute("!pool").startswith("Usage")
    assert "Couldn't resolve" in session.execute("!pool xyz")
    assert "No export nope" in session.execute("!nope")
    assert "is not a valid pool address" in session.execute("!pool fffff80000000000")
    assert "not searched" in session.execute("!poolfind derF 7")


def test_kd_command_line(machine, tmp_path, capsys):
    path = tmp_path / "d.dmp"
    machine.k.write_dump(path, "kernel")
    assert main(["kd", "-z", str(path), "-c", "!poolused 2; !poolfind derF"]) == 0
    out = capsys.readouterr().out
    assert "Sorting by NonPaged Pool Usage" in out and "Searching NonPagedPool" in out
    pooltag = tmp_path / "pooltag.txt"
    pooltag.write_text("derF - fred.sys - Fred's driver\n")
    assert main(["kd", "-z", str(path), "-c", "!poolused", "--pooltag", str(pooltag)]) == 0
    assert "fred.sys - Fred's driver" in capsys.readouterr().out


def test_kd_interactive_prompt(machine, tmp_path, monkeypatch, capsys):
    import io

    path = tmp_path / "d.dmp"
    machine.k.write_dump(path, "kernel")
    monkeypatch.setattr("sys.stdin", io.StringIO("!poolused\nq\n"))
    assert main(["kd", "-z", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.count("0: kd> ") == 2 and "derF" in out


@pytest.mark.parametrize("content, message", [
    (b"", "too short"),
    (b"PAGEDU64" + b"\0" * 0x3000, "machine type"),
    (b"MZ" + b"\0" * 0x3000, "not a crash dump"),
])
def test_kd_rejects_hostile_files_with_one_line(tmp_path, capsys, content, message):
    path = tmp_path / "bad.dmp"
    path.write_bytes(content)
    assert main(["kd", "-z", str(path), "-c", "!analyze -v"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_kd_truncated_dump(machine, tmp_path, capsys):
    path = tmp_path / "d.dmp"
    machine.k.write_dump(path, "full")
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    assert main(["kd", "-z", str(path), "-c", "!poolused"]) == 2
    assert "truncated" in capsys.readouterr().err
