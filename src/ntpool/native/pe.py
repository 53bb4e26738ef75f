"""Reading a PE32+ kernel-mode image (a .sys) into a checked description.

Everything a hostile file could get wrong is checked here, before anything is mapped:
``parse_image`` either returns an ``Image`` whose every offset, size and RVA has been
bounded, or raises ``BadImage`` with one sentence naming what was wrong. pefile reads the
headers and directories; its own exceptions (and any other surprise from a malformed
file) become BadImage too.
"""

import struct
from typing import NamedTuple

import pefile

IMAGE_FILE_MACHINE_AMD64 = 0x8664
PE32_PLUS_MAGIC = 0x20B
IMAGE_SUBSYSTEM_NATIVE = 1
IMAGE_SCN_MEM_EXECUTE = 0x20000000
IMAGE_SCN_MEM_READ = 0x40000000
IMAGE_SCN_MEM_WRITE = 0x80000000
IMAGE_SCN_MEM_DISCARDABLE = 0x02000000
IMAGE_REL_BASED_ABSOLUTE = 0
IMAGE_REL_BASED_DIR64 = 10
IMAGE_ORDINAL_FLAG64 = 1 << 63
PAGE = 0x1000
# The largest image ntpool maps (Windows' own limit is far larger; a driver of 64 MiB is
# already absurd, and a hostile SizeOfImage must not make the loader allocate gigabytes).
MAX_IMAGE_BYTES = 64 << 20
MAX_IMPORTS = 4096
# Bounds on what a hostile header can make the parser walk (each far above what real drivers
# have: a few thousand relocations per MiB of code, tens of import descriptors, a few debug
# entries): past them the file is refused, so time and memory stay bounded whatever it says.
MAX_RELOCATIONS = 1 << 20  # entries, padding included
MAX_IMPORT_MODULES = 1024  # import descriptors
MAX_FUNCTIONS = 1 << 18  # RUNTIME_FUNCTIONs in the exception directory
MAX_DEBUG_ENTRIES = 64

KNOWN_MODULES = {"ntoskrnl.exe": "ntoskrnl.exe", "hal.dll": "HAL.dll", "ndis.sys": "NDIS.SYS"}


def shown(text: str) -> str:
    """A name read from the file, fit for a one-line message: printable ASCII as it is,
    anything else (a newline, a control character, a byte above 0x7E) as a \\xNN escape."""
    return "".join(c if " " <= c <= "~" and c != "\\" else f"\\x{ord(c):02x}" for c in text)


class BadImage(ValueError):
    """A file that is not a loadable x64 kernel-mode PE image; the message says why."""


class Section(NamedTuple):
    name: str
    rva: int
    virtual_size: int  # bytes the section spans in memory (page-rounded when mapped)
    raw: bytes  # initialised contents (the rest is zero)
    characteristics: int

    @property
    def writable(self) -> bool:
        return bool(self.characteristics & IMAGE_SCN_MEM_WRITE)

    @property
    def executable(self) -> bool:
        return bool(self.characteristics & IMAGE_SCN_MEM_EXECUTE)


class Import(NamedTuple):
    module: str  # canonical spelling: "ntoskrnl.exe", "HAL.dll", "NDIS.SYS"
    name: str | None  # None: imported by ordinal only
    ordinal: int | None
    iat_rva: int  # where the loader writes the routine's address


class Image(NamedTuple):
    name: str
    preferred_base: int
    size_of_image: int
    size_of_headers: int
    entry_rva: int
    headers: bytes
    sections: tuple[Section, ...]
    relocations: tuple[int, ...]  # RVAs of 64-bit absolute addresses to rebase
    imports: tuple[Import, ...]
    exports: dict  # name -> RVA
    pdata: tuple[int, int]  # (rva, size) of the exception directory (0, 0: none)
    debug_pdb: str  # the PDB path recorded in the CodeView debug entry ("" if none)
    data: bytes  # the file itself


def parse_image(data: bytes, name: str = "driver.sys") -> Image:
    """The checked description of ``data``; BadImage if it is not a loadable .sys."""
    if not isinstance(data, (bytes, bytearray)):
        raise BadImage(f"{name}: expected the bytes of a PE file")
    data = bytes(data)
    try:
        return _parse(data, name)
    except BadImage:
        raise
    except (pefile.PEFormatError, struct.error, ValueError, IndexError, KeyError, TypeError,
            AttributeError, OverflowError, UnicodeError, RecursionError, MemoryError) as error:
        raise BadImage(f"{name}: malformed PE image ({error})") from None


