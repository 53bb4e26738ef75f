"""``ntpool demo``: the drivers, the leak, the FsRtl failures handled, the crash, the analysis.

By default the drivers are the compiled samples (their own machine code, lines from their
PDBs); ``--python-drivers`` tells the same story with the Python samples."""

import os
import re

import pytest

from ntpool.cli.main import main
from ntpool.native.build import SOURCE_DIRECTORY
from ntpool.tools.scenario import ScenarioRun, load_scenario


def run_demo(tmp_path, capsys, *extra):
    assert main(["demo", "--steps", "400", "--out", str(tmp_path), *extra]) == 0
    return capsys.readouterr().out


def source_line(name: str, marker: str) -> int:
    """The line of samples/native/NAME.c that holds ``marker``."""
    with open(os.path.join(SOURCE_DIRECTORY, name + ".c")) as handle:
        for number, text in enumerate(handle, 1):
            if marker in text:
                return number
    raise AssertionError(f"{marker!r} is not in {name}.c")


def assert_the_common_story(out, tmp_path):
    for driver in ("ndisminiport.sys", "fsfilter.sys", "sloppy.sys"):
        assert driver in out
    assert re.search(r"Tag SlRq \(sloppy\.sys.*\) grew by \d+ allocations", out)
    flat = " ".join(out.split())  # the console wraps long lines
    assert re.search(r"FsRtlAllocatePoolWithTag raised STATUS_INSUFFICIENT_RESOURCES [\d,]+ times", flat)
    assert "*** STOP: 0x00000019 (0x20," in out and "BAD_POOL_HEADER" in out
    # The demo machine delays pool frees (1 GiB); the overrun is still found at the free.
    assert "Found by ExFreePoolWithTag's check of the next chunk's header" in flat
    assert "delayed pool frees are on" in flat
    assert (tmp_path / "MEMORY.DMP").read_bytes()[:8] == b"PAGEDU64"
    # The analysis is the debugger's, from the dump alone.
    assert "POOL_TAG:  SlNm" in out
    assert "POOL_TAG_OWNER:  sloppy.sys - sloppy sample driver name buffers" in out
    assert re.search(r"\*fffffa80[0-9a-f]+ size:\s+40 previous size:\s+[0-9a-f]+\s+\(Allocated\) \*SlNm", out)
    assert "DRIVER:  sloppy.sys" in out
    return flat


def test_demo_runs_the_compiled_drivers_and_names_their_lines(tmp_path, capsys):
    out = run_demo(tmp_path, capsys)
    flat = assert_the_common_story(out, tmp_path)
    assert "The drivers are compiled C" in flat
    assert "fsfilter.sys caught it in its compiled __try/__except" in flat
    # The allocating line and the faulting line (the free that found the overrun), from the PDB.
    allocated = source_line("sloppy", "buffer = ExAllocatePoolWithTag(NonPagedPool, Length, NAME_TAG)")
    freed = source_line("sloppy", "ExFreePoolWithTag(buffer, NAME_TAG);")
    assert re.search(rf"ALLOCATED_BY:  sloppy\.sys\+0x[0-9a-f]+ HandleRequest\+0x[0-9a-f]+ \(.*sloppy\.c:{allocated}\)", out)
    assert re.search(rf"Probably caused by : sloppy\.sys \( sloppy\.sys\+0x[0-9a-f]+ HandleRequest\+0x[0-9a-f]+ "
                     rf"\(sloppy\.c:{freed}\) \)", out)


def test_demo_with_python_drivers_tells_the_same_story(tmp_path, capsys):
    out = run_demo(tmp_path, capsys, "--python-drivers")
    flat = assert_the_common_story(out, tmp_path)
    assert "compiled" not in flat
    assert "fsfilter.sys caught it and failed those opens" in flat
    assert re.search(r"Probably caused by : sloppy\.sys .*SloppyDriver\.handle_request .*sloppy\.py:\d+", out)


def test_demo_is_deterministic_for_a_seed(tmp_path, capsys):
    def stable(text):
        return re.sub(r"\d:\d\d:\d\d", "", text)  # the progress display's elapsed time

    first = stable(run_demo(tmp_path, capsys, "--seed", "5"))
    assert stable(run_demo(tmp_path, capsys, "--seed", "5")) == first
    assert stable(run_demo(tmp_path, capsys, "--seed", "6")) != first


def _pool_rows(run):
    return {row.Tag: row for row in run.kernel.pool_tags()}


