"""The printf family ntoskrnl exports from its C runtime (msvcrt's semantics), which
ntstrsafe's RtlStringCb*Printf* and drivers call: _snprintf, _snwprintf, _vsnprintf,
_vsnwprintf, sprintf, swprintf, vsprintf; and the formatter DbgPrint uses.

The format and every string argument are read from the machine's memory (a bad pointer
faults as the CRT's read would: 0x1E for NULL-page and user addresses, 0x50 where nothing is
mapped; a NULL string prints "(null)"); the output is written into the caller's buffer
through the machine as it is made, so an uncounted sprintf into a buffer too small runs over
what follows it, as on Windows. A counted form writes at most Count characters: when the
text and its terminator fit it returns the length; when the text is exactly Count
characters it writes them with no terminator and returns Count; when it is longer it
writes Count characters, no terminator, and returns -1 (msvcrt's _snprintf contract).

Conversions: d i u x X o c C s S Z p n and % (e E f g G from the argument's bits), with the
flags - + space # 0, width and precision (numbers or *), and the sizes h hh l ll w I I32 I64
(z j t L are read as 64-bit). In a narrow format %s is narrow and %S wide, in a wide one the
reverse; h forces narrow and l/w wide; %wZ prints a UNICODE_STRING, %Z an ANSI_STRING.
Wide text written to a narrow buffer is converted by code page 1252's Latin-1 part ('?'
otherwise). Arguments come from the caller: a compiled driver's registers and stack or its
va_list (8-byte slots), a Python driver's ints (a str is taken as the string itself).
"""

from __future__ import annotations

import re
import struct

from ..packing import x64_struct
from .registry import register_type, routine
from .runtime import MAX_STRING, read_c_string

_FORMAT = re.compile(r"%([-+ #0]*)(\*|[0-9]+)?(?:\.(\*|[0-9]*))?(hh|h|ll|l|w|I64|I32|I|z|j|t|L)?(.)", re.S)
_Q = x64_struct("<Q")
register_type("va_list", 8, pointer=True)

PIECE = 0x1000  # characters of padding made at once (a width of 2**31 is written piece by piece)
FLOAT_PRECISION_LIMIT = 350  # digits msvcrt can produce for a double
DBGPRINT_LIMIT = 1 << 20  # characters DbgPrint's text is cut to (Windows' own limit is lower)


class NotEnoughArguments(TypeError):
    """A Python caller passed fewer arguments than its format converts."""


class PythonArguments:
    """A Python driver's variadic arguments."""

    def __init__(self, values):
        self.values = list(values)
        self.index = 0

    def next(self):
        if self.index >= len(self.values):
            raise NotEnoughArguments(f"the format needs more than the {len(self.values)} "
                                     f"argument(s) passed")
        value = self.values[self.index]
        self.index += 1
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise TypeError(f"printf argument {self.index} must be an int (or a str for a "
                            f"string), got {type(value).__name__}")
        return value


class VaList:
    """A va_list: a pointer to consecutive 8-byte slots in the machine's memory."""

    def __init__(self, kernel, address: int):
        self.kernel = kernel
        self.address = address

    def next(self) -> int:
        value = _Q.unpack(self.kernel.read(self.address, 8))[0]
        self.address += 8
        return value


def read_cstring(kernel, address: int, limit: int = MAX_STRING) -> bytes:
    """A %s argument's bytes: "(null)" for NULL, as the kernel's CRT prints it."""
    if not address:
        return b"(null)"
    return read_c_string(kernel, address, limit)


def _read_wrapping(kernel, address: int, size: int) -> bytes:
    """``size`` bytes at ``address`` as the processor reads them: past the top of the
    address space, on from 0 (the first byte on a page not mapped faults, the top page
    first), so a pointer near the top ends in the page fault's bug check."""
    head = min(size, (1 << 64) - address)
    data = kernel.read(address, head)
    return data + kernel.read(0, size - head) if head < size else data


