"""Pool tags: the ULONG a driver passes, and the byte-reversed text every tool shows.

A ``str`` is read the way MSVC reads a multi-character literal: 'Fred' is 0x46726564,
the first character in the high byte. Memory holds the ULONG little-endian, so the
bytes are ``d e r F`` and the debugger, poolmon and crash dumps show ``derF``.
"""

from typing import NamedTuple

from .errors import TagError

PROTECTED_POOL = 0x80000000
TAG_MASK = 0xFFFFFFFF


class Tag(NamedTuple):
    value: int  # the ULONG, PROTECTED_POOL bit included
    display: str  # as tools show it: memory order, protected bit stripped

    @property
    def protected(self) -> bool:
        return bool(self.value & PROTECTED_POOL)

    def __str__(self) -> str:
        return self.display


def _from_str(text: str) -> int:
    if not 1 <= len(text) <= 4:
        raise TagError(f"pool tag {text!r} must be 1 to 4 characters, not {len(text)}")
    value = 0
    for ch in text:
        code = ord(ch)
        if code > 0x7F:
            raise TagError(f"pool tag {text!r} holds {ch!r}, which is not 7-bit ASCII")
        value = (value << 8) | code
    return value


def _from_int(value: int) -> int:
    if not 0 <= value <= TAG_MASK:
        raise TagError(f"pool tag {value:#x} does not fit in a ULONG")
    unprotected = value & ~PROTECTED_POOL
    for shift in (0, 8, 16, 24):
        if (unprotected >> shift) & 0xFF > 0x7F:
            raise TagError(f"pool tag {value:#010x} has a byte that is not 7-bit ASCII")
    return value


def tag_value(tag) -> int:
    """The ULONG for a tag given as a C-literal string or an int; raises TagError."""
    if isinstance(tag, Tag):
        return tag.value
    if isinstance(tag, str):
        return _from_str(tag)
    if isinstance(tag, int) and not isinstance(tag, bool):
        return _from_int(tag)
    raise TagError(f"pool tag must be a str such as 'Fred' or an int, not {type(tag).__name__}")


def display(value: int) -> str:
    """The four characters tools show for a tag value (memory order, bit 31 stripped)."""
    value &= ~PROTECTED_POOL
    chars = []
    for shift in (0, 8, 16, 24):
        byte = (value >> shift) & 0xFF
        chars.append(chr(byte) if 0x20 <= byte <= 0x7E else ".")
    return "".join(chars)


def from_display(text: str) -> int:
    """The tag value whose display is ``text`` ('derF' -> 'Fred'); short text is space-padded."""
    if not 1 <= len(text) <= 4 or any(ord(c) > 0x7F for c in text):
        raise TagError(f"{text!r} is not a tag as tools show it (1 to 4 ASCII characters)")
    text = text.ljust(4)
    return int.from_bytes(text.encode("ascii"), "little")


def tag(x) -> Tag:
    """``ntpool.tag('Fred')`` -> Tag(value=0x46726564, display='derF'). Tag 0 is refused."""
    value = tag_value(x)
    if value & ~PROTECTED_POOL == 0:
        raise TagError("pool tag 0 is not a tag (an allocation with it is bug check 0xC2/0x9B)")
    return Tag(value, display(value))


def has_letter_or_digit(value: int) -> bool:
    for shift in (0, 8, 16, 24):
        byte = (value >> shift) & 0xFF
        if 0x30 <= byte <= 0x39 or 0x41 <= byte <= 0x5A or 0x61 <= byte <= 0x7A:
            return True
    return False


BIG_TAG = _from_str(" GIB")  # shows as "BIG "
DEFAULT_TAG_EX = _from_str("enoN")  # ExAllocatePool: shows "None"
DEFAULT_TAG_NDIS = _from_str("maDN")  # NdisAllocateMemory: shows "NDam"
DEFAULT_TAG_FSRTL = _from_str("trSF")  # FsRtlAllocatePool: shows "FSrt"
