"""Functions and source lines from a PDB (the MSF 7.00 format lld and MSVC's linker write).

Only what attribution needs is read: the MSF stream directory; the DBI stream's module list;
each module's symbol stream for its procedures (S_GPROC32 / S_LPROC32: section, offset,
size, name) and its C13 line information (DEBUG_S_LINES blocks of offset -> line, with the
file named through DEBUG_S_FILECHKSMS and the /names string table). Sections map to RVAs
through the image's own section table. A damaged PDB is a ValueError (symbols are then
taken from the exports), never anything worse.
"""

import struct
from typing import NamedTuple

MSF_MAGIC = b"Microsoft C/C++ MSF 7.00\r\n\x1aDS\0\0\0"
DBI_STREAM = 3
INFO_STREAM = 1
S_LPROC32, S_GPROC32, S_LPROC32_ID, S_GPROC32_ID = 0x110F, 0x1110, 0x1146, 0x1147
DEBUG_S_LINES, DEBUG_S_FILECHKSMS = 0xF2, 0xF4
MAX_BYTES = 256 << 20


class Pdb(NamedTuple):
    functions: list  # (rva, size, name)
    lines: list  # (rva, file, line)


class _Msf:
    def __init__(self, data: bytes):
        if not data.startswith(MSF_MAGIC):
            raise ValueError("not an MSF 7.00 PDB")
        block, _, blocks, directory_bytes, _, map_address = struct.unpack_from("<IIIIII", data, 32)
        if block not in (512, 1024, 2048, 4096) or blocks * block > len(data) + block:
            raise ValueError("bad MSF block size or count")
        self.data, self.block = data, block
        count = -(-directory_bytes // block)
        map_blocks = struct.unpack_from(f"<{count}I", data, map_address * block)
        directory = b"".join(self._block(b) for b in map_blocks)[:directory_bytes]
        streams = struct.unpack_from("<I", directory)[0]
        sizes = struct.unpack_from(f"<{streams}I", directory, 4)
        offset = 4 + 4 * streams
        self.streams = []
        for size in sizes:
            if size == 0xFFFFFFFF:
                self.streams.append(([], 0))
                continue
            n = -(-size // block)
            self.streams.append((struct.unpack_from(f"<{n}I", directory, offset), size))
            offset += 4 * n

    def _block(self, index: int) -> bytes:
        start = index * self.block
        if start + self.block > len(self.data) + self.block or start >= len(self.data):
            raise ValueError(f"MSF block {index} is past the end of the file")
        return self.data[start:start + self.block]

    def stream(self, index: int) -> bytes:
        if not 0 <= index < len(self.streams):
            raise ValueError(f"no stream {index}")
        blocks, size = self.streams[index]
        if size > MAX_BYTES:
            raise ValueError("stream too large")
        return b"".join(self._block(b) for b in blocks)[:size]


def _cstring(data: bytes, offset: int) -> tuple[str, int]:
    end = data.index(b"\0", offset)
    return data[offset:end].decode("utf-8", "replace"), end + 1


def _names(msf: _Msf) -> bytes:
    info = msf.stream(INFO_STREAM)
    offset = 28  # Version, Signature, Age, GUID
    strings_size = struct.unpack_from("<I", info, offset)[0]
    strings = info[offset + 4:offset + 4 + strings_size]
    offset += 4 + strings_size
    size, _ = struct.unpack_from("<II", info, offset)
    offset += 8
    present_words = struct.unpack_from("<I", info, offset)[0]
    present = struct.unpack_from(f"<{present_words}I", info, offset + 4)
    offset += 4 + 4 * present_words
    deleted_words = struct.unpack_from("<I", info, offset)[0]
    offset += 4 + 4 * deleted_words
    bits = [i for i in range(present_words * 32) if present[i // 32] >> (i % 32) & 1]
    for _ in bits[:size]:
        key, value = struct.unpack_from("<II", info, offset)
        offset += 8
        name, _ = _cstring(strings, key)
        if name == "/names":
            table = msf.stream(value)
            length = struct.unpack_from("<I", table, 8)[0]
            return table[12:12 + length]
    return b""


def read_pdb(path: str, section_rvas: list[int]) -> Pdb:
    """The functions and lines of ``path``; ``section_rvas[i]`` is section i+1's RVA."""
    with open(path, "rb") as handle:
        data = handle.read(MAX_BYTES)
    try:
        return _read(data, section_rvas)
    except (struct.error, IndexError, KeyError, UnicodeError) as error:
        raise ValueError(f"{path}: damaged PDB ({error})") from None


def _read(data: bytes, section_rvas: list[int]) -> Pdb:
    msf = _Msf(data)
    names = _names(msf)
    dbi = msf.stream(DBI_STREAM)
    module_bytes = struct.unpack_from("<i", dbi, 24)[0]
    offset, end = 64, 64 + module_bytes
    functions, lines = [], []

    def rva_of(segment: int, section_offset: int):
        if 1 <= segment <= len(section_rvas):
            return section_rvas[segment - 1] + section_offset
        return None

    while offset + 64 <= end:
        stream_index = struct.unpack_from("<H", dbi, offset + 34)[0]
        symbol_bytes, c11_bytes, c13_bytes = struct.unpack_from("<III", dbi, offset + 36)
        _, after = _cstring(dbi, offset + 64)
        _, after = _cstring(dbi, after)
        offset = (after + 3) & ~3
        if stream_index == 0xFFFF:
            continue
        module = msf.stream(stream_index)
        position = 4
        while position + 4 <= symbol_bytes:
            length, kind = struct.unpack_from("<HH", module, position)
            if kind in (S_GPROC32, S_LPROC32, S_GPROC32_ID, S_LPROC32_ID):
                size, = struct.unpack_from("<I", module, position + 16)
                code_offset, segment = struct.unpack_from("<IH", module, position + 32)
                name, _ = _cstring(module, position + 39)
                rva = rva_of(segment, code_offset)
                if rva is not None:
                    functions.append((rva, size, name))
            if length < 2:
                break
            position += 2 + length
        position = symbol_bytes + c11_bytes
        limit = position + c13_bytes
        files = {}
        subsections = []
        while position + 8 <= limit:
            kind, length = struct.unpack_from("<II", module, position)
            subsections.append((kind & 0x7FFFFFFF, position + 8, length))
            position += 8 + ((length + 3) & ~3)
        for kind, start, length in subsections:
            if kind == DEBUG_S_FILECHKSMS:
                cursor = start
                while cursor + 6 <= start + length:
                    name_offset, checksum_size = struct.unpack_from("<IB", module, cursor)
                    files[cursor - start] = _cstring(names, name_offset)[0] if names else "?"
                    cursor = (cursor + 6 + checksum_size + 3) & ~3
        for kind, start, length in subsections:
            if kind != DEBUG_S_LINES:
                continue
            base_offset, segment, flags, _ = struct.unpack_from("<IHHI", module, start)
            cursor = start + 12
            while cursor + 12 <= start + length:
                file_id, count, block = struct.unpack_from("<III", module, cursor)
                filename = files.get(file_id, "?")
                for index in range(count):
                    line_offset, line_flags = struct.unpack_from("<II", module, cursor + 12 + 8 * index)
                    line = line_flags & 0xFFFFFF
                    rva = rva_of(segment, base_offset + line_offset)
                    if rva is not None and line and line != 0xFEEFEE:
                        lines.append((rva, filename, line))
                if block < 12:
                    break
                cursor += block
    return Pdb(functions, lines)
