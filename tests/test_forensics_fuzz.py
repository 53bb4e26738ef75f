"""Hostile input to the forensics tools: `ntpool score`'s files and !poolfind's salvage."""

import json
import os
import random

from hypothesis import HealthCheck, given, settings, strategies as st

from ntpool.debugger.poolscan import salvaged_header_offsets, valid_header_offsets
from ntpool.forensics.score import score_files
from ntpool.pool.layout import POOL_HEADER, POOL_IN_USE

EXAMPLES = int(os.environ.get("NTPOOL_FUZZ_EXAMPLES", "60"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def healthy_page(rng: random.Random, base_type: int = 0) -> tuple[bytearray, list]:
    """A page of chunks with a consistent chain, bodies full of header-like garbage."""
    page = bytearray(rng.randbytes(4096))
    offsets, offset, previous = [], 0, 0
    while offset < 4096:
        size = min(rng.randrange(1, 40), (4096 - offset) // 16)
        tag = int.from_bytes(bytes(rng.choice(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefgh") for _ in range(4)), "little")
        pool_type = rng.choice((0, base_type | POOL_IN_USE))
        POOL_HEADER.pack_into(page, offset, previous, base_type, size, pool_type, tag, 0)
        offsets.append(offset)
        previous = size
        offset += size * 16
    return page, offsets


@SETTINGS
@given(st.integers(0, 2**32), st.lists(st.tuples(st.integers(0, 4095), st.integers(0, 255)),
                                       min_size=1, max_size=6))
def test_a_salvage_never_invents_a_chunk(seed, damage):
    rng = random.Random(seed)
    page, truth = healthy_page(rng)
    assert valid_header_offsets(page, 0, 0) == set(truth)
    for at, value in damage:
        page[at] = value
    found = valid_header_offsets(page, 0, 0)
    if found is None:
        found = salvaged_header_offsets(page, 0, 0)
    assert found <= set(truth)


def test_a_one_byte_overrun_loses_nothing():
    rng = random.Random(5)
    page, truth = healthy_page(rng)
    victim = truth[len(truth) // 2]
    page[victim] ^= 0x5A  # the next header's PreviousSize
    assert valid_header_offsets(page, 0, 0) is None
    assert salvaged_header_offsets(page, 0, 0) == set(truth)


MANIFEST = {"format": "ntpool-truth", "version": 1, "dump": {}, "pools": [
    {"name": "NonPagedPool", "base_type": 0, "start": "0xfffffa8000000000", "end": "0xfffffa8000100000"}],
    "chunk_fields": ["address", "physical", "pool", "tag_value", "tag", "size", "block_size",
                     "previous_size", "pool_type", "state", "paged_out", "corrupt_page"],
    "chunks": [["0xfffffa8000000000", "0x5000", "NonPagedPool", 0x64657246, "Fred", 4096, 256, 0, 2,
                "allocated", False, False]],
    "big_fields": ["address", "physical", "pool", "tag_value", "tag", "size", "pages", "paged_out"],
    "big_allocations": [], "paged_out_pages": [], "pages": [["0xfffffa8000000000", "0x5000"]],
    "corrupt_pages": [], "decoys": []}

json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=4) |
                           st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)


@SETTINGS
@given(st.sampled_from(sorted(MANIFEST)), json_values)
def test_a_broken_manifest_is_one_clear_error(tmp_path, key, value):
    document = dict(MANIFEST, **{key: value})
    (tmp_path / "truth.json").write_text(json.dumps(document))
    (tmp_path / "hits.csv").write_text("0xfffffa8000000000,Fred\n")
    try:
        score_files(tmp_path / "truth.json", [tmp_path / "hits.csv"])
    except ValueError as error:
        assert "truth" in str(error) or "manifest" in str(error)


@SETTINGS
@given(st.one_of(st.binary(max_size=300).map(lambda b: b.decode("latin-1")),
                 json_values.map(json.dumps),
                 st.lists(st.dictionaries(st.sampled_from(["Tag", "Offset", "Layer", "State", "Allocation",
                                                           "NumberOfBytes", "Status"]), json_values),
                          max_size=4).map(json.dumps)))
def test_hostile_results_are_scored_or_refused_in_one_line(tmp_path, text):
    (tmp_path / "truth.json").write_text(json.dumps(MANIFEST))
    (tmp_path / "results").write_text(text, encoding="latin-1")
    try:
        result = score_files(tmp_path / "truth.json", [tmp_path / "results"])
    except ValueError as error:
        assert "\n" not in str(error)
    else:
        assert result["headers"]["truth"] == 1


# --- found by python -m ntpool.cli.dump_fuzz ---------------------------------------------------

def _refused(tmp_path, truth_bytes: bytes | None, results_bytes: bytes, name: str = "results") -> str:
    truth = tmp_path / "truth.json"
    if truth_bytes is None:
        truth.write_text(json.dumps(MANIFEST))
    else:
        truth.write_bytes(truth_bytes)
    results = tmp_path / name
    results.write_bytes(results_bytes)
    try:
        score_files(truth, [results])
    except ValueError as error:
        text = str(error)
        assert "\n" not in text and len(text) < 400
        return text
    raise AssertionError("scored a file that should have been refused")


def test_a_manifest_that_is_not_utf8_is_refused_by_name(tmp_path):
    text = _refused(tmp_path, json.dumps(MANIFEST).encode() + b"\xff", b"0xfffffa8000000000,Fred\n")
    assert "truth.json: not a truth manifest (not UTF-8 text)" in text


def test_json_nested_too_deep_is_refused_by_name(tmp_path):
    deep = b"[" * 100000 + b"]" * 100000
    assert "truth.json: not a truth manifest (JSON nested too deeply" in _refused(tmp_path, deep, b"")
    assert "results.json: broken JSON (nested too deeply" in _refused(tmp_path, None, deep, "results.json")


def test_numbers_of_thousands_of_digits_are_refused_by_name(tmp_path):
    huge = b'{"format": "ntpool-truth", "version": ' + b"9" * 5000 + b"}"
    assert "truth.json: not a truth manifest" in _refused(tmp_path, huge, b"")
    rows = b'[{"Offset": ' + b"9" * 5000 + b', "Tag": "Fred"}]'
    assert "results.json: broken JSON" in _refused(tmp_path, None, rows, "results.json")


def test_an_infinite_offset_is_refused_by_name(tmp_path):
    rows = b'[{"Offset": Infinity, "Tag": "Fred", "Layer": "layer_name"}]'
    assert "results.json: a row volatility3 would not write (OverflowError" in \
        _refused(tmp_path, None, rows, "results.json")


def test_a_csv_field_past_csv_s_limit_is_refused_by_line(tmp_path):
    text = _refused(tmp_path, None, b"0xfffffa8000000000,Fred\n0xfffffa8000000010," + b"F" * 200000 + b"\n",
                    "hits.csv")
    assert "hits.csv:2: not CSV (field larger than field limit" in text
    long_address = _refused(tmp_path, None, b"z" * 1000 + b",Fred\n", "hits.csv")
    assert long_address.endswith("...' is not a 64-bit hex address")


def test_a_hostile_corpus_index_is_refused_by_name(tmp_path, capsys):
    """ntpool score --corpus DIR reads DIR/corpus.json: JSON nested too deeply was a traceback
    (RecursionError), bytes that are not UTF-8 an error naming no file."""
    from ntpool.cli.main import main

    index = tmp_path / "corpus.json"
    for content, why in ((b"[" * 100000 + b"]" * 100000, "JSON nested too deeply"),
                         (b"\xff\xfe{", "not UTF-8 text"), (b'{"dumps": 5}', "not iterable")):
        index.write_bytes(content)
        assert main(["score", "--corpus", str(tmp_path)]) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and f"{index}: not an ntpool corpus index" in error and why in error
