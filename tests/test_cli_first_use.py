"""ntpool as its users meet it the first time, command by command from the README: what a
driver developer, a teacher and a forensics author each ran into, and what it does now."""

import re
import struct
from pathlib import Path

import pytest

import ntpool
from ntpool import PoolType
from ntpool.cli.main import main

UNWRITABLE = "/proc/ntpool-cannot-make-this.json"  # a folder no one, root included, writes to


@pytest.fixture(scope="module")
def small_dump(tmp_path_factory):
    """A kernel dump of a machine with a few tags, one owned by nothing in pooltag.txt."""
    path = tmp_path_factory.mktemp("dump") / "small.dmp"
    k = ntpool.Kernel(nonpaged_pool_bytes=1 << 20, paged_pool_bytes=1 << 20)
    for size, tag in ((100, "Fred"), (200, "Fred"), (64, "Zq9x")):
        k.ExAllocatePoolWithTag(PoolType.NonPagedPool, size, tag)
    k.ExAllocatePoolWithTag(PoolType.PagedPool, 48, "Pgd1")
    k.write_dump(str(path), kind="kernel")
    return str(path)


def _trailing_spaces(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.endswith(" ")]


def test_poolmon_written_to_a_file_has_no_line_ending_in_spaces(small_dump, capsys, monkeypatch):
    # The printed screen ended with a line of one space (the live view's footer, given " "),
    # and the totals rows were padded to the table's width.
    monkeypatch.delenv("COLUMNS", raising=False)
    assert main(["poolmon", small_dump, "--once", "--totals"]) == 0
    out = capsys.readouterr().out
    assert "Total" in out and "derF" in out
    assert _trailing_spaces(out) == []
    monkeypatch.setenv("COLUMNS", "60")  # a width asked for, still not a terminal
    assert main(["poolmon", small_dump, "--once", "--totals"]) == 0
    assert _trailing_spaces(capsys.readouterr().out) == []


def test_rich_tables_written_to_a_file_have_no_line_ending_in_spaces(tmp_path, capsys,
                                                                     monkeypatch):
    # rich centres a table's title by padding it on both sides ("Unreadable dumps   ").
    monkeypatch.delenv("COLUMNS", raising=False)
    junk = tmp_path / "junk.dmp"
    junk.write_bytes(b"not a dump" * 100)
    assert main(["triage", str(junk), "-j", "1"]) == 1
    out = capsys.readouterr().out
    assert "Unreadable dumps" in out
    assert _trailing_spaces(out) == []


def test_an_output_file_a_folder_refuses_is_refused_before_the_run(tmp_path, capsys):
    # /proc exists and is a folder, but takes no new file: the scenario ran to its end (and a
    # --truth failure was then reported as "--dump D: cannot write the dump").
    marker = tmp_path / "ran"
    scenario = tmp_path / "marker.py"
    scenario.write_text(f"import pathlib\nDRIVERS = []\n\ndef workload(k, rng):\n"
                        f"    pathlib.Path({str(marker)!r}).write_text('ran')\n")
    for arguments, option in (
            (["poolsnap", str(scenario), "-o", UNWRITABLE], "-o"),
            (["picture", "pagemap", str(scenario), "-o", UNWRITABLE[:-5] + ".svg"], "-o"),
            (["report", str(scenario), "-o", UNWRITABLE[:-5] + ".html"], "-o"),
            (["run", str(scenario), "--dump", str(tmp_path / "d.dmp"), "--truth", UNWRITABLE],
             "--truth"),
            (["demo", "--out", "/proc"], "--out")):
        assert main(arguments) == 2, arguments
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"ntpool: {option} /proc/"), err
        assert "cannot be written" in err, err
    assert not marker.exists()


def test_an_output_file_that_exists_is_left_as_it_was_by_the_check(tmp_path, capsys):
    from ntpool.cli.sources import check_output_file

    existing = tmp_path / "kept.json"
    existing.write_text("old")
    check_output_file("-o", str(existing))
    assert existing.read_text() == "old"
    fresh = tmp_path / "fresh.json"
    check_output_file("-o", str(fresh))
    assert not fresh.exists()  # the probe leaves nothing behind
    with pytest.raises(ValueError, match=re.escape(f"-o {tmp_path}: a directory")):
        check_output_file("-o", str(tmp_path))


