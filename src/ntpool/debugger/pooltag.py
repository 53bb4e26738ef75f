"""pooltag.txt: who owns a pool tag.

Lines read ``<Tag> - <binary> - <Description>``; the binary field is sometimes missing;
``rem`` lines and blank lines are comments. A tag may hold ``*`` (any run of characters)
and ``?`` (any one character); a short tag is space-padded to four. Sources are asked in
order (``--pooltag`` file, the ``NTPOOL_POOLTAG`` files, ntpool's own list), an exact entry
before a wildcard one within each, the most specific wildcard first.
"""

import os
import re
from dataclasses import dataclass
from importlib import resources
from typing import NamedTuple

ENVIRONMENT_VARIABLE = "NTPOOL_POOLTAG"
_LINE = re.compile(r"^(?P<tag>\S.{0,3}?)\s+-(?:\s+|$)(?P<rest>.*)$")  # tags may hold spaces
_FIELD_SEPARATOR = re.compile(r"\s+-\s*|\s*-\s+")
_BINARY = re.compile(r"^(<unknown>|\S+\.(sys|exe|dll|drv)|\S+!\S*|\S+)$", re.IGNORECASE)


class PoolTagOwner(NamedTuple):
    tag: str  # as written in the file
    binary: str
    description: str

    def __str__(self) -> str:
        return f"{self.binary} - {self.description}" if self.binary else self.description


def wildcard_regex(pattern: str) -> re.Pattern:
    """A compiled regex for a tag pattern with ``*`` and ``?`` (everything else literal)."""
    parts = []
    for ch in pattern:
        parts.append(".*" if ch == "*" else "." if ch == "?" else re.escape(ch))
    return re.compile("".join(parts), re.DOTALL)


def has_wildcard(pattern: str) -> bool:
    return "*" in pattern or "?" in pattern


def tag_matches(pattern: str, tag: str) -> bool:
    """Whether a four-character tag matches a pattern (short patterns are space-padded)."""
    if not has_wildcard(pattern):
        return pattern.ljust(4) == tag.ljust(4)
    return wildcard_regex(pattern).fullmatch(tag.ljust(4)) is not None


# What each of the 10 characters of a tag shown in hex can be: "0x" and 8 hex digits.
_HEX_TAG_SHAPE = ("0", "xX") + ("0123456789abcdefABCDEF",) * 8


def _can_match_a_hex_tag(pattern: str) -> bool:
    """Whether the wildcard pattern matches some ``0x%08x`` string (``reachable``: the
    positions of the shape the pattern so far can end at)."""
    reachable = {0}
    for ch in pattern:
        if ch == "*":
            reachable = set(range(min(reachable), len(_HEX_TAG_SHAPE) + 1)) if reachable else set()
        else:
            reachable = {j + 1 for j in reachable
                         if j < len(_HEX_TAG_SHAPE) and (ch == "?" or ch in _HEX_TAG_SHAPE[j])}
    return len(_HEX_TAG_SHAPE) in reachable


def check_tag_pattern(pattern: str) -> str:
    """A tag pattern that can match some tag as tools show it (four printable ASCII
    characters, trailing spaces optional, or 0x and 8 hex digits), else a ValueError naming
    it: a typo such as a fifth character would otherwise match nothing without a word. The
    one rule of poolmon's filters and kd's !poolused and !poolfind.

    A tag with a byte outside printable ASCII (a compiled driver's 'f\\xe9rP') is shown
    as its ULONG in hex, and that is how it is given: for such a tag of four characters the
    error names its hex form."""
    if not pattern:
        raise ValueError("an empty tag pattern matches no tag")
    odd = next((ch for ch in pattern if not 0x20 <= ord(ch) <= 0x7E), None)
    if odd is not None:
        hint = ""
        if len(pattern) <= 4 and "*" not in pattern and "?" not in pattern and \
                all(ord(ch) <= 0xFF for ch in pattern):
            value = int.from_bytes(pattern.ljust(4).encode("latin-1"), "little")
            hint = f"; this one is 0x{value:08x}"
        raise ValueError(f"tag pattern {pattern!r} holds {odd!r}: tags are shown in printable "
                         f"ASCII (a tag with other bytes as 0x and its 8 hex digits{hint})")
    if len(pattern.replace("*", "")) > 4 and not _can_match_a_hex_tag(pattern):
        raise ValueError(f"tag pattern {pattern!r} cannot match a tag (4 characters, * and ? "
                         f"allowed, or 0x and 8 hex digits)")
    return pattern


