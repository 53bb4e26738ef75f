"""Pool tags: the ULONG a driver passes, and the byte-reversed text every tool shows.

Any ULONG is a tag, as it is to a retail kernel (only Driver Verifier refuses some, in
``ntpool.verifier``). A ``str`` is read the way MSVC reads a multi-character literal:
'Fred' is 0x46726564, the first character in the high byte; characters U+0080-U+00FF
are their Latin-1 bytes ('Pr\xe9f'), so every byte value can be written. Memory holds the
ULONG little-endian, so the bytes are ``d e r F`` and the debugger, poolmon and crash
dumps show ``derF``. A tag with a byte that is not printable ASCII (outside 0x20-0x7E)
is shown as its ULONG in hex, ``0xdeadbeef``, as ReactOS's kernel debugger prints such
a tag, and WinDbg's ``!poolfind`` takes a tag given as ``0x`` and hex digits.
"""

from typing import NamedTuple

from .errors import TagError

PROTECTED_POOL = 0x80000000
TAG_MASK = 0xFFFFFFFF


class Tag(NamedTuple):
    value: int  # the ULONG, PROTECTED_POOL bit included
    display: str  # as tools show it (see display): protected bit stripped

    @property
    def protected(self) -> bool:
        return bool(self.value & PROTECTED_POOL)

    def __str__(self) -> str:
        return self.display


def _from_str(text: str) -> int:
    if not 1 <= len(text) <= 4:
        raise TagError(f"pool tag {text!r} must be 1 to 4 characters, not {len(text)}")
    try:
        return int.from_bytes(text.encode("latin-1"), "big")
    except UnicodeEncodeError:
        bad = next(ch for ch in text if ord(ch) > 0xFF)
        raise TagError(f"pool tag {text!r} holds {bad!r} (U+{ord(bad):04X}), which is not one "
                       "byte: a tag's characters are Latin-1 (U+0000-U+00FF)") from None


def _from_int(value: int) -> int:
    if not 0 <= value <= TAG_MASK:
        raise TagError(f"pool tag {value:#x} does not fit in a ULONG")
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


def _shown(value: int) -> str:
    data = value.to_bytes(4, "little")
    if data.isascii() and data.decode("ascii").isprintable():  # every byte 0x20-0x7E
        return data.decode("ascii")
    return f"0x{value:08x}"


# Tags repeat: each one's text is worked out once.
_SHOWN: dict[int, str] = {}


def display(value: int) -> str:
    """The text tools show for a tag value, bit 31 stripped: the four bytes in memory order
    when all are printable ASCII ('derF'), else the ULONG in hex ('0xdeadbeef')."""
    value &= 0x7FFFFFFF
    text = _SHOWN.get(value)
    if text is None:
        text = _shown(value)
        if len(_SHOWN) < 65536:
            _SHOWN[value] = text
    return text


def is_hex_tag(text: str) -> bool:
    """``0x`` and 1-8 hex digits: a tag given as its ULONG, as WinDbg's ``!poolfind`` takes a
    TagValue (a debugger argument starting ``0x`` is one). Tools show one with 8 digits."""
    return len(text) > 2 and len(text) <= 10 and text.startswith("0x") and \
        all(c in "0123456789abcdefABCDEF" for c in text[2:])


def from_display(text: str) -> int:
    """The tag value whose display is ``text``: 'derF' -> 'Fred' (short text is space-padded),
    '0xdeadbeef' -> 0xDEADBEEF. Characters U+0080-U+00FF are their Latin-1 bytes."""
    if len(text) == 10 and is_hex_tag(text):  # (a 4-character tag such as '0x1f' stays one)
        return int(text, 16)
    if not 1 <= len(text) <= 4 or any(ord(c) > 0xFF for c in text):
        raise TagError(f"{text!r} is not a tag as tools show it (1 to 4 characters, or 0x "
                       "and 8 hex digits)")
    return int.from_bytes(text.ljust(4).encode("latin-1"), "little")


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