def test_poolsnap_diff_of_a_tag_no_one_owns_ends_its_line_with_the_growth(tmp_path, capsys):
    import json

    def snapshot(path, allocs, size):
        path.write_text(json.dumps({"format": "ntpool-poolsnap", "version": 1, "label": "x",
                                    "source": "t", "tags": [{"tag": "Zq9x", "type": "Nonp",
                                                             "allocs": allocs, "frees": 0,
                                                             "bytes": size}]}))
        return str(path)

    before = snapshot(tmp_path / "before.json", 1, 64)
    after = snapshot(tmp_path / "after.json", 5, 320)
    assert main(["poolsnap", "--diff", before, after]) == 0
    out = capsys.readouterr().out
    assert "Zq9x" in out and out.splitlines()[-1].endswith("+256")
    assert _trailing_spaces(out) == []


def _kd(dump: str, commands: str, capsys) -> str:
    from ntpool.cli.kd import run_kd

    capsys.readouterr()
    assert run_kd(dump, commands, None) == 0
    return capsys.readouterr().out


@pytest.fixture(scope="module")
def unload_dumps(tmp_path_factory):
    """A 0xC4/0x62 (leak.sys unloads with two allocations) and a 0xD4 (lookaside_unload.sys
    leaves its list linked in its image), each as `ntpool run X.sys --dump D` writes it."""
    from ntpool.samples.compiled import sample_path

    folder = tmp_path_factory.mktemp("unload")
    leak, lookaside = str(folder / "leak.dmp"), str(folder / "lookaside.dmp")
    assert main(["run", sample_path("leak"), "--verifier", "pool_tracking", "--dump", leak]) == 3
    assert main(["run", sample_path("lookaside_unload"), "--dump", lookaside]) == 3
    return leak, lookaside


def test_r_and_k_give_a_compiled_driver_s_address_where_no_allocation_was_made(unload_dumps,
                                                                              capsys):
    # leak.sys's Unload allocates nothing, so its site is in no table of allocation sites:
    # `r` said rip=00000000`00000000 beside "leak.sys+0x1080 Unload+0x0".
    out = _kd(unload_dumps[0], "r; k; lm", capsys)
    base = re.search(r"^(\w{8}`\w{8}) \w{8}`\w{8}\s+leak\b", out, re.M).group(1)
    where = f"{int(base.replace('`', ''), 16) + 0x1080:016x}"
    assert f"rip={where[:8]}`{where[8:]} leak.sys+0x1080 Unload+0x0 (leak.c:6)" in out
    assert f"01 leak.sys+0x1080 Unload+0x0 (leak.c:6)  [{where[:8]}`{where[8:]}]" in out
    # Where nothing was recorded, no rip is made up.
    out = _kd(unload_dumps[1], "r", capsys)
    assert "rip=" not in out and "(not recorded)" in out


def test_lookaside_says_where_a_list_left_in_an_unloaded_image_breaks_the_chain(unload_dumps,
                                                                              capsys):
    # The 0xD4 is about that very list; !lookaside said "0 driver lookaside list(s)".
    out = _kd(unload_dumps[1], "!lookaside", capsys)
    broken = re.search(r"\*\*\* The list goes on to (fffff880`\w{8}), which is not in the dump "
                       r"\(the bug check blames lookaside_unload\.sys, which unloaded\)", out)
    assert broken, out
    assert "goes on to" not in _kd(unload_dumps[0], "!lookaside", capsys)  # an intact chain


def test_a_display_command_s_l_without_a_count_says_so(small_dump, capsys):
    out = _kd(small_dump, "db fffffa8000000000 L; dq fffffa8000000000 L?", capsys)
    assert out.count("expected L Count") == 2 and "'x'" not in out