DOS_HEADER_BYTES = 0x40  # IMAGE_DOS_HEADER, whose last field, e_lfanew (at 0x3C), says where the PE signature is
NT_SIGNATURE = b"PE\0\0"
FILE_HEADER_BYTES = 20  # IMAGE_FILE_HEADER, after the signature
OPTIONAL_HEADER_FIXED_BYTES = 112  # IMAGE_OPTIONAL_HEADER64 up to NumberOfRvaAndSizes
SECTION_HEADER_BYTES = 40  # IMAGE_SECTION_HEADER


def _check_nt_headers_present(data: bytes, name: str) -> None:
    """The DOS header, the PE signature and the file header are in the file: said in our own
    words, where pefile's ("Invalid e_lfanew value") or a bare "no MZ header" for a file that
    starts with MZ but stops short left the user guessing."""
    if data[:2] != b"MZ":
        raise BadImage(f"{name}: not a PE image (no MZ header)")
    if len(data) < DOS_HEADER_BYTES:
        raise BadImage(f"{name}: truncated: {len(data)} byte(s), where the DOS header "
                       f"(IMAGE_DOS_HEADER, up to e_lfanew) alone needs {DOS_HEADER_BYTES}")
    e_lfanew = int.from_bytes(data[0x3C:DOS_HEADER_BYTES], "little")
    end = e_lfanew + len(NT_SIGNATURE) + FILE_HEADER_BYTES
    if end > len(data):
        raise BadImage(f"{name}: malformed PE image: e_lfanew {e_lfanew:#x} puts the PE "
                       f"signature and file header at {e_lfanew:#x}-{end:#x}, past the file's "
                       f"end ({len(data)} bytes): the file is truncated or e_lfanew is wrong")
    if data[e_lfanew:e_lfanew + len(NT_SIGNATURE)] != NT_SIGNATURE:
        raise BadImage(f"{name}: not a PE image (no PE signature at e_lfanew {e_lfanew:#x})")
    _check_optional_header_present(data, name, e_lfanew + len(NT_SIGNATURE))


def _check_optional_header_present(data: bytes, name: str, file_header: int) -> None:
    """The optional header (SizeOfOptionalHeader bytes after the file header) and the section
    table after it are in the file, and the optional header is large enough for a PE32+ one:
    said with the offsets and sizes, where pefile said "No Optional Header found, invalid
    PE32 or PE32+ file" or "Data length less than expected header length", or read the
    missing bytes as zeros."""
    sections, optional_size = struct.unpack_from("<H12xH", data, file_header + 2)
    optional = file_header + FILE_HEADER_BYTES
    end = optional + optional_size
    if end > len(data):
        raise BadImage(f"{name}: truncated: the optional header (SizeOfOptionalHeader "
                       f"{optional_size} bytes) spans {optional:#x}-{end:#x}, past the file's "
                       f"end ({len(data)} bytes)")
    if optional_size >= 2:
        magic = int.from_bytes(data[optional:optional + 2], "little")
        if magic != PE32_PLUS_MAGIC:
            raise BadImage(f"{name}: not a PE32+ image (optional header magic {magic:#x})")
    if optional_size < OPTIONAL_HEADER_FIXED_BYTES:
        raise BadImage(f"{name}: malformed PE image: SizeOfOptionalHeader {optional_size} is "
                       f"smaller than a PE32+ optional header's {OPTIONAL_HEADER_FIXED_BYTES} "
                       f"bytes before its data directories")
    table_end = end + sections * SECTION_HEADER_BYTES
    if table_end > len(data):
        raise BadImage(f"{name}: truncated: the section table ({sections} section header(s) "
                       f"of {SECTION_HEADER_BYTES} bytes) spans {end:#x}-{table_end:#x}, past "
                       f"the file's end ({len(data)} bytes)")