@pytest.mark.parametrize("scenario", ["demo", "demo-python"])
def test_demo_drivers_behave_as_documented(scenario):
    run = ScenarioRun(load_scenario(scenario), seed=1)
    labels = list(run.checkpoints())
    miniport, fs_filter, sloppy = run.scenario.drivers
    assert labels[-1] == "backup: closed"  # the crash came at the first fatal request
    registered = miniport.loaded if scenario == "demo" else miniport
    assert registered.ndis_version == (5, 1)  # NdisAllocateMemoryWithTag is an NDIS 5.x routine
    assert fs_filter.failed_opens == 1000 and not fs_filter.open_count  # failures handled, no debris
    rows = _pool_rows(run)
    assert rows["NmRx"].NonPagedAllocs == 64 and rows["NmRx"].NonPagedFrees == 0
    assert rows["FltS"].PagedAllocs == rows["FltS"].PagedFrees  # every open was closed
    assert rows["SlRq"].NonPagedAllocs - rows["SlRq"].NonPagedFrees > 150  # the leak
    assert run.bugcheck.parameters[:1] == (0x20,)
    entry = run.bugcheck.parameters[1]
    assert run.kernel.allocation_driver(entry + 16).name == "sloppy.sys"


def test_compiled_and_python_demos_make_the_same_pool_traffic():
    """The same seed makes the same allocations and frees in both (the backup may differ by
    an open: the compiled drivers' DRIVER_OBJECTs take a little paged pool of their own)."""
    counts = []
    for scenario in ("demo", "demo-python"):
        run = ScenarioRun(load_scenario(scenario), seed=3)
        workload = run.scenario.workload
        run.scenario.workload = lambda k, rng: workload(k, rng, steps=300)
        for label in run.checkpoints():
            if label != "traffic":
                break
        counts.append({tag: (row.NonPagedAllocs, row.NonPagedFrees, row.PagedAllocs, row.PagedFrees)
                       for tag, row in _pool_rows(run).items()
                       if tag[:2] in ("Nm", "Fl", "Sl")})
    assert counts[0] == counts[1]


def test_the_compiled_filter_counts_its_own_failures():
    """The failures the demo reports are the ones the driver's __except counted."""
    from ntpool import Kernel
    from ntpool.samples.compiled import CompiledFsFilter

    k = Kernel(nonpaged_pool_bytes=1 << 20, paged_pool_bytes=1 << 20)
    fs_filter = CompiledFsFilter()
    k.load_driver(fs_filter)
    statuses = [fs_filter.open_file(k, f"\\f{n}") for n in range(6000)]
    assert statuses.count(0xC000009A) == fs_filter.failed_opens == fs_filter.failed_open_count() > 0
    assert fs_filter.open_count == statuses.count(0)
    k.unload_driver(fs_filter)
    rows = {row.Tag: row for row in k.pool_tags()}
    assert rows["FltS"].PagedUsed == rows["FltN"].PagedUsed == 0


def test_demo_errors(tmp_path, capsys):
    (tmp_path / "a-file").write_text("")
    assert main(["demo", "--out", str(tmp_path / "a-file")]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert main(["demo", "--steps", "0"]) == 2
    assert "--steps must be at least 1" in capsys.readouterr().err


def test_the_demo_explains_a_corruption_the_deferred_free_found():
    from types import SimpleNamespace

    import ntpool
    from ntpool.cli.demo import _who_found_it

    k = ntpool.Kernel(nonpaged_pool_bytes=1 << 20, paged_pool_bytes=1 << 20, delayed_frees=True)
    error = ntpool.BugCheck(0x19, 0x3, 0, 0, 0)
    error.found_in = "ExDeferredFreePool"
    text = _who_found_it(SimpleNamespace(bugcheck=error, kernel=k))
    assert text.startswith("Found by ExDeferredFreePool") and "in one batch" in text


@pytest.mark.parametrize("windows, steps, said, shown", [
    # A short run: the last name buffer's chunk still waits on the VS delay-free list, so
    # !pool shows it Allocated; the text said "The last name buffer" as if it were live.
    ("11", "5", ", but the segment heap keeps that chunk on its delay-free list before freeing "
                "it for real, so its header still says Allocated.", ("Allocated", "SlNm")),
    ("10", "3", ", but the segment heap keeps that chunk on its delay-free list before freeing "
                "it for real, so its header still says Allocated.", ("Allocated", "SlNm")),
    # A longer one: the delay-free list was flushed, the chunk coalesced and free.
    ("11", "400", "; the segment heap has freed its chunk for real since.", ("Free", "")),
])
def test_the_segment_heap_demo_says_what_became_of_the_last_name_buffer(tmp_path, capsys, windows,
                                                                       steps, said, shown):
    assert main(["demo", "--windows", windows, "--steps", steps, "--out", str(tmp_path)]) == 0
    flat = " ".join(capsys.readouterr().out.split())  # the console wraps long lines
    assert "The last name buffer" not in flat
    assert "sloppy.sys freed its last name buffer as its last request returned" + said in flat
    chunk = re.search(r"\*[0-9a-f]+ size: +[0-9a-f]+ previous size: +[0-9a-f]+ +\((\w+)\) +\*(\w*) +Vs",
                      flat)
    assert chunk.groups() == shown  # !pool, read from the dump, agrees with the text