def test_triage_names_its_swollen_rule_from_the_rule_itself(tmp_path, capsys, monkeypatch):
    # The title said "over {4}x": a hard-coded 4 beside SWOLLEN_FACTOR, and no word of the
    # 64 KiB floor. Numbers line up on the right.
    from ntpool.campaign import triage

    dumps = []
    for index, size in enumerate((1024, 1024, 200 << 10)):  # the third machine's Swol grew
        k = ntpool.Kernel(nonpaged_pool_bytes=2 << 20, paged_pool_bytes=1 << 20)
        k.ExAllocatePoolWithTag(PoolType.NonPagedPool, size, "lowS")
        dumps.append(str(tmp_path / f"m{index}.dmp"))
        k.write_dump(dumps[-1], kind="kernel")
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.setattr(triage, "SWOLLEN_FACTOR", 5)
    assert main(["triage", *dumps, "-j", "1"]) == 0
    out = capsys.readouterr().out
    assert "Swollen tags (over 5x their fleet median and at least 64 KiB)" in out
    swollen = out.split("Swollen tags")[1].splitlines()
    row = next(line for line in swollen if line.startswith("│ Swol "))
    assert re.search(r"│ Swol +│ +1 │ +20\d,\d{3} │ +1,\d{3} │$", row), row


def test_score_tags_given_twice_scores_both(tmp_path, capsys):
    # `--tags Fred --tags Bbbb` scored Bbbb alone: argparse kept the last, without a word.
    import json

    k = ntpool.Kernel(nonpaged_pool_bytes=1 << 20, paged_pool_bytes=1 << 20)
    fred = k.ExAllocatePoolWithTag(PoolType.NonPagedPool, 100, "derF")
    bbbb = k.ExAllocatePoolWithTag(PoolType.NonPagedPool, 100, "bbbB")
    truth, found = tmp_path / "t.json", tmp_path / "found.csv"
    k.write_dump(str(tmp_path / "t.dmp"), kind="kernel", truth=str(truth))
    found.write_text(f"address,tag\n{fred - 16:#x},Fred\n{bbbb - 16:#x},Bbbb\n")

    def live(*tags):
        capsys.readouterr()
        assert main(["score", str(truth), str(found), "--json", *tags]) == 0
        return json.loads(capsys.readouterr().out)["live allocations"]

    assert live("--tags", "Fred", "--tags", "Bbbb") == live("--tags", "Fred,Bbbb")
    assert live("--tags", "Fred", "--tags", "Bbbb")["truth"] == 2
    assert live("--tags", "Bbbb")["truth"] == 1


def test_poolmon_iterations_of_a_dump_print_its_one_moment_once(small_dump, capsys, monkeypatch):
    # A dump has no checkpoints: --iterations 3 printed the same table three times.
    monkeypatch.delenv("COLUMNS", raising=False)
    assert main(["poolmon", small_dump, "--iterations", "3"]) == 0
    out = capsys.readouterr().out
    assert out.count("Per Alloc") == 1 and not out.endswith("\n\n")