def read_wide_chars(kernel, address: int, limit: int = MAX_STRING) -> str:
    """The characters of a NUL-terminated wide string (at most ``limit``), read a 64-byte-
    aligned piece at a time as read_c_string reads narrow ones (a character at a time when
    the string is not 2-byte aligned)."""
    out = bytearray()
    aligned = not address & 1
    while len(out) < 2 * limit:
        at = (address + len(out)) & 0xFFFFFFFFFFFFFFFF
        chunk = kernel.read(at, 64 - (at & 63)) if aligned else _read_wrapping(kernel, at, 2)
        for index in range(0, len(chunk), 2):
            if chunk[index] == 0 and chunk[index + 1] == 0:
                out += chunk[:index]
                return bytes(out[:2 * limit]).decode("utf-16-le", "replace")
        out += chunk
    return bytes(out[:2 * limit]).decode("utf-16-le", "replace")


def read_wstring(kernel, address: int, limit: int = MAX_STRING) -> str:
    """A %S argument's characters: "(null)" for NULL."""
    if not address:
        return "(null)"
    return read_wide_chars(kernel, address, limit)


def read_unicode_string(kernel, address: int, limit: int = MAX_STRING) -> str:
    if not address:
        return "(null)"
    length, _, buffer = struct.unpack("<HHxxxxQ", _read_wrapping(kernel, address, 16))
    if not buffer:
        return "(null)"
    return kernel.read(buffer, min(length & ~1, 2 * limit)).decode("utf-16-le", "replace")


def read_ansi_string(kernel, address: int, limit: int = MAX_STRING) -> str:
    if not address:
        return "(null)"
    length, _, buffer = struct.unpack("<HHxxxxQ", _read_wrapping(kernel, address, 16))
    if not buffer:
        return "(null)"
    return kernel.read(buffer, min(length, limit)).decode("latin-1")


def _signed(value: int, size: int) -> int:
    bits = size * 8
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


def _int_argument(args) -> int:
    value = args.next()
    if isinstance(value, str):
        raise TypeError("a str was passed where the format converts a number")
    return value


def _padded(prefix: str, zeros: int, body: str, width: int, left: bool):
    """The pieces of one conversion: ``prefix``, ``zeros`` "0"s, ``body``, padded with
    spaces to ``width`` (on the right when ``left``). Counts, not strings, for padding."""
    used = len(prefix) + zeros + len(body)
    pad = max(0, width - used)
    pieces = []
    if pad and not left:
        pieces.append((" ", pad))
    if prefix:
        pieces.append(prefix)
    if zeros:
        pieces.append(("0", zeros))
    if body:
        pieces.append(body)
    if pad and left:
        pieces.append((" ", pad))
    return pieces