def _parse(data: bytes, name: str) -> Image:
    _check_nt_headers_present(data, name)
    pe = pefile.PE(data=data, fast_load=True)
    if pe.FILE_HEADER.Machine != IMAGE_FILE_MACHINE_AMD64:
        raise BadImage(f"{name}: machine {pe.FILE_HEADER.Machine:#x} is not x64 (0x8664)")
    optional = pe.OPTIONAL_HEADER
    if optional.Magic != PE32_PLUS_MAGIC:
        raise BadImage(f"{name}: not a PE32+ image (optional header magic {optional.Magic:#x})")
    if optional.Subsystem != IMAGE_SUBSYSTEM_NATIVE:
        raise BadImage(f"{name}: subsystem {optional.Subsystem} is not native (1): "
                       f"not a kernel-mode driver")
    size = optional.SizeOfImage
    if not 0 < size <= MAX_IMAGE_BYTES:
        raise BadImage(f"{name}: SizeOfImage {size:#x} is not between 1 byte and "
                       f"{MAX_IMAGE_BYTES:#x}")
    size = (size + PAGE - 1) & ~(PAGE - 1)
    base = optional.ImageBase
    if base & 0xFFFF or not 0 < base < 1 << 64:
        raise BadImage(f"{name}: ImageBase {base:#x} is not 64 KiB aligned")
    headers_size = optional.SizeOfHeaders
    if not 0 < headers_size <= min(size, len(data)):
        raise BadImage(f"{name}: SizeOfHeaders {headers_size:#x} is outside the image")

    sections = []
    spans = []
    for section in pe.sections:
        section_name = shown(section.Name.rstrip(b"\0").decode("latin-1"))
        rva = section.VirtualAddress
        virtual = section.Misc_VirtualSize or section.SizeOfRawData
        if rva % PAGE and optional.SectionAlignment >= PAGE:
            raise BadImage(f"{name}: section {section_name} at RVA {rva:#x} is not page aligned")
        if rva < headers_size or rva + virtual > size or virtual > MAX_IMAGE_BYTES:
            raise BadImage(f"{name}: section {section_name} (RVA {rva:#x}, {virtual:#x} bytes) "
                           f"lies outside SizeOfImage {size:#x}")
        raw_size = min(section.SizeOfRawData, virtual)
        offset = section.PointerToRawData
        if raw_size and (offset + raw_size > len(data)):
            raise BadImage(f"{name}: section {section_name}'s data ({raw_size:#x} bytes at file "
                           f"offset {offset:#x}) runs past the end of the file ({len(data):#x})")
        spans.append((rva, rva + virtual, section_name))
        sections.append(Section(section_name, rva, virtual, data[offset:offset + raw_size],
                                section.Characteristics))
    spans.sort()
    for (a_start, a_end, a_name), (b_start, b_end, b_name) in zip(spans, spans[1:]):
        if b_start < a_end:
            raise BadImage(f"{name}: sections {a_name} and {b_name} overlap")
    entry = optional.AddressOfEntryPoint
    if not any(s.executable and s.rva <= entry < s.rva + s.virtual_size for s in sections):
        raise BadImage(f"{name}: entry point RVA {entry:#x} is not in an executable section")

    directories = optional.DATA_DIRECTORY

    def directory(index: int) -> tuple[int, int]:
        if index >= len(directories):
            return 0, 0
        entry = directories[index]
        if not entry.VirtualAddress:
            return 0, 0
        if entry.VirtualAddress + entry.Size > size:
            raise BadImage(f"{name}: data directory {index} ({entry.VirtualAddress:#x}, "
                           f"{entry.Size:#x} bytes) lies outside the image")
        return entry.VirtualAddress, entry.Size

    image = bytearray(size)
    image[:headers_size] = data[:headers_size]
    for section in sections:
        image[section.rva:section.rva + len(section.raw)] = section.raw

    relocations = _relocations(image, *directory(5), size, name)
    imports = _imports(image, *directory(1), size, name)
    exports = _exports(image, *directory(0), size)
    pdata = directory(3)
    if pdata[1] // 12 > MAX_FUNCTIONS:
        raise BadImage(f"{name}: the exception directory lists {pdata[1] // 12} functions, more "
                       f"than the {MAX_FUNCTIONS} ntpool reads")
    debug_pdb = _pdb_path(image, *directory(6), size)
    return Image(name, base, size, headers_size, entry, data[:headers_size], tuple(sections),
                 relocations, imports, exports, pdata, debug_pdb, data)


def _u32(image, offset: int) -> int:
    return struct.unpack_from("<I", image, offset)[0]


def _cstring(image, rva: int, size: int, limit: int = 512) -> str:
    if not 0 < rva < size:
        raise BadImage(f"string RVA {rva:#x} is outside the image")
    end = image.find(b"\0", rva, min(size, rva + limit))
    if end < 0:
        raise BadImage(f"string at RVA {rva:#x} is not terminated")
    return bytes(image[rva:end]).decode("latin-1")


