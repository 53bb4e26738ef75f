"""Score a pool scanner's findings against a truth manifest.

Findings come from files (``read_results``): volatility3's JSON output (``vol -r json``) of
``windows.bigpools``, of ntpool's ``ntpool.tagscan`` plugin or of ``windows.poolscanner``;
ntpool's own ``!poolfind`` output (``ntpool kd -c "!poolfind TAG 0; !poolfind TAG 1"``);
or a plain CSV ``address,tag[,state]``. Each finding is normalised before it is judged:

- addresses: canonical virtual; a physical address (below 2^47, or from a physical layer)
  goes through the manifest's page map; a body address one header past a true header is the
  header;
- tags: the protected bit stripped, then only bytes 33..126 kept (volatility3 drops the
  rest, trailing spaces included), so 'Cc  ', 'Cc' and a protected 'Prot' shown 'Pro' meet.

Scores: precision and recall for headers (every chunk of every pool page, in any state),
live allocations (allocated chunks and big allocations) and big allocations, over the tags
the scanner looked for (``!poolfind`` says which; otherwise every tag, or ``tags``). False
hits are counted by cause (a decoy, aligned or not; an unaligned match; a stale header inside
an allocated / free / lookaside / pending-free chunk; inside a big allocation; elsewhere) and
misses by cause (the page was paged out, the page's headers are corrupt, a free block of the
segment heap, other).
"""

import csv
import json
import re
from bisect import bisect_right
from dataclasses import dataclass, field

from ..constants import PAGE_SIZE
from ..machine.memory import canonical
from ..pool.layout import HEADER_SIZE
from ..tags import display, is_hex_tag
from ..dump.truth import load

CANONICAL_LOW = 1 << 47


def normal_tag(text) -> str:
    """A tag as scanners spell it, reduced to what every one of them keeps."""
    if isinstance(text, str) and len(text) == 10 and is_hex_tag(text):  # '0xdeadbeef': kd's spelling
        text = int(text, 16)  # of a tag with a byte outside 0x20..0x7E
    if isinstance(text, int):
        raw = (text & 0x7FFFFFFF).to_bytes(4, "little")
    else:
        raw = bytes(ord(c) & 0x7F if ord(c) < 0x100 else 0x3F for c in str(text)[:4])
    return "".join(chr(b) for b in raw if 32 < b < 127)


def tag_forms(value: int) -> frozenset:
    """The spellings a true tag may be reported under: the protected bit stripped, or, as
    volatility3 shows a protected tag, its byte with the bit dropped altogether."""
    forms = {normal_tag(value)}
    # kd shows a tag with a byte outside 0x20..0x7E as its ULONG: 'Cc' (0x4363) is 0x00004363.
    forms.add(normal_tag(display(value & 0x7FFFFFFF)))
    if value & 0x80000000:
        forms.add("".join(chr(b) for b in value.to_bytes(4, "little")[:3] if 32 < b < 127))
    return frozenset(forms)


@dataclass
class Finding:
    address: int  # as reported (virtual, or physical when ``physical``)
    tag: str
    state: str | None = None  # 'allocated', 'free' when the scanner says
    physical: bool = False
    big: bool = False  # a big allocation (from a big page table)


@dataclass
class Results:
    findings: list = field(default_factory=list)
    scanned: list = field(default_factory=list)  # (pool name or None, tag regex) searched
    sources: list = field(default_factory=list)


# --- reading scanners' output ------------------------------------------------------------------

# kd's chunk line: the state in parentheses padded to 12 columns, a mark (' ' or '*'), then
# the tag's four columns (blank for a tag of 0 on the segment heap; a backend may follow).
_POOLFIND_CHUNK = re.compile(r"^\s*\*?([0-9a-fA-F`]{8,17}) size:\s*[0-9a-fA-F]+ previous size:\s*[0-9a-fA-F]+"
                             r"\s+(\((\w[\w ]*)\))")
