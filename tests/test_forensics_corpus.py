"""The corpus, its manifests and the score, end to end: ntpool's !poolfind, volatility3's
tag scan (ntpool's plugin) and windows.bigpools, and a CSV, scored against the truth."""

import json

import pytest

from ntpool.cli.main import main
from ntpool.debugger.session import KdSession
from ntpool.dump.reader import DumpReader
from ntpool.dump import truth as t
from ntpool.forensics.corpus import CorpusOptions, make_corpus, make_dump
from ntpool.forensics.score import format_score, score_files


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    directory = tmp_path_factory.mktemp("corpus")
    index = make_corpus(directory, CorpusOptions(count=2, seed=7, min_pool_mib=1, max_pool_mib=2))
    return directory, index


def poolfind_all(dump, out):
    with DumpReader(dump) as reader:
        session = KdSession(reader)
        text = "\n".join(session.execute(f"!poolfind * {pool}") for pool in (0, 1))
    out.write_text(text)
    return out


def test_the_corpus_has_what_a_scanner_must_face(corpus):
    directory, index = corpus
    assert json.loads((directory / "corpus.json").read_text()) == json.loads(json.dumps(index))
    entries = index["dumps"]
    assert [e["kind"] for e in entries] == ["kernel", "full"]
    for entry in entries:
        document = t.load(directory / entry["truth"])
        with DumpReader(directory / entry["dump"]) as reader:
            assert t.check_against_tracker(document, reader.tracker_entries()) == []
        states = {row[9] for row in document["chunks"]}
        assert {"allocated", "free", "lookaside"} <= states
        assert document["big_allocations"] and document["paged_out_pages"] and document["corrupt_pages"]
        assert {d["aligned"] for d in document["decoys"]} == {True, False}
        protected = [row for row in document["chunks"] if row[3] & 0x80000000]
        pools = {row[2] for row in document["chunks"]}
        assert protected and pools == {"NonPagedPool", "PagedPool"}
        assert len({row[4] for row in document["chunks"]}) > 20
    assert (directory / "symbols").is_dir()
    every_state = {row[9] for entry in entries for row in t.load(directory / entry["truth"])["chunks"]}
    assert every_state == {"allocated", "free", "lookaside", "pending free"}


def test_a_dump_of_the_corpus_is_the_same_for_the_same_seed(tmp_path):
    first = make_dump(tmp_path / "a", 0, 99, 1, "kernel") if (tmp_path / "a").mkdir() is None else None
    second = make_dump(tmp_path / "b", 0, 99, 1, "kernel") if (tmp_path / "b").mkdir() is None else None
    assert first == second
    assert t.load(tmp_path / "a" / first["truth"])["chunks"] == t.load(tmp_path / "b" / second["truth"])["chunks"]


def test_poolfind_is_exact_where_it_can_see(corpus, tmp_path):
    directory, index = corpus
    for entry in index["dumps"]:
        hits = poolfind_all(directory / entry["dump"], tmp_path / "poolfind.txt")
        result = score_files(directory / entry["truth"], [hits])
        assert result["headers"]["precision"] == 1.0 and not result["false hits"]
        # What it misses it cannot see: paged out, or after the damage on a corrupt page.
        assert set(result["misses"]) <= {"paged out", "corrupt page"} and result["misses"]["paged out"]
        assert result["big allocations"]["precision"] == result["big allocations"]["recall"] == 1.0


def test_a_score_for_some_tags_judges_only_their_findings(corpus, tmp_path):
    # --tags cuts the findings as it cuts the truth: each tag's row is the whole score's
    # restricted to it (right never above truth), and the rows add up to the whole.
    directory, index = corpus
    entry = index["dumps"][0]
    hits = poolfind_all(directory / entry["dump"], tmp_path / "poolfind.txt")
    whole = score_files(directory / entry["truth"], [hits])
    tags = sorted({row[4].rstrip() for row in t.load(directory / entry["truth"])["chunks"]})
    found = right = truth = 0
    for tag in tags:
        part = score_files(directory / entry["truth"], [hits], [tag])["headers"]
        assert part["right"] <= part["truth"] and part["right"] <= part["found"]
        found, right, truth = found + part["found"], right + part["right"], truth + part["truth"]
    assert (found, right, truth) == (whole["headers"]["found"], whole["headers"]["right"],
                                     whole["headers"]["truth"])