def _relocations(image, rva: int, dir_size: int, size: int, name: str) -> tuple[int, ...]:
    found = []
    offset = rva
    end = rva + dir_size
    entries = 0
    while offset + 8 <= end:
        page, block = struct.unpack_from("<II", image, offset)
        if block < 8 or offset + block > end or block & 1:
            raise BadImage(f"{name}: base relocation block at RVA {offset:#x} has a bad size {block}")
        entries += (block - 8) // 2
        if entries > MAX_RELOCATIONS:
            raise BadImage(f"{name}: more than {MAX_RELOCATIONS} base relocation entries")
        for entry in struct.unpack_from(f"<{(block - 8) // 2}H", image, offset + 8):
            kind, where = entry >> 12, page + (entry & 0xFFF)
            if kind == IMAGE_REL_BASED_ABSOLUTE:
                continue
            if kind != IMAGE_REL_BASED_DIR64:
                raise BadImage(f"{name}: base relocation type {kind} at RVA {where:#x} is not "
                               f"an x64 one (DIR64)")
            if where + 8 > size:
                raise BadImage(f"{name}: base relocation at RVA {where:#x} is outside the image")
            found.append(where)
        offset += block
    return tuple(found)


def _imports(image, rva: int, dir_size: int, size: int, name: str) -> tuple[Import, ...]:
    found: list[Import] = []
    if not rva:
        return ()
    offset = rva
    while True:
        if offset + 20 > size:
            raise BadImage(f"{name}: import directory runs past the image")
        if offset >= rva + 20 * MAX_IMPORT_MODULES:
            raise BadImage(f"{name}: more than {MAX_IMPORT_MODULES} import descriptors (no "
                           f"null descriptor ends the list)")
        lookup, _, _, name_rva, iat = struct.unpack_from("<IIIII", image, offset)
        if not (lookup or name_rva or iat):
            break
        module = _cstring(image, name_rva, size)
        canonical = KNOWN_MODULES.get(module.lower())
        if canonical is None:
            raise BadImage(f"{name}: imports from {shown(module)}, a module ntpool does not provide "
                           f"(it provides {', '.join(KNOWN_MODULES.values())})")
        thunk = lookup or iat
        index = 0
        while True:
            entry_rva = thunk + index * 8
            if entry_rva + 8 > size or iat + index * 8 + 8 > size:
                raise BadImage(f"{name}: import table of {canonical} runs past the image")
            value = struct.unpack_from("<Q", image, entry_rva)[0]
            if not value:
                break
            if value & IMAGE_ORDINAL_FLAG64:
                found.append(Import(canonical, None, value & 0xFFFF, iat + index * 8))
            else:
                hint_rva = value & 0x7FFFFFFF
                found.append(Import(canonical, _cstring(image, hint_rva + 2, size), None,
                                    iat + index * 8))
            index += 1
            if len(found) > MAX_IMPORTS:
                raise BadImage(f"{name}: more than {MAX_IMPORTS} imports")
        offset += 20
    return tuple(found)


def _exports(image, rva: int, dir_size: int, size: int) -> dict:
    if not rva or rva + 40 > size:
        return {}
    (_, _, _, _, _, _, functions_count, names_count, functions, names,
     ordinals) = struct.unpack_from("<IIHHIIIIIII", image, rva)
    result = {}
    for index in range(min(names_count, 65536)):
        if names + index * 4 + 4 > size or ordinals + index * 2 + 2 > size:
            break
        name_rva = _u32(image, names + index * 4)
        ordinal = struct.unpack_from("<H", image, ordinals + index * 2)[0]
        if ordinal >= functions_count or functions + ordinal * 4 + 4 > size:
            continue
        try:
            result[_cstring(image, name_rva, size)] = _u32(image, functions + ordinal * 4)
        except BadImage:
            continue
    return result


def _pdb_path(image, rva: int, dir_size: int, size: int) -> str:
    for offset in range(rva, min(rva + dir_size - 27, rva + 28 * MAX_DEBUG_ENTRIES), 28):
        kind, data_rva = _u32(image, offset + 12), _u32(image, offset + 20)
        if kind == 2 and data_rva and data_rva + 24 < size and image[data_rva:data_rva + 4] == b"RSDS":
            try:
                return _cstring(image, data_rva + 24, size)
            except BadImage:
                return ""
    return ""