_POOLFIND_BIG = re.compile(r"^\s*\*?([0-9a-fA-F`]{8,17}) :large page allocation, Tag is "
                           r"(0x[0-9a-f]{8}|.{0,4}), size is")
# Windows 7: "Searching NonPagedPool (start : end)"; the segment heap: one line per heap,
# "Searching NonPagedPoolNx heap HEAP (start : end)".
_POOLFIND_SEARCH = re.compile(r"Searching (\w+) (?:heap [0-9a-fA-F`]+ )?\([0-9a-fA-F`]+ : [0-9a-fA-F`]+\) "
                              r"for Tag: (\S+)")


def _state(text) -> str | None:
    if text is None:
        return None
    text = str(text).strip().lower()
    if text.startswith("alloc"):
        return "allocated"
    if text.startswith("free"):
        return "free"
    return text or None


def _pattern_regex(pattern: str) -> re.Pattern:
    if is_hex_tag(pattern):  # a TagValue (!poolfind 0xdeadbeef): that tag, normalised as findings are
        return re.compile(re.escape(normal_tag(int(pattern, 16))) + " *$")
    pattern = pattern.ljust(4) if "*" not in pattern else pattern
    text = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile(text + "$", re.DOTALL)


def _from_vol_rows(rows: list, results: Results, name: str) -> None:
    if not rows:
        results.sources.append(f"{name}: volatility3 output with no rows")
        return
    keys = set(rows[0])
    if {"Allocation", "Tag", "NumberOfBytes"} <= keys:
        for row in rows:
            if str(row.get("Status", "Allocated")).lower().startswith("alloc"):
                results.findings.append(Finding(canonical(int(row["Allocation"])), normal_tag(row["Tag"]),
                                                "allocated", big=True))
        results.sources.append(f"{name}: windows.bigpools ({len(rows)} rows)")
        return
    if {"Tag", "Offset"} <= keys:
        for row in rows:
            layer = str(row.get("Layer", ""))
            physical = layer == "memory_layer" or "Physical" in layer or "crash" in layer.lower()
            results.findings.append(Finding(int(row["Offset"]), normal_tag(row["Tag"]),
                                            _state(row.get("State")), physical=physical))
        kind = "ntpool.tagscan" if "State" in keys else "windows.poolscanner"
        results.sources.append(f"{name}: {kind} ({len(rows)} rows)")
        return
    raise ValueError(f"{name}: volatility3 output of a plugin ntpool cannot score (columns {sorted(keys)})")


def parse_poolfind(lines, results: Results, name: str) -> None:
    """Findings from ``!poolfind`` output, given as lines (an iterable: a big dump's output
    need not be held whole)."""
    count = 0
    for line in lines:
        searched = _POOLFIND_SEARCH.search(line)
        if searched:
            results.scanned.append((searched.group(1), _pattern_regex(searched.group(2))))
            continue
        big = _POOLFIND_BIG.match(line)
        if big:
            results.findings.append(Finding(canonical(int(big.group(1).replace("`", ""), 16)),
                                            normal_tag(big.group(2)), "allocated", big=True))
            count += 1
            continue
        chunk = _POOLFIND_CHUNK.match(line)
        if chunk:
            tag_at = chunk.start(2) + max(12, len(chunk.group(2))) + 1
            tag = line[tag_at:tag_at + 10]
            if not is_hex_tag(tag):  # four characters, or the ULONG's 0x and 8 digits
                tag = tag[:4]
            results.findings.append(Finding(canonical(int(chunk.group(1).replace("`", ""), 16)),
                                            normal_tag(tag), _state(chunk.group(3))))
            count += 1
    results.sources.append(f"{name}: !poolfind ({count} hits)")


def _csv_rows(text: str, name: str):
    """(line number, row) of CSV text; csv.Error (a field past csv's limit, a stray quote
    at the end) as a ValueError naming the line."""
    rows = csv.reader(text.splitlines())
    number = 0
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except csv.Error as error:
            raise ValueError(f"{name}:{rows.line_num}: not CSV ({error})") from None
        number += 1
        yield number, row


