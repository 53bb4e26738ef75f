"""pooltag.txt: which component owns a pool tag, as poolmon and !poolused show it.

Lines are ``<Tag> - <binary> - <Description>`` (some files omit the binary); ``rem`` and
``//`` start comments. A tag may hold ``*`` (any run of characters) and ``?`` (any one),
and short tags are space-padded. Exact entries win over wildcard ones; among wildcards the
longest (most specific) pattern wins.

This small parser serves poolmon, poolsnap and the report; the debugger's owner lookup
is to be unified with it.
"""

import os
import re
from dataclasses import dataclass
from pathlib import Path

ENVIRONMENT_VARIABLE = "NTPOOL_POOLTAG"  # extra pooltag.txt files, os.pathsep-separated
SAMPLES_POOLTAG = Path(__file__).parent / "samples" / "pooltag.txt"


@dataclass(frozen=True)
class Owner:
    binary: str  # e.g. "ndis.sys", or "" when the file does not say
    description: str

    def __str__(self) -> str:
        if self.binary and self.binary != "<unknown>":
            return f"{self.binary} - {self.description}" if self.description else self.binary
        return self.description


def wildcard_regex(pattern: str) -> re.Pattern:
    """A tag pattern with ``*`` and ``?`` as a compiled regular expression."""
    parts = [".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in pattern]
    return re.compile("".join(parts), re.DOTALL)


def tag_matches(pattern: str, tag: str) -> bool:
    """Whether ``tag`` (as tools show it) matches ``pattern``; trailing spaces are optional."""
    regex = wildcard_regex(pattern)
    return bool(regex.fullmatch(tag) or regex.fullmatch(tag.rstrip(" ")))


class PoolTagFile:
    """Owners by tag, from one or more pooltag.txt files (later files win)."""

    def __init__(self):
        self.exact: dict[str, Owner] = {}
        self.patterns: list[tuple[str, re.Pattern, Owner]] = []

    def add_text(self, text: str) -> None:
        for line in text.splitlines():
            entry = parse_line(line)
            if entry is None:
                continue
            tag, owner = entry
            if "*" in tag or "?" in tag:
                self.patterns.append((tag, wildcard_regex(tag), owner))
            else:
                self.exact[tag.ljust(4)] = owner
        self.patterns.sort(key=lambda item: -len(item[0].replace("*", "")))

    def add_file(self, path) -> None:
        try:
            text = Path(path).read_text(encoding="utf-8", errors="replace")
        except OSError as error:
            raise OSError(f"cannot read pooltag file {path}: {error.strerror or error}") from None
        self.add_text(text)

    def owner(self, tag: str) -> Owner | None:
        found = self.exact.get(tag.ljust(4))
        if found is not None:
            return found
        for _pattern, regex, owner in self.patterns:
            if regex.fullmatch(tag) or regex.fullmatch(tag.rstrip(" ")):
                return owner
        return None

    def describe(self, tag: str) -> str:
        owner = self.owner(tag)
        return str(owner) if owner else ""


def parse_line(line: str) -> tuple[str, Owner] | None:
    """(tag, owner) for an entry line; None for comments, blank lines and junk."""
    stripped = line.strip()
    if not stripped or stripped.lower().startswith("rem") or stripped.startswith(("//", ";", "#")):
        return None
    fields = re.split(r"\s+-\s+", stripped, maxsplit=2)
    tag = fields[0]
    if len(fields) < 2 or not 1 <= len(tag) <= 4 or not tag.isascii():
        return None
    if "*" not in tag:
        tag = tag.ljust(4)
    if len(fields) == 3:
        return tag, Owner(fields[1].strip(), fields[2].strip())
    return tag, Owner("", fields[1].strip())


def load_pooltags(extra_files=()) -> PoolTagFile:
    """ntpool's own tags (the sample drivers'), then $NTPOOL_POOLTAG, then ``extra_files``."""
    tags = PoolTagFile()
    if SAMPLES_POOLTAG.exists():
        tags.add_file(SAMPLES_POOLTAG)
    for path in os.environ.get(ENVIRONMENT_VARIABLE, "").split(os.pathsep):
        if path:
            tags.add_file(path)
    for path in extra_files:
        tags.add_file(path)
    return tags