def test_volatility3s_scanners_scored(corpus, tmp_path):
    pytest.importorskip("volatility3")
    from ntpool.forensics.volatility import as_vol_json, run_plugin

    directory, index = corpus
    entry = index["dumps"][0]
    dump = directory / entry["dump"]
    results = []
    for plugin in ("ntpool.tagscan", "windows.bigpools"):
        path = tmp_path / f"{plugin}.json"
        path.write_text(json.dumps(as_vol_json(*run_plugin(dump, plugin, cache=tmp_path / "cache"))))
        results.append(path)
    result = score_files(directory / entry["truth"], results)
    text = format_score(result)
    assert "ntpool.tagscan" in text and "windows.bigpools" in text
    # volatility3's engine finds every header it can see, and stale ones and decoys besides.
    assert set(result["misses"]) <= {"paged out", "corrupt page"} and result["misses"]["paged out"]
    assert result["headers"]["precision"] < 1.0
    assert result["false hits"].get("decoy", 0) > 0
    assert any(cause.startswith("stale header inside") for cause in result["false hits"])
    assert result["big allocations"]["recall"] == 1.0


def test_score_reads_a_csv_and_names_its_mistakes(corpus, tmp_path, capsys):
    directory, index = corpus
    entry = index["dumps"][1]
    document = t.load(directory / entry["truth"])
    rows = [row for row in document["chunks"] if not row[10]][:50]
    decoy = document["decoys"][0]
    lines = ["address,tag,state"] + [f"{row[0]},{row[4]},{row[9]}" for row in rows]
    lines.append(f"{decoy['address']},{decoy['tag']},Allocated")
    lines.append(f"{rows[0][1]},{rows[0][4]}")  # the same header by its physical address
    path = tmp_path / "hits.csv"
    path.write_text("\n".join(lines) + "\n")
    tag_list = ",".join(sorted({row[4].rstrip() for row in rows}))
    assert main(["score", str(directory / entry["truth"]), str(path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["headers"]["found"] == 52 and result["headers"]["right"] == 50
    assert sum(v for k, v in result["false hits"].items() if k.startswith("decoy")) == 1
    assert main(["score", str(directory / entry["truth"]), str(path), "--tags", tag_list]) == 0
    assert "precision" in capsys.readouterr().out


def test_corpus_command(tmp_path, capsys):
    assert main(["corpus", "--out", str(tmp_path), "--count", "1", "--seed", "2", "--pool-mib", "1"]) == 0
    out = capsys.readouterr().out
    assert "dump-000.dmp: kernel, 1.0 MiB each pool" in out
    assert (tmp_path / "dump-000.truth.json").exists()
    assert main(["corpus", "--out", str(tmp_path), "--pool-mib", "0.5"]) == 2
    assert "at least 1 MiB" in capsys.readouterr().err


def test_a_tag_search_finds_what_the_whole_walk_finds_window_by_window(corpus, monkeypatch):
    from ntpool.debugger import poolscan

    monkeypatch.setattr(poolscan, "WINDOW_PAGES", 2)  # many windows, many boundaries
    directory, index = corpus
    with DumpReader(directory / index["dumps"][1]["dump"]) as reader:
        big = poolscan.BigPageIndex(reader.big_pages())
        for pool in reader.pool_ranges():
            every = poolscan.PoolFinder(reader, pool, big).find("*")
            assert every
            for tag in {chunk.tag & 0x7FFFFFFF for chunk in every}:
                text = tag.to_bytes(4, "little").decode("latin-1")  # the corpus' tags are printable
                found = poolscan.PoolFinder(reader, pool, big).find(text)
                assert found == [c for c in every if c.tag & 0x7FFFFFFF == tag]