def test_poolmon_iterations_of_a_scenario_print_tables_apart(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    scenario = tmp_path / "steps.py"
    scenario.write_text("DRIVERS = []\n\ndef workload(k, rng):\n"
                        "    for n in range(3):\n"
                        "        k.ExAllocatePoolWithTag(0, 64, 'petS')\n"
                        "        yield f'step {n}'\n")
    assert main(["poolmon", str(scenario), "--iterations", "2"]) == 0
    out = capsys.readouterr().out
    tables = out.split("\n\n")
    assert len(tables) == 2 and all("Step" in table for table in tables), out
    assert "(1)" in tables[1]  # the second table's deltas


@pytest.mark.parametrize("spec", ["missing.dmp", "MEMORY.DMP", "crash"])
def test_a_missing_dump_is_not_called_a_missing_scenario(spec, tmp_path, capsys, monkeypatch):
    # poolmon, poolsnap, picture and report read dumps too: "scenario missing.dmp does not
    # exist (give a scenario .py file, ...)" named every kind of source but the one meant.
    monkeypatch.chdir(tmp_path)
    for arguments in (["poolmon", spec, "--once"], ["report", spec, "-o", "r.html"]):
        assert main(arguments) == 2
        err = capsys.readouterr().err
        assert err == (f"ntpool: {spec} does not exist (give a crash dump, a scenario .py file, "
                       f"a compiled driver .sys, or one of: demo, demo-python)\n")


def test_run_of_a_driver_that_stops_the_machine_in_driver_entry_says_so(capsys):
    # "drivers loaded: none" and "at the end of the workload (0 checkpoints)": as if the
    # driver had never been there, when its DriverEntry overran a chunk.
    from ntpool.samples.compiled import sample_path

    assert main(["run", sample_path("overrun")]) == 3
    out = capsys.readouterr().out
    assert "drivers loaded: none (overrun.sys bug-checked while loading, in its DriverEntry)" in out
    assert "Pool usage by tag when the machine stopped (0 checkpoints)" in out
    assert main(["run", sample_path("leak")]) == 1  # loads, unloads, leaks: no bug check
    out = capsys.readouterr().out
    assert "drivers loaded: leak.sys\n" in out
    assert "Pool usage by tag at the end of the workload (0 checkpoints)" in out


def test_a_file_that_is_no_driver_is_named_once_in_the_refusal(tmp_path, capsys):
    empty = tmp_path / "empty.sys"
    empty.write_bytes(b"")
    assert main(["run", str(empty)]) == 2
    assert capsys.readouterr().err == f"ntpool: {empty}: not a PE image (no MZ header)\n"


@pytest.mark.parametrize("content, why", [
    # A file of "MZ" alone was "no MZ header": it has one, and stops 62 bytes short.
    (b"MZ", "truncated: 2 byte(s), where the DOS header (IMAGE_DOS_HEADER, up to e_lfanew) "
            "alone needs 64"),
    (b"MZ" + bytes(60), "truncated: 62 byte(s), where the DOS header (IMAGE_DOS_HEADER, up to "
                        "e_lfanew) alone needs 64"),
    # pefile said "Invalid e_lfanew value, probably not a PE file" and "File Header missing".
    (b"MZ" + bytes(58) + (0x1000).to_bytes(4, "little"),
     "malformed PE image: e_lfanew 0x1000 puts the PE signature and file header at "
     "0x1000-0x1018, past the file's end (64 bytes): the file is truncated or e_lfanew is wrong"),
    (b"MZ" + bytes(58) + (0x40).to_bytes(4, "little") + b"PE\0\0" + bytes(10),
     "malformed PE image: e_lfanew 0x40 puts the PE signature and file header at 0x40-0x58, "
     "past the file's end (78 bytes): the file is truncated or e_lfanew is wrong"),
    (b"MZ" + bytes(58) + (0x40).to_bytes(4, "little") + b"NE\0\0" + bytes(40),
     "not a PE image (no PE signature at e_lfanew 0x40)"),
])
def test_a_file_that_stops_short_of_its_pe_headers_says_what_is_missing(tmp_path, capsys,
                                                                         content, why):
    path = tmp_path / "x.sys"
    path.write_bytes(content)
    assert main(["run", str(path)]) == 2
    assert capsys.readouterr().err == f"ntpool: {path}: {why}\n"


def _pe_headers(optional_size: int, magic: int = 0x20B, sections: int = 0) -> bytes:
    """The DOS header, the PE signature (at 0x40) and an x64 file header announcing an
    optional header of ``optional_size`` bytes, then the first two bytes of it (its magic)."""
    return (b"MZ" + bytes(58) + (0x40).to_bytes(4, "little") + b"PE\0\0"
            + struct.pack("<HHIIIHH", 0x8664, sections, 0, 0, 0, optional_size, 0x22)
            + struct.pack("<H", magic))


@pytest.mark.parametrize("content, why", [
    # pefile said "No Optional Header found, invalid PE32 or PE32+ file.", or read the
    # missing bytes as zeros and went on.
    (_pe_headers(240), "truncated: the optional header (SizeOfOptionalHeader 240 bytes) spans "
                       "0x58-0x148, past the file's end (90 bytes)"),
    (_pe_headers(240) + bytes(150), "truncated: the optional header (SizeOfOptionalHeader 240 "
                                    "bytes) spans 0x58-0x148, past the file's end (240 bytes)"),
    (_pe_headers(16) + bytes(14), "malformed PE image: SizeOfOptionalHeader 16 is smaller than "
                                  "a PE32+ optional header's 112 bytes before its data directories"),
    (_pe_headers(224, magic=0x10B) + bytes(222), "not a PE32+ image (optional header magic 0x10b)"),
    # pefile said "Data length less than expected header length."
    (_pe_headers(240, sections=3) + bytes(238 + 50),
     "truncated: the section table (3 section header(s) of 40 bytes) spans 0x148-0x1c0, past "
     "the file's end (378 bytes)"),
], ids=["optional-header-cut", "optional-header-cut-late", "optional-header-too-small", "pe32",
        "section-table-cut"])
def test_a_file_that_stops_short_of_its_optional_header_or_section_table_says_where(
        tmp_path, capsys, content, why):
    path = tmp_path / "x.sys"
    path.write_bytes(content)
    assert main(["run", str(path)]) == 2
    assert capsys.readouterr().err == f"ntpool: {path}: {why}\n"


def test_a_real_driver_cut_inside_its_optional_header_is_refused_in_ntpool_s_words(tmp_path):
    from ntpool.native.pe import BadImage, parse_image

    data = (Path(ntpool.__file__).parent / "samples" / "native" / "overrun.sys").read_bytes()
    e_lfanew = int.from_bytes(data[0x3C:0x40], "little")
    optional = e_lfanew + 24
    for cut in (optional, optional + 2, optional + 20, optional + 100):
        with pytest.raises(BadImage, match=rf"overrun\.sys: truncated: the optional header "
                                           rf"\(SizeOfOptionalHeader 240 bytes\) spans "
                                           rf"{optional:#x}-{optional + 240:#x}, past the "
                                           rf"file's end \({cut} bytes\)$"):
            parse_image(data[:cut], "overrun.sys")


def test_vm_on_windows_11_names_each_nonpaged_heap_and_charges_once(tmp_path, capsys):
    # Both nonpaged heaps were labelled NonPagedPool, and the tags' charge printed twice.
    k = ntpool.Kernel(windows="11", nonpaged_pool_bytes=2 << 20, paged_pool_bytes=2 << 20)
    k.ExAllocatePoolWithTag(PoolType.NonPagedPoolNx, 5000, "xNtT")
    k.ExAllocatePoolWithTag(PoolType.NonPagedPool, 5000, "xNtT")
    path = str(tmp_path / "eleven.dmp")
    k.write_dump(path, kind="kernel")
    lines = _kd(path, "!vm", capsys).splitlines()
    labels = [line.split(":")[0].strip() for line in lines if line.startswith("\t")]
    assert labels == ["Physical Memory", "NonPagedPool Usage", "NonPagedPool Max",
                      "NonPagedPoolNx Usage", "NonPagedPoolNx Max", "NonPagedPool Charged",
                      "PagedPool Usage", "PagedPool Max", "PagedPool Charged"]
    charged = next(line for line in lines if "NonPagedPool Charged" in line)
    assert re.search(r"Charged: +\d+ \( +\d+ Kb\) by the pool tags \(NonPagedPool and "
                     r"NonPagedPoolNx\)$", charged), charged


def test_a_report_of_a_dump_written_on_demand_names_it_once_and_no_workload(small_dump, tmp_path,
                                                                          capsys):
    # "dump small.dmp: small.dmp: crash dump" and "Pool usage by tag at the end of the
    # workload", of a dump that had no workload (a scenario's said "demo: demo:" too).
    out = tmp_path / "r.html"
    assert main(["report", small_dump, "-o", str(out)]) == 0
    text = out.read_text()
    assert "dump small.dmp: crash dump" in text and "small.dmp: small.dmp" not in text
    assert "Pool usage by tag when the dump was written" in text
    assert "workload" not in text
    # It said "nothing was left allocated" of a dump whose table holds allocations.
    assert "nothing was left allocated" not in text
    assert "none named: the dump records no bug check (written on demand)" in text


def test_corpus_out_that_is_a_file_is_named_as_the_option(tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("")
    assert main(["corpus", "--out", str(taken), "--count", "1", "-j", "1"]) == 2
    assert capsys.readouterr().err == (f"ntpool: --out {taken}: not a directory (the corpus "
                                       f"is a folder)\n")  # it said "File exists"


def test_the_page_map_keys_the_dark_grey_it_draws(tmp_path):
    # A segment heap's metadata pages and the rest of a page past a broken header chain are
    # drawn dark grey; the legend had no entry for it.
    from ntpool.tools.pictures import PageStrip, RESERVED, Segment, pagemap_figure, save_figure

    key = "no chunks (metadata) or past a broken header chain"
    plain = [PageStrip("NonPagedPool", 0xFFFFFA8000000000, (Segment(0, 4096, "Free"),))]
    svg = tmp_path / "plain.svg"
    save_figure(pagemap_figure(plain), str(svg))
    assert key not in svg.read_text()  # a key only for what is drawn
    grey = plain + [PageStrip("NonPagedPool", 0xFFFFFA8000001000, (Segment(0, 4096, RESERVED),))]
    save_figure(pagemap_figure(grey), str(svg))
    assert key in svg.read_text()


def test_analyze_reads_0xd6_s_fourth_argument_as_reserved(tmp_path, capsys):
    # Microsoft's page for 0xD6 (and 0xCD) lists Arg4 as Reserved; !analyze -v said "Number
    # of bytes allocated" beside a 0 for a 100-byte allocation.
    from ntpool.samples.compiled import sample_path

    dump = str(tmp_path / "special.dmp")
    assert main(["run", sample_path("overrun"), "--verifier", "special_pool", "--dump", dump]) == 3
    out = _kd(dump, "!analyze -v", capsys)
    assert "DRIVER_PAGE_FAULT_BEYOND_END_OF_ALLOCATION (d6)" in out
    assert "Arg4: 0000000000000000, Reserved\n" in out
    assert "Number of bytes allocated" not in out
    assert "POOL_CHUNK:  fffff98000002f90 size 0x64" in out  # the size, where it is known


def test_run_with_dump_that_ends_without_a_bug_check_says_no_dump_was_written(tmp_path, capsys):
    # `ntpool run any_tag.sys --dump D --truth F` ended 0 with neither file and no word.
    from ntpool.samples.compiled import sample_path

    dump, truth = tmp_path / "D.dmp", tmp_path / "F.json"
    assert main(["run", sample_path("any_tag"), "--dump", str(dump), "--truth", str(truth)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == (f"No bug check, so no dump: --dump {dump} is written when the "
                                    f"machine bug-checks (and --truth with it).")
    assert not dump.exists() and not truth.exists()


def test_the_readme_s_poolused_examples_for_a_tag_beyond_ascii(tmp_path, capsys):
    # The README gave 0x5072e966 and `0x5072*` for any_tag.sys's 'f\xe9rP', which is
    # 0x66E97250 (bytes P r \xe9 f): both found nothing on that driver's dump.
    k = ntpool.Kernel(nonpaged_pool_bytes=1 << 20, paged_pool_bytes=1 << 20)
    k.ExAllocatePoolWithTag(PoolType.PagedPool, 100, 0x66E97250)  # C's 'f\xe9rP'
    dump = str(tmp_path / "latin1.dmp")
    k.write_dump(dump, kind="kernel")
    out = _kd(dump, "!poolused 0 0x66e9*; !poolused 0 Préf; !poolused 0 ABCDE; !poolused 0 €",
              capsys)
    assert re.search(r"^ 0x66e97250 +0 +0 +1 +\d+\t", out, re.M), out
    assert "this one is 0x66e97250)" in out
    assert "tag pattern 'ABCDE' cannot match a tag" in out and "tag pattern '€' holds '€'" in out


def test_pool_and_poolval_of_a_paged_out_page_say_it_is_paged_out(tmp_path, capsys):
    # "its page is not in the dump" (!pool) and a bare memory read error (!poolval), for a
    # page whose PTE names its place in the page file.
    k = ntpool.Kernel(nonpaged_pool_bytes=1 << 20, paged_pool_bytes=1 << 20)
    p = k.ExAllocatePoolWithTag(PoolType.PagedPool, 100, "tuOP")
    k.page_out()
    dump = str(tmp_path / "paged.dmp")
    k.write_dump(dump, kind="kernel")
    out = _kd(dump, f"!pool {p:x}; !poolval {p:x}", capsys)
    said = re.findall(rf"{p:016x} is not a valid pool address \(its page is paged out, at "
                      rf"page-file offset 0x[0-9a-f]+, and a dump holds no page file: see "
                      rf"!pte {p:x}\)", out)
    assert len(said) == 2, out
    assert "Memory read error" not in out


def test_demo_refusing_its_steps_makes_no_out_folder(tmp_path, capsys):
    out = tmp_path / "new"
    assert main(["demo", "--steps", "0", "--out", str(out)]) == 2
    assert capsys.readouterr().err == "ntpool: --steps must be at least 1, got 0\n"
    assert not out.exists()  # it was made, empty, before the refusal


def test_analyze_of_a_tagless_heap_block_names_no_tag(tmp_path, capsys):
    # A double free on the segment heap names a free VS chunk, which keeps no POOL_HEADER:
    # !analyze -v said "POOL_TAG: 0x00000000" and "UNKNOWN pooltag '0x00000000'".
    from ntpool.errors import BugCheck

    dump = str(tmp_path / "double.dmp")
    k = ntpool.Kernel(windows="11", nonpaged_pool_bytes=2 << 20, paged_pool_bytes=2 << 20,
                      crash_dump=dump, crash_dump_kind="kernel")
    p = k.ExAllocatePoolWithTag(PoolType.NonPagedPool, 1000, "elbD")
    k.ExFreePoolWithTag(p, "elbD")
    with pytest.raises(BugCheck):
        k.ExFreePoolWithTag(p, "elbD")
    out = _kd(dump, "!analyze -v", capsys)
    assert "KERNEL_MODE_HEAP_CORRUPTION (13a)" in out and "(Free, Vs)" in out, out
    assert "POOL_TAG:  (none: the block has no pool header with a tag)" in out
    assert "0x00000000" not in out


def test_usage_picture_of_a_driver_shows_the_end_of_its_workload_and_its_unload(tmp_path):
    # A .sys has no checkpoints: the chart held the boot alone, "No pool memory was
    # outstanding at any checkpoint", for a driver that leaks.
    from ntpool.samples.compiled import sample_path

    svg = tmp_path / "usage.svg"
    assert main(["picture", "usage", sample_path("leak"), "-o", str(svg)]) == 0
    text = svg.read_text()
    assert "No pool memory was outstanding" not in text
    assert "Leak" in text


def test_lm_keeps_its_name_column_for_a_long_module_name(tmp_path, capsys):
    # "ndisminiport (ndisminiport.sys)" pushed its "(" two columns right of the others'.
    assert main(["demo", "--python-drivers", "--steps", "50", "--out", str(tmp_path)]) == 0
    lines = _kd(str(tmp_path / "MEMORY.DMP"), "lm", capsys).splitlines()
    modules = [line for line in lines if line.endswith(".sys)")]
    assert len(modules) == 3 and any("ndisminiport (ndisminiport.sys)" in m for m in modules)
    assert len({line.index("(") for line in modules}) == 1, modules


@pytest.mark.parametrize("width", [60, 40, 24])
def test_poolmon_s_heading_lines_stay_one_line_each_on_a_narrow_terminal(width):
    # Wrapped, the four heading lines took up to nine, and the table the view had counted its
    # rows for ran off the bottom of the screen.
    import io

    from rich.console import Console

    from ntpool.cli.poolmon_view import ViewState, poolmon_screen
    from ntpool.tools.poolmon import NONPAGED, PoolmonModel, Snapshot, TagUsage

    model = PoolmonModel()
    model.update(Snapshot([TagUsage(f"Ab{n:02d}", NONPAGED, 10 + n, 5, 1000 + n) for n in range(50)]))
    machine = {"memory": 64 << 20, "available": 60 << 20, "commit": 4 << 20, "peak": 5 << 20,
               "nonpaged": 1 << 20, "paged": 2 << 20, "page_faults": 7}
    console = Console(width=width, height=20, file=io.StringIO(), record=True)
    console.print(poolmon_screen(model, "a status line long enough to need more than one row",
                                 width=width, height=20, state=ViewState(), machine=machine))
    lines = console.export_text().splitlines()
    assert len(lines) <= 20 and all(len(line) <= width for line in lines), lines
    assert lines[0].startswith(" Memory:") and lines[4].startswith("Tag ")


def test_a_missing_pooltag_file_from_the_environment_says_where_it_came_from(small_dump, capsys,
                                                                            monkeypatch):
    # "pooltag file /old/pooltag.txt: No such file or directory", for a file the user never
    # named on this command line (a stale NTPOOL_POOLTAG).
    monkeypatch.setenv("NTPOOL_POOLTAG", "/no/such/pooltag.txt")
    assert main(["kd", "-z", small_dump, "-c", "q"]) == 2
    assert capsys.readouterr().err == ("ntpool: pooltag file /no/such/pooltag.txt (from "
                                       "NTPOOL_POOLTAG): No such file or directory\n")
    monkeypatch.delenv("NTPOOL_POOLTAG")
    assert main(["poolmon", small_dump, "--once", "--pooltag", "/no/such/file.txt"]) == 2
    assert capsys.readouterr().err == ("ntpool: pooltag file /no/such/file.txt: No such file "
                                       "or directory\n")


def test_a_scenario_s_own_sys_exit_is_an_error_in_it_not_the_command_s_status(tmp_path, capsys):
    # sys.exit(3) in a workload ended `ntpool run` with status 3, "the machine bug-checked",
    # and no word of why.
    scenario = tmp_path / "quits.py"
    scenario.write_text("import sys\nDRIVERS = []\n\ndef workload(k, rng):\n    sys.exit(3)\n")
    for arguments in (["run", str(scenario)], ["poolmon", str(scenario), "--once"]):
        assert main(arguments) == 2
        assert capsys.readouterr().err == (f"ntpool: {scenario}:5 in workload: SystemExit(3): a "
                                           f"scenario ends by returning, not by sys.exit\n")
    with pytest.raises(SystemExit) as usage:  # argparse's own exits are still theirs
        main(["run", str(scenario), "--bogus"])
    assert usage.value.code == 2


def test_dt_shows_the_tracker_and_big_page_entries_as_the_dump_s_windows_has_them(tmp_path,
                                                                                 capsys):
    # On a Windows 11 dump `dt` showed Windows 7's entries (32-bit counters, 0x18-byte big
    # page entry) while the dump holds 0x38-byte tracker entries and 0x20-byte big pages.
    k = ntpool.Kernel(windows="11", nonpaged_pool_bytes=2 << 20, paged_pool_bytes=2 << 20)
    big = k.ExAllocatePoolWithTag(PoolType.NonPagedPoolNx, 3 * 4096, "giBT")
    dump = str(tmp_path / "eleven.dmp")
    k.write_dump(dump, kind="kernel")
    out = _kd(dump, "dt _POOL_TRACKER_TABLE; dt _POOL_TRACKER_BIG_PAGES", capsys)
    assert "   +0x030 PagedFrees     : Uint8B" in out
    assert "   +0x00c PoolType      : Pos 8, 12 Bits" in out
    assert "   +0x018 ProcessBilled : Ptr64 Void" in out
    small = str(tmp_path / "seven.dmp")
    ntpool.Kernel(nonpaged_pool_bytes=1 << 20, paged_pool_bytes=1 << 20).write_dump(small, kind="kernel")
    out = _kd(small, "dt _POOL_TRACKER_TABLE; dt _POOL_TRACKER_BIG_PAGES", capsys)
    assert "   +0x020 PagedBytes     : Uint8B" in out and "+0x030" not in out
    assert "   +0x00c PoolType      : Uint4B" in out and "ProcessBilled" not in out
    assert big  # the big page entry the layout describes is in the dump


def test_score_given_the_dump_itself_as_results_says_so(small_dump, tmp_path, capsys):
    # It said "...: 'PAGEDU64\x0f\x00\x00\x00�' is not a 64-bit hex address" (the dump read as CSV).
    truth = tmp_path / "t.json"
    k = ntpool.Kernel(nonpaged_pool_bytes=1 << 20, paged_pool_bytes=1 << 20)
    k.write_dump(str(tmp_path / "t.dmp"), kind="kernel", truth=str(truth))
    assert main(["score", str(truth), small_dump]) == 2
    assert capsys.readouterr().err == (f"ntpool: {small_dump}: not a scanner's results: a binary "
                                       f"file (a crash dump: score what a scanner found in it)\n")
