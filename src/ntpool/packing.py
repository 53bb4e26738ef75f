"""x64's little-endian structures, packed by the cheapest host format that lays them out alike.

The simulated machine's memory is little-endian x64 memory. ``struct``'s standard formats
("<Q", "<QQ", ...) read and write it on any host, but CPython 3.11 converts an int to and
from a standard 8-byte field, and to a native ``unsigned long long`` ("Q"), through its
general byte-array routine (``_PyLong_AsByteArray``): about 160 machine instructions more
per 64-bit value than the digit-by-digit conversion it uses for a native ``long`` ("l",
"L"), which is 8 bytes on 64-bit Linux and macOS. An address or a pool header's QWORD is
such a value, so the pool's hot paths pack and view memory in native ``long`` where that
is 8 bytes and the host is little-endian, and in the standard formats elsewhere.

``x64_struct`` makes that choice for a structure and keeps it only when the native form
packs and unpacks exactly the bytes the standard one does (native formats align each field
to its size: a field that is not aligned in the structure keeps the standard format).
"""

import struct
import sys

if sys.byteorder != "little":  # x64 memory is read natively (memoryview casts, native structs)
    raise ImportError("ntpool's simulated x64 memory needs a little-endian host")

_LONG_IS_QWORD = struct.calcsize("@l") == 8

# The format of a memoryview of memory as unsigned / signed QWORDs (view[pa >> 3]).
QWORD_VIEW = "L" if _LONG_IS_QWORD else "Q"
SIGNED_QWORD_VIEW = "l" if _LONG_IS_QWORD else "q"


def x64_struct(little_endian_format: str) -> struct.Struct:
    """A Struct for ``little_endian_format`` ("<..."), in native ``long`` where that packs
    and unpacks the same bytes."""
    if not little_endian_format.startswith("<"):
        raise ValueError(f"{little_endian_format!r}: an x64 structure's format starts with '<'")
    standard = struct.Struct(little_endian_format)
    if not _LONG_IS_QWORD:
        return standard
    native = struct.Struct("@" + little_endian_format[1:].replace("Q", "L").replace("q", "l"))
    if native.size != standard.size:
        return standard
    pattern = bytes((index * 37 + 11) & 0xFF for index in range(standard.size))
    values = standard.unpack(pattern)
    if native.unpack(pattern) != values or native.pack(*values) != standard.pack(*values):
        return standard
    return native