def _from_csv(text: str, results: Results, name: str) -> None:
    count = 0
    for number, row in _csv_rows(text, name):
        if not row or row[0].strip().lower() in ("address", "") or row[0].startswith("#"):
            continue
        try:
            address = int(row[0].strip().replace("`", ""), 16)
            if not 0 <= address < 1 << 64:
                raise ValueError
        except ValueError:
            shown = row[0] if len(row[0]) <= 40 else row[0][:40] + "..."
            raise ValueError(f"{name}:{number}: {shown!r} is not a 64-bit hex address") from None
        tag = row[1] if len(row) > 1 else ""
        state = _state(row[2]) if len(row) > 2 else None
        physical = address < CANONICAL_LOW
        results.findings.append(Finding(address if physical else canonical(address), normal_tag(tag),
                                        state, physical=physical))
        count += 1
    results.sources.append(f"{name}: CSV ({count} rows)")


def read_results(paths) -> Results:
    """Findings from scanners' output files (the format of each is recognised)."""
    results = Results()
    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as handle:
            text = handle.read()
        if "\0" in text:  # no scanner's text holds a NUL: a dump or a manifest's .xz given here
            what = " (a crash dump: score what a scanner found in it)" \
                if text.startswith("PAGEDU64") else ""
            raise ValueError(f"{path}: not a scanner's results: a binary file{what}")
        stripped = text.lstrip()
        if stripped.startswith("["):
            try:
                rows = json.loads(stripped)
            except RecursionError:
                raise ValueError(f"{path}: broken JSON (nested too deeply to read)") from None
            except ValueError as error:  # broken JSON, or a number of thousands of digits
                raise ValueError(f"{path}: broken JSON ({error})") from None
            if not isinstance(rows, list):
                raise ValueError(f"{path}: JSON that is not a list of rows")
            try:
                _from_vol_rows([r for r in rows if isinstance(r, dict)], results, str(path))
            except _MALFORMED as error:
                if isinstance(error, ValueError) and str(error).startswith(str(path)):
                    raise
                raise ValueError(f"{path}: a row volatility3 would not write ({type(error).__name__}: "
                                 f"{error})") from None
        elif "Searching" in text and "for Tag:" in text:
            parse_poolfind(text.splitlines(), results, str(path))
        else:
            _from_csv(text, results, str(path))
    return results


# --- the truth, indexed -----------------------------------------------------------------------