def parse_line(line: str) -> PoolTagOwner | None:
    text = line.strip()
    if not text or text.lower().startswith("rem") and (len(text) == 3 or text[3].isspace()):
        return None
    match = _LINE.match(text)
    if match is None:
        return None
    rest = match["rest"].strip()
    fields = _FIELD_SEPARATOR.split(rest, maxsplit=1)
    if len(fields) == 2 and _BINARY.match(fields[0]):
        return PoolTagOwner(match["tag"], fields[0], fields[1].strip())
    return PoolTagOwner(match["tag"], "", rest)


@dataclass
class PoolTagFile:
    name: str
    exact: dict  # tag padded to 4 -> PoolTagOwner (first entry wins)
    patterns: list  # (compiled regex, PoolTagOwner) in file order

    @classmethod
    def parse(cls, text: str, name: str = "pooltag.txt") -> "PoolTagFile":
        exact, patterns = {}, []
        for line in text.splitlines():
            owner = parse_line(line)
            if owner is None:
                continue
            if has_wildcard(owner.tag):
                patterns.append((wildcard_regex(owner.tag), owner))
            else:
                exact.setdefault(owner.tag.ljust(4), owner)
        return cls(name, exact, patterns)

    @classmethod
    def load(cls, path) -> "PoolTagFile":
        with open(path, encoding="latin-1") as handle:  # old copies are not UTF-8
            return cls.parse(handle.read(), os.fspath(path))

    def lookup(self, tag: str) -> PoolTagOwner | None:
        tag = tag.ljust(4)
        owner = self.exact.get(tag)
        if owner is not None:
            return owner
        # The most specific pattern wins ('Gh ?' over 'G*'), then the earlier one.
        best, best_literal = None, -1
        for regex, owner in self.patterns:
            literal = sum(ch not in "*?" for ch in owner.tag)
            if literal > best_literal and regex.fullmatch(tag):
                best, best_literal = owner, literal
        return best


class PoolTagDatabase:
    """Every pooltag.txt source, in the order they are asked."""

    def __init__(self, files: list[PoolTagFile]):
        self.files = files

    @classmethod
    def default(cls, pooltag_file=None, environ=None) -> "PoolTagDatabase":
        """``pooltag_file`` first, then NTPOOL_POOLTAG's files (os.pathsep-separated), then ntpool's."""
        environ = os.environ if environ is None else environ
        paths = [(pooltag_file, "")] if pooltag_file else []
        paths += [(p, f" (from {ENVIRONMENT_VARIABLE})")
                  for p in environ.get(ENVIRONMENT_VARIABLE, "").split(os.pathsep) if p]
        files = []
        for path, source in paths:
            try:
                files.append(PoolTagFile.load(path))
            except OSError as error:  # a stale variable is named, or it looks like --pooltag's
                raise OSError(f"pooltag file {path}{source}: {error.strerror or error}") from None
        builtin = resources.files("ntpool").joinpath("data", "pooltag.txt").read_text("ascii")
        files.append(PoolTagFile.parse(builtin, "ntpool"))
        return cls(files)

    def lookup(self, tag: str) -> PoolTagOwner | None:
        for source in self.files:
            owner = source.lookup(tag)
            if owner is not None:
                return owner
        return None

    def describe(self, tag: str) -> str:
        owner = self.lookup(tag)
        if owner is None:
            return f"UNKNOWN pooltag '{tag}', please update pooltag.txt"
        return str(owner)