def _integer(value: int, conversion: str, flags: str, width: int, precision: int | None, bits: int):
    value &= (1 << bits) - 1
    sign = ""
    if conversion in "di":
        value = _signed(value, bits // 8)
        if value < 0:
            sign, value = "-", -value
        elif "+" in flags:
            sign = "+"
        elif " " in flags:
            sign = " "
    if conversion in "xX":
        digits = format(value, conversion)
        if "#" in flags and value:
            sign = "0" + conversion
    elif conversion == "o":
        digits = format(value, "o")
    else:
        digits = str(value)
    zeros = 0
    if precision is not None:
        if precision == 0 and value == 0:
            digits = ""
        zeros = max(0, precision - len(digits))
    if conversion == "o" and "#" in flags and not zeros and not digits.startswith("0"):
        digits = "0" + digits  # the alternate form's first digit is 0
    if precision is None and "0" in flags and "-" not in flags:
        zeros = max(0, width - len(sign) - len(digits))
    return _padded(sign, zeros, digits, width, "-" in flags)


def _text(text: str, flags: str, width: int, precision: int | None):
    if precision is not None:
        text = text[:precision]
    return _padded("", 0, text, width, "-" in flags)


def format_pieces(kernel, fmt: str, args, wide: bool, written):
    """Yield the output of ``fmt`` (the format's characters) piece by piece:
    a str, or (character, count) for padding. ``written()`` says how many characters are out
    so far (for %n)."""
    position = 0
    for match in _FORMAT.finditer(fmt):
        if match.start() > position:
            yield fmt[position:match.start()]
        position = match.end()
        flags, width_text, precision_text, size, conversion = match.groups()
        size = size or ""
        conv = conversion
        if conv == "%":
            yield "%"
            continue
        width = 0
        if width_text == "*":
            width = _signed(_int_argument(args), 4)
            if width < 0:
                flags, width = flags + "-", -width
        elif width_text:
            width = min(int(width_text), 0x7FFFFFFF)
        precision = None
        if precision_text == "*":
            precision = _signed(_int_argument(args), 4)
            if precision < 0:
                precision = None  # a negative precision is taken as omitted
        elif precision_text is not None:
            precision = min(int(precision_text or "0"), 0x7FFFFFFF)
        if conv in "diuxXo":
            bits = 64 if size in ("ll", "I64", "I", "z", "j", "t", "L") else \
                16 if size == "h" else 8 if size == "hh" else 32
            yield from _integer(_int_argument(args), conv, flags, width, precision, bits)
        elif conv == "p":
            yield from _padded("", 0, f"{_int_argument(args) & (1 << 64) - 1:016X}", width, "-" in flags)
        elif conv in "sS":
            narrow = (conv == "s") != wide
            if size in ("w", "l"):
                narrow = False
            elif size == "h":
                narrow = True
            value = args.next()
            limit = MAX_STRING if precision is None else min(precision, MAX_STRING)
            if isinstance(value, str):
                text = value
            elif narrow:
                text = read_cstring(kernel, value, limit).decode("latin-1")
            else:
                text = read_wstring(kernel, value, limit)
            yield from _text(text, flags, width, precision)
        elif conv == "Z":
            value = args.next()
            limit = MAX_STRING if precision is None else min(precision, MAX_STRING)
            if isinstance(value, str):
                text = value
            elif size == "w":
                text = read_unicode_string(kernel, value, limit)
            else:
                text = read_ansi_string(kernel, value, limit)
            yield from _text(text, flags, width, precision)
        elif conv in "cC":
            narrow = (conv == "c") != wide
            if size in ("w", "l"):
                narrow = False
            elif size == "h":
                narrow = True
            value = _int_argument(args)
            yield from _padded("", 0, chr(value & (0xFF if narrow else 0xFFFF)), width, "-" in flags)
        elif conv in "eEfgG":
            number = struct.unpack("<d", _Q.pack(_int_argument(args) & (1 << 64) - 1))[0]
            digits = 6 if precision is None else min(precision, FLOAT_PRECISION_LIMIT)
            body = ("%" + flags.replace("-", "").replace("0", "") + "." + str(digits) + conv) % number
            if "0" in flags and "-" not in flags and body[:1] in "+- " and width > len(body):
                yield from _padded(body[0], width - len(body), body[1:], width, False)
            elif "0" in flags and "-" not in flags:
                yield from _padded("", max(0, width - len(body)), body, width, False)
            else:
                yield from _padded("", 0, body, width, "-" in flags)
        elif conv == "n":
            target = _int_argument(args)
            kernel.write(target, (written() & 0xFFFFFFFF).to_bytes(4, "little"))
        else:
            yield match.group(0)  # not a conversion: printed as it stands
    if position < len(fmt):
        yield fmt[position:]


def format_c(kernel, fmt: str, args, wide: bool = False, limit: int = DBGPRINT_LIMIT) -> str:
    """The whole text of a format, cut to ``limit`` characters (DbgPrint's)."""
    out: list[str] = []
    count = 0
    for piece in format_pieces(kernel, fmt, args, wide, lambda: count):
        if isinstance(piece, tuple):
            piece = piece[0] * min(piece[1], limit - count)
        piece = piece[:limit - count]
        out.append(piece)
        count += len(piece)
        if count >= limit:
            break
    return "".join(out)


class _Output:
    """Characters written into the caller's buffer as they are made (at most ``count`` when
    counted: the rest is only counted, its arguments still read as the CRT reads them),
    through the machine."""

    def __init__(self, kernel, buffer: int, count: int | None, wide: bool):
        self.kernel = kernel
        self.buffer = buffer
        self.room = count  # characters the buffer may still take (None: not counted)
        self.unit = 2 if wide else 1
        self.wide = wide
        self.length = 0  # characters made

    def encode(self, text: str) -> bytes:
        return text.encode("utf-16-le", "replace") if self.wide else text.encode("latin-1", "replace")

    def add(self, text: str) -> None:
        if self.room is not None:
            text = text[:self.room]
            self.room -= len(text)
        if text:
            self.kernel.write(self.buffer + self.length * self.unit, self.encode(text))

    def put(self, piece) -> None:
        if isinstance(piece, str):
            self.add(piece)
            self.length += len(piece)
            return
        character, repeat = piece
        if self.room is not None:
            self.add(character * min(repeat, self.room))
            self.length += repeat
            return
        while repeat:  # an uncounted width of 2**31 is written until the memory ends
            step = min(repeat, PIECE)
            self.add(character * step)
            self.length += step
            repeat -= step


def print_into(kernel, buffer: int, count: int | None, fmt: str, args, wide: bool) -> int:
    """The printf family's body: the text written into ``buffer`` (``count`` characters at
    most when counted), and the return value as msvcrt gives it (-1: did not fit)."""
    out = _Output(kernel, buffer, count, wide)
    for piece in format_pieces(kernel, fmt, args, wide, lambda: out.length):
        out.put(piece)
    if count is not None and out.length > count:
        return -1
    if count is None or out.length < count:
        kernel.write(buffer + out.length * out.unit, b"\0" * out.unit)
    return out.length


def format_text(kernel, Format, wide: bool) -> str:
    """The format's characters, from the machine's memory (NULL faults, as the CRT's read of
    it) or a Python str."""
    if isinstance(Format, str):
        return Format
    if isinstance(Format, bool) or not isinstance(Format, int):
        raise TypeError(f"Format must be an address or a str, got {type(Format).__name__}")
    if wide:
        return read_wide_chars(kernel, Format)
    return read_c_string(kernel, Format).decode("latin-1")


def _count(Count) -> int:
    if isinstance(Count, bool) or not isinstance(Count, int):
        raise TypeError(f"Count must be an int, got {type(Count).__name__}")
    return Count & (1 << 64) - 1


class PrintfRoutines:
    @routine("INT _snprintf(PCHAR Buffer, SIZE_T Count, PCSTR Format, ...)")
    def _snprintf(self, Buffer, Count, Format, *Arguments) -> int:
        """At most Count characters of the text into Buffer; its length, or -1 if longer."""
        return print_into(self, Buffer, _count(Count), format_text(self, Format, False),
                          PythonArguments(Arguments), False)

    @routine("INT _snwprintf(PWSTR Buffer, SIZE_T Count, PCWSTR Format, ...)")
    def _snwprintf(self, Buffer, Count, Format, *Arguments) -> int:
        return print_into(self, Buffer, _count(Count), format_text(self, Format, True),
                          PythonArguments(Arguments), True)

    @routine("INT _vsnprintf(PCHAR Buffer, SIZE_T Count, PCSTR Format, va_list ArgList)")
    def _vsnprintf(self, Buffer, Count, Format, ArgList) -> int:
        """As _snprintf, the arguments from a va_list (the address of 8-byte slots)."""
        return print_into(self, Buffer, _count(Count), format_text(self, Format, False),
                          VaList(self, ArgList), False)

    @routine("INT _vsnwprintf(PWSTR Buffer, SIZE_T Count, PCWSTR Format, va_list ArgList)")
    def _vsnwprintf(self, Buffer, Count, Format, ArgList) -> int:
        return print_into(self, Buffer, _count(Count), format_text(self, Format, True),
                          VaList(self, ArgList), True)

    @routine("INT sprintf(PCHAR Buffer, PCSTR Format, ...)")
    def sprintf(self, Buffer, Format, *Arguments) -> int:
        """The whole text and its terminator into Buffer, however long: its length."""
        return print_into(self, Buffer, None, format_text(self, Format, False),
                          PythonArguments(Arguments), False)

    @routine("INT swprintf(PWSTR Buffer, PCWSTR Format, ...)")
    def swprintf(self, Buffer, Format, *Arguments) -> int:
        return print_into(self, Buffer, None, format_text(self, Format, True),
                          PythonArguments(Arguments), True)

    @routine("INT vsprintf(PCHAR Buffer, PCSTR Format, va_list ArgList)")
    def vsprintf(self, Buffer, Format, ArgList) -> int:
        return print_into(self, Buffer, None, format_text(self, Format, False),
                          VaList(self, ArgList), False)
