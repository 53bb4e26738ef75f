"""kd's answers to a tag that cannot be one, and the columns of !poolused and !vm."""

import re

import pytest

import ntpool
from ntpool.cli.main import main
from ntpool.debugger.pooltag import PoolTagDatabase
from ntpool.debugger.session import KdSession
from ntpool.dump import DumpReader

MiB = 1 << 20
NP = ntpool.PoolType.NonPagedPool
LATIN_TAG = "Pr\xe9f"  # as a compiled driver's C literal: the bytes in memory read 'f\xe9rP'


@pytest.fixture(scope="module")
def dump(tmp_path_factory):
    k = ntpool.Kernel(nonpaged_pool_bytes=4 * MiB, paged_pool_bytes=4 * MiB)
    for tag in ("Fred", LATIN_TAG, 0x01020304):
        k.ExAllocatePoolWithTag(NP, 100, tag)
    path = tmp_path_factory.mktemp("kd") / "tags.dmp"
    k.write_dump(path, "kernel")
    return path


@pytest.fixture
def session(dump):
    return KdSession(DumpReader(dump), PoolTagDatabase.default(environ={}))


@pytest.mark.parametrize("command", ["!poolused 0", "!poolfind"])
@pytest.mark.parametrize("tag, said", [
    ("€", "holds '€'"), ("toolong", "cannot match a tag"), ("ABCDE", "cannot match a tag"),
    ("f\xe9rP", "this one is 0x5072e966")])
def test_a_tag_that_cannot_be_one_is_one_line_naming_it(session, command, tag, said):
    out = session.execute(f"{command} {tag}")
    assert out.count("\n") == 0 and repr(tag) in out and said in out, out
    assert "TOTAL" not in out and "Searching" not in out


def test_a_byte_tag_is_found_by_its_hex_value_as_the_error_says(session):
    value = int(re.search(r"this one is (0x[0-9a-f]{8})", session.execute("!poolused 0 f\xe9rP"))[1], 16)
    assert value == int.from_bytes(b"f\xe9rP", "little") == ntpool.tag(LATIN_TAG).value
    rows = session.execute(f"!poolused 0 0x{value:08x}").splitlines()[5:-1]
    assert [row.split()[:3] for row in rows] == [[f"0x{value:08x}", "1", "128"]]
    assert "(Allocated)  0x5072e966" in session.execute(f"!poolfind 0x{value:08x}")
    # with wildcards the hex form is matched as tools show it (as poolmon's filters)
    assert session.execute("!poolused 0 0x5072*").splitlines()[5:-1] == rows


def test_poolfind_refuses_wildcards_in_a_hex_value_rather_than_search_another_tag(session):
    # '0x5072*' once searched for the tag 0x00005072 and listed nothing, without a word
    out = session.execute("!poolfind 0x5072*")
    assert out.count("\n") == 0 and "no wildcards" in out and "0x5072*" in out


def test_the_cli_says_it_in_one_line_and_goes_on(dump, capsys):
    assert main(["kd", "-z", str(dump), "-c", "!poolused 0 €; !poolused 0 derF"]) == 0
    out = capsys.readouterr().out
    assert "tag pattern '€' holds '€'" in out and re.search(r"^ derF +1 +128", out, re.M)


@pytest.mark.parametrize("flags", ["0", "1"])
def test_poolused_numbers_stay_under_their_headings_with_a_hex_tag(session, flags):
    lines = session.execute(f"!poolused {flags}").splitlines()
    heading = lines[3]
    rows = [line.split("\t")[0] for line in lines[5:]]
    assert {row.split()[0] for row in rows} == {"0x01020304", "0x5072e966", "derF", "TOTAL"}
    # every number of every row ends where its heading ends
    ends = [m.end() for m in re.finditer(r"\S+", heading)][1:]
    for row in rows:
        assert [m.end() for m in re.finditer(r"\S+", row)][1:] == ends, (heading, row)


def test_vm_columns_are_aligned_as_windbgs(session):
    lines = [line for line in session.execute("!vm").splitlines() if line.startswith("\t")]
    assert len(lines) == 7
    counts = [re.match(r"\t[A-Za-z ]+:( +)(\d+) \(", line) for line in lines]
    assert all(counts), lines
    # the page counts end in one column (28, as WinDbg's), the Kb in another
    assert {m.end(2) for m in counts} == {1 + 28}
    assert len({line.index(" Kb)") for line in lines}) == 1
    assert lines[0].startswith("\tPhysical Memory:") and "," not in "".join(lines)
    maximum = next(line for line in lines if "NonPagedPool Max:" in line)
    assert re.search(r" 1024 \( +4096 Kb\)$", maximum)  # 4 MiB of pool