class TruthIndex:
    def __init__(self, document: dict):
        fields = document["chunk_fields"]
        at = {name: index for index, name in enumerate(fields)}
        self.chunks = {}
        self.page_starts: dict[int, list] = {}
        for row in document["chunks"]:
            address = int(row[at["address"]], 16)
            self.chunks[address] = {"tag": normal_tag(row[at["tag_value"]]),
                                    "tags": tag_forms(row[at["tag_value"]]), "size": row[at["size"]],
                                    "state": row[at["state"]], "pool": row[at["pool"]],
                                    "paged_out": row[at["paged_out"]],
                                    "corrupt": row[at["corrupt_page"]],
                                    "backend": row[at["backend"]] if "backend" in at else None}
            self.page_starts.setdefault(address & ~(PAGE_SIZE - 1), []).append(address)
        for starts in self.page_starts.values():
            starts.sort()
        big_at = {name: index for index, name in enumerate(document["big_fields"])}
        self.big = {}
        for row in document["big_allocations"]:
            self.big[int(row[big_at["address"]], 16)] = {
                "tag": normal_tag(row[big_at["tag_value"]]), "tags": tag_forms(row[big_at["tag_value"]]),
                "size": row[big_at["size"]],
                "pool": row[big_at["pool"]], "paged_out": row[big_at["paged_out"]]}
        self.big_starts = sorted(self.big)
        self.physical_to_virtual = {int(pa, 16): int(va, 16) for va, pa in document.get("pages", [])}
        self.decoys = {int(d["address"], 16): d for d in document.get("decoys", [])}
        self.pools = {p["name"]: (int(p["start"], 16), int(p["end"], 16)) for p in document["pools"]}

    def virtual(self, finding: Finding) -> int | None:
        if not finding.physical:
            return finding.address
        page = self.physical_to_virtual.get(finding.address & ~(PAGE_SIZE - 1))
        return None if page is None else page | (finding.address & (PAGE_SIZE - 1))

    def containing_chunk(self, va: int) -> int | None:
        starts = self.page_starts.get(va & ~(PAGE_SIZE - 1))
        if not starts:
            return None
        index = bisect_right(starts, va) - 1
        if index >= 0 and va < starts[index] + self.chunks[starts[index]]["size"]:
            return starts[index]
        return None

    def containing_big(self, va: int) -> int | None:
        index = bisect_right(self.big_starts, va) - 1
        if index >= 0 and va < self.big_starts[index] + self.big[self.big_starts[index]]["size"]:
            return self.big_starts[index]
        return None

    def pool_of(self, va: int) -> str | None:
        for name, (start, end) in self.pools.items():
            if start <= va < end:
                return name
        return None


# --- judging -----------------------------------------------------------------------------

def _in_scope(scanned: list, tag: str, pool: str, tags: set | None) -> bool:
    if tags is not None and tag not in tags:
        return False
    if not scanned:
        return True
    return any((name is None or name == pool) and regex.match(tag.ljust(4)) for name, regex in scanned)


def _ratio(part: int, whole: int) -> float | None:
    return None if whole == 0 else part / whole


# A free LFH block or VS chunk: the segment heap writes no header when it frees (an LFH
# block keeps a stale one, or none if never used; a free VS chunk has only its encoded chunk
# header), so a scanner that reports busy blocks misses it by design.
_FREE_IN_HEAP = "free segment-heap block (no live header)"

# (OverflowError: JSON's Infinity where a number is read as an int.)
_MALFORMED = (KeyError, IndexError, TypeError, ValueError, AttributeError, OverflowError)


def score(document: dict, results: Results, tags=None, name: str = "the manifest") -> dict:
    """Precision, recall and causes for ``results`` against the manifest ``document``."""
    try:
        return _score(TruthIndex(document), results, tags)
    except _MALFORMED as error:
        raise ValueError(f"{name}: not a valid truth manifest ({type(error).__name__}: {error})") from None


