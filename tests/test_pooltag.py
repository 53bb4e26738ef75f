"""pooltag.txt parsing and owner lookup."""

from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from ntpool.debugger.pooltag import ENVIRONMENT_VARIABLE, PoolTagDatabase, PoolTagFile, parse_line, \
    tag_matches

REAL_FILE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "pooltag-2003.txt"


@pytest.fixture
def real():
    if not REAL_FILE.exists():
        pytest.skip(f"{REAL_FILE} is not here")
    return PoolTagFile.load(REAL_FILE)


def test_real_file_every_entry_line_parses(real):
    lines = REAL_FILE.read_text(encoding="latin-1").splitlines()
    entries = [line for line in lines if line.strip() and not line.lower().startswith("rem") and " - " in line]
    assert sum(parse_line(line) is not None for line in entries) == len(entries)
    assert len(real.exact) + len(real.patterns) > 1700


def test_real_file_lookups(real):
    assert str(real.lookup("8042")) == "i8042prt.sys - PS/2 kb and mouse"
    assert real.lookup("AfdA").binary == "afd.sys"
    assert real.lookup("Acp1").description == "ACPI Pooltags"  # 'Acp*'
    assert real.lookup("Afd9").description == "AFD objects"  # 'Afd?'
    assert real.lookup("Dh 3").description == "DirectDraw/3D Direct3D context object"  # space inside
    assert real.lookup("Afp").description == "SFM File server"  # short tag, space-padded
    assert real.lookup("CMAl").description.startswith("internal registry")  # "-internal"
    assert real.lookup("Gh 5").binary == "win32k.sys"  # the most specific wildcard wins
    assert real.lookup("Zq9!") is None


def test_format_variants():
    text = "\n".join([
        "rem a comment",
        "Rem another",
        "Abcd - drv.sys - A driver",
        "Nobi - description without a binary field",
        "Ab*  - ab.sys - wildcard",
        "Ab?d - abd.sys - more specific",
        "Abcd - other.sys - a later duplicate is ignored",
        "       <unknown>",
    ])
    tags = PoolTagFile.parse(text)
    assert str(tags.lookup("Abcd")) == "drv.sys - A driver"
    assert tags.lookup("Nobi").binary == "" and tags.lookup("Nobi").description.startswith("description")
    assert tags.lookup("Abxd").binary == "abd.sys"
    assert tags.lookup("Abzz").binary == "ab.sys"
    assert tags.lookup("Ab").binary == "ab.sys"
    assert tags.lookup("rem ") is None


def test_sources_in_order(tmp_path):
    mine = tmp_path / "mine.txt"
    mine.write_text("None - mine.sys - overrides ntpool's entry\n")
    env = tmp_path / "env.txt"
    env.write_text("None - env.sys - from the environment\nEnvo - env.sys - only here\n")
    database = PoolTagDatabase.default(mine, environ={ENVIRONMENT_VARIABLE: str(env)})
    assert database.lookup("None").binary == "mine.sys"
    assert database.lookup("Envo").binary == "env.sys"
    assert database.lookup("NDam").binary == "ntpool!Ndis"
    assert PoolTagDatabase.default(environ={}).lookup("FSrt").binary == "ntpool!FsRtl"
    assert PoolTagDatabase.default(environ={}).describe("Qq9z") == \
        "UNKNOWN pooltag 'Qq9z', please update pooltag.txt"
    with pytest.raises(OSError, match="pooltag file"):
        PoolTagDatabase.default(tmp_path / "missing.txt", environ={})


@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=4, max_size=4))
def test_wildcards_agree_with_their_meaning(tag):
    assert tag_matches("*", tag)
    assert tag_matches("????", tag)
    assert tag_matches(tag[:2] + "*", tag)
    assert tag_matches(tag[0] + "?" + tag[2:], tag)
    assert tag_matches(tag, tag)
    assert not tag_matches(tag[:3] + chr(0x7F), tag)


@given(st.text(max_size=200))
def test_any_line_parses_or_is_ignored(line):
    owner = parse_line(line)
    assert owner is None or 1 <= len(owner.tag) <= 4