def _score(index: TruthIndex, results: Results, tags) -> dict:
    tags = None if tags is None else {normal_tag(t) for t in tags}
    scanned = [(pool, regex) for pool, regex in results.scanned]

    def in_scope(tag, pool):
        return _in_scope(scanned, tag, pool, tags)

    header_truth = {a for a, c in index.chunks.items() if in_scope(c["tag"], c["pool"])}
    live_truth = {a for a in header_truth if index.chunks[a]["state"] == "allocated"}
    big_truth = {a for a, b in index.big.items() if in_scope(b["tag"], b["pool"])}
    live_truth |= big_truth

    header_found, live_claims, live_right, big_claims, big_right = set(), set(), set(), set(), set()
    false_hits: dict[str, int] = {}

    def false(cause):
        false_hits[cause] = false_hits.get(cause, 0) + 1

    # Only the tags asked about are judged: findings of other tags are neither right nor
    # false (the truth is cut to those tags likewise).
    findings = [f for f in results.findings if tags is None or f.tag in tags]
    for finding in findings:
        va = index.virtual(finding)
        if finding.big:
            big_claims.add((va, finding.tag))
            if va in index.big and finding.tag in index.big[va]["tags"]:
                big_right.add(va)
                live_claims.add(va)
                live_right.add(va)
            else:
                false("big allocation not in the big page table" if va not in index.big else "wrong tag")
            continue
        if va is None:
            false("physical address outside every pool page")
            continue
        header = va
        chunk = index.chunks.get(va)
        body_of = index.chunks.get(va - HEADER_SIZE)
        if chunk is None and body_of is not None and finding.tag in body_of["tags"] and \
                va not in index.decoys:
            header, chunk = va - HEADER_SIZE, body_of  # a scanner that reports the body's address
        if chunk is not None and finding.tag in chunk["tags"]:
            header_found.add(header)
            if finding.state in (None, "allocated"):
                live_claims.add(header)
                if chunk["state"] == "allocated":
                    live_right.add(header)
            continue
        if finding.state in (None, "allocated"):
            live_claims.add(("false", va))
        if va in index.decoys:
            false("decoy" if index.decoys[va].get("aligned", True) else "decoy (unaligned)")
        elif va & 15:
            false("unaligned match")
        elif chunk is not None:
            false("true header, wrong tag")
        elif index.containing_big(va) is not None:
            false("inside a big allocation")
        else:
            inside = index.containing_chunk(va)
            if inside is not None:
                state = index.chunks[inside]["state"]
                false(f"stale header inside {'an' if state == 'allocated' else 'a'} {state} chunk")
            else:
                false("outside every pool page" if index.pool_of(va) is None else "elsewhere in the pool")

    misses: dict[str, int] = {}
    for address in header_truth - header_found:
        chunk = index.chunks[address]
        cause = "paged out" if chunk["paged_out"] else "corrupt page" if chunk["corrupt"] else \
            _FREE_IN_HEAP if chunk["backend"] and chunk["state"] == "free" else "other"
        misses[cause] = misses.get(cause, 0) + 1
    big_misses = {}
    for address in big_truth - big_right:
        cause = "paged out" if index.big[address]["paged_out"] else "other"
        big_misses[cause] = big_misses.get(cause, 0) + 1

    header_hits = len([f for f in findings if not f.big])

    def row(truth, claims, right):
        return {"truth": truth, "found": claims, "right": right,
                "precision": _ratio(right, claims), "recall": _ratio(right, truth)}

    return {
        "sources": results.sources,
        "headers": row(len(header_truth), header_hits, len(header_found)),
        "live allocations": row(len(live_truth), len(live_claims), len(live_right & live_truth)),
        "big allocations": row(len(big_truth), len(big_claims), len(big_right)),
        "false hits": dict(sorted(false_hits.items(), key=lambda item: -item[1])),
        "misses": dict(sorted(misses.items(), key=lambda item: -item[1])),
        "big misses": big_misses,
    }


def score_files(truth_path, result_paths, tags=None) -> dict:
    return score(load(truth_path), read_results(result_paths), tags, str(truth_path))


def _number(value) -> str:
    return "   -  " if value is None else f"{value:6.3f}"


def format_score(result: dict) -> str:
    lines = [f"scored: {source}" for source in result["sources"]]
    lines.append(f"{'':18} {'truth':>8} {'found':>8} {'right':>8} {'precision':>9} {'recall':>7}")
    for name in ("headers", "live allocations", "big allocations"):
        r = result[name]
        if not r["truth"] and not r["found"]:
            continue
        lines.append(f"{name:18} {r['truth']:8} {r['found']:8} {r['right']:8} "
                     f"{_number(r['precision']):>9} {_number(r['recall']):>7}")
    if result["false hits"]:
        lines.append("false hits by cause: " + "; ".join(f"{c}: {n}" for c, n in result["false hits"].items()))
    if result["misses"]:
        lines.append("missed headers by cause: " + "; ".join(f"{c}: {n}" for c, n in result["misses"].items()))
    if result["big misses"]:
        lines.append("missed big allocations: " + "; ".join(f"{c}: {n}" for c, n in result["big misses"].items()))
    return "\n".join(lines)
