"""The symbol file (volatility3's ISF) for ntpool's dumps, made from the layouts the writer uses.

volatility3 identifies a Windows kernel by the CodeView record in its image (GUID and age of
``ntkrnlmp.pdb``) and loads the Intermediate Symbol Format file with that GUID: types, enums
and symbol addresses (offsets from the kernel's base). ntpool generates that file from the
same definitions its dumps are written with: the pool structures of ``ntpool.pool.layout``,
POOL_TYPE of ``ntpool.constants``, the image's globals of ``ntpool.dump.image``. The GUID
is a hash of everything else in the file, so a change of layout is a new GUID and no
analyser can pair a dump with a stale symbol file.

volatility3's kernel symbol table also insists on 29 object types that the pool plugins
never read (_EPROCESS, _FILE_OBJECT, ...): they are here as opaque structures with their
Windows 7 SP1 x64 sizes and the few fields its version checks look at. Plugins that walk
those objects (pslist, filescan) are not supported.

Each modelled build has its own file: Windows 7's, and one per segment-heap build (Windows
10 and 11), whose _POOL_TRACKER_BIG_PAGES is the build's (0x18 bytes before 20348, 0x20
with ProcessBilled from it; PoolType a 12-bit field at bit 8), whose _POOL_TRACKER_TABLE
has 64-bit counters, and whose metadata carries the PE version (10.0.BUILD), which is how
volatility3 tells Windows 10 from older kernels. volatility3's bigpools reads the entry
layout from the symbol file when it has one (its own bigpools-win10 fallback is 0x18 bytes
only), so a Windows 11 dump needs the 0x20-byte type here. Every function takes the
machine's ``windows`` (None: Windows 7).

The files ship in the package (``package_symbols_directory``) and the machine's is written
beside every dump (``install_symbols``); ``-s`` takes the folder that holds ``windows/``.
"""

import hashlib
import json
import lzma
import os
import uuid
from functools import lru_cache

from ..constants import PoolType
from ..pool.layout import LIST_ENTRY, WINDOWS7
from ..pool.segment_heap.layout import BIG_PAGE_TYPE_BITS, segment_heap_layouts
from ..windows import BUILDS, windows_version
from . import image

FORMAT = "6.2.0"
SYMBOLS_FOLDER = "symbols"  # beside a dump: DIR/symbols/windows/ntkrnlmp.pdb/GUID-AGE.json.xz
_PACKAGE_DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data",
                             "volatility3")

_BASE_TYPES = {
    "char": (1, True, "char"), "unsigned char": (1, False, "char"),
    "short": (2, True, "int"), "unsigned short": (2, False, "int"),
    "long": (4, True, "int"), "unsigned long": (4, False, "int"),
    "int": (4, True, "int"), "unsigned int": (4, False, "int"),
    "long long": (8, True, "int"), "unsigned long long": (8, False, "int"),
    "pointer": (8, False, "int"), "bool": (1, False, "bool"),
}
_KIND_TYPES = {"u8": "unsigned char", "u16": "unsigned short", "u32": "unsigned long",
               "u64": "unsigned long long"}


def _type(text: str) -> dict:
    """A type reference from a short description: a base type, 'struct X', 'enum X',
    'pointer' (to void), 'pointer to X' (struct), 'array N TYPE'."""
    if text.startswith("struct "):
        return {"kind": "struct", "name": text[7:]}
    if text.startswith("enum "):
        return {"kind": "enum", "name": text[5:]}
    if text == "pointer":
        return {"kind": "pointer", "subtype": {"kind": "base", "name": "void"}}
    if text.startswith("pointer to "):
        return {"kind": "pointer", "subtype": _type(text[11:])}
    if text.startswith("array "):
        _, count, subtype = text.split(" ", 2)
        return {"kind": "array", "count": int(count), "subtype": _type(subtype)}
    if text not in _BASE_TYPES:
        raise ValueError(f"unknown type {text!r}")
    return {"kind": "base", "name": text}


def _struct(size: int, fields) -> dict:
    return {"kind": "struct", "size": size,
            "fields": {name: {"offset": offset, "type": _type(kind)} for name, offset, kind in fields}}


def _from_layout(layout, bit_fields: dict | None = None) -> dict:
    """An ISF struct from one of ntpool.pool.layout's StructLayouts (unions overlap);
    ``bit_fields`` names a field that is bit fields instead: {field: ((name, first, bits), ...)}."""
    document = _struct(layout.size, [(field.name, field.offset, _KIND_TYPES[field.kind])
                                     for field in layout.fields.values()])
    for name, bits in (bit_fields or {}).items():
        field = document["fields"].pop(name)
        for bit_name, first, length in bits:
            document["fields"][bit_name] = {
                "offset": field["offset"],
                "type": {"kind": "bitfield", "bit_position": first, "bit_length": length,
                         "type": field["type"]}}
    return document


# Windows 7 SP1 x64 sizes; only the fields named are described.
_OPAQUE = {
    "_EPROCESS": (0x4D0, [("ActiveProcessLinks", 0x188, "struct _LIST_ENTRY"),
                          ("UmsScheduledThreads", 0x340, "unsigned long")]),  # a Windows 7 SP1 marker
    "_ETHREAD": (0x498, []), "_KTHREAD": (0x368, []), "_ERESOURCE": (0x68, []),
    "_EX_FAST_REF": (0x8, [("Value", 0, "unsigned long long")]), "_TOKEN": (0x208, []),
    "_OBJECT_HEADER": (0x38, [("PointerCount", 0, "long long"), ("HandleCount", 0x8, "long long"),
                              ("TypeIndex", 0x18, "unsigned char"),
                              ("TraceFlags", 0x19, "unsigned char"),
                              ("InfoMask", 0x1A, "unsigned char"), ("Flags", 0x1B, "unsigned char"),
                              ("ObjectCreateInfo", 0x20, "pointer"),
                              ("SecurityDescriptor", 0x28, "pointer"),
                              ("Body", 0x30, "struct _QUAD")]),
    "_OBJECT_TYPE": (0xD0, [("TypeList", 0, "struct _LIST_ENTRY"), ("Name", 0x10, "struct _UNICODE_STRING"),
                            ("Index", 0x28, "unsigned char")]),
    "_QUAD": (0x8, [("UseThisFieldToCopy", 0, "long long")]),
    "_HANDLE_TABLE": (0x68, [("HandleCount", 0x58, "unsigned long")]),  # Windows 7's marker
    # FileName: poolscanner reads it (FILE_OBJECT.is_valid) for any chunk tagged "File".
    "_FILE_OBJECT": (0xD8, [("FileName", 0x58, "struct _UNICODE_STRING")]), "_DEVICE_OBJECT": (0x150, []), "_DRIVER_OBJECT": (0x150, []),
    "_CM_KEY_BODY": (0x58, []), "_CMHIVE": (0xBE8, []), "_CM_KEY_NODE": (0x50, []),
    "_CM_KEY_VALUE": (0x18, []), "_HMAP_ENTRY": (0x20, []), "_MMVAD_SHORT": (0x40, []),
    "_MMVAD": (0x78, []), "_KMUTANT": (0x38, []), "_OBJECT_SYMBOLIC_LINK": (0x20, []),
    "_CONTROL_AREA": (0x80, []), "_SHARED_CACHE_MAP": (0x1F8, []), "_VACB": (0x30, []),
    "_KTIMER": (0x40, []),
}

_STRUCTS = {
    "_LIST_ENTRY": (LIST_ENTRY.size, [("Flink", LIST_ENTRY.Flink, "pointer to struct _LIST_ENTRY"),
                                      ("Blink", LIST_ENTRY.Blink, "pointer to struct _LIST_ENTRY")]),
    "_UNICODE_STRING": (0x10, [("Length", 0, "unsigned short"), ("MaximumLength", 2, "unsigned short"),
                               ("Buffer", 8, "pointer to unsigned short")]),
    # A driver's lookaside list (Windows 7 x64), linked on ExNPagedLookasideListHead /
    # ExPagedLookasideListHead through ListEntry.
    "_GENERAL_LOOKASIDE": (0x80, [
        ("ListHead", 0, "array 16 unsigned char"), ("Depth", 0x10, "unsigned short"),
        ("MaximumDepth", 0x12, "unsigned short"), ("TotalAllocates", 0x14, "unsigned long"),
        ("AllocateMisses", 0x18, "unsigned long"), ("TotalFrees", 0x1C, "unsigned long"),
        ("FreeMisses", 0x20, "unsigned long"), ("Type", 0x24, "unsigned long"),
        ("Tag", 0x28, "unsigned long"), ("Size", 0x2C, "unsigned long"),
        ("Allocate", 0x30, "pointer"), ("Free", 0x38, "pointer"),
        ("ListEntry", 0x40, "struct _LIST_ENTRY"), ("LastTotalAllocates", 0x50, "unsigned long"),
        ("LastAllocateMisses", 0x54, "unsigned long")]),
    "_KSYSTEM_TIME": (0xC, [("LowPart", 0, "unsigned long"), ("High1Time", 4, "long"),
                            ("High2Time", 8, "long")]),
    "_KUSER_SHARED_DATA": (0x5F0, [("InterruptTime", 0x8, "struct _KSYSTEM_TIME"),
                                   ("SystemTime", 0x14, "struct _KSYSTEM_TIME"),
                                   ("TimeZoneBias", 0x20, "struct _KSYSTEM_TIME"),
                                   ("NtSystemRoot", 0x30, "array 260 unsigned short"),
                                   ("NtBuildNumber", 0x260, "unsigned long"),
                                   ("NtProductType", 0x264, "enum _NT_PRODUCT_TYPE"),
                                   ("ProductTypeIsValid", 0x268, "unsigned char"),
                                   ("NtMajorVersion", 0x26C, "unsigned long"),
                                   ("NtMinorVersion", 0x270, "unsigned long")]),
    "_DBGKD_GET_VERSION64": (image.DBGKD_GET_VERSION64.size, [
        ("MajorVersion", 0, "unsigned short"), ("MinorVersion", 2, "unsigned short"),
        ("ProtocolVersion", 4, "unsigned char"), ("KdSecondaryVersion", 5, "unsigned char"),
        ("Flags", 6, "unsigned short"), ("MachineType", 8, "unsigned short"),
        ("MaxPacketType", 0xA, "unsigned char"), ("MaxStateChange", 0xB, "unsigned char"),
        ("MaxManipulate", 0xC, "unsigned char"), ("Simulation", 0xD, "unsigned char"),
        ("Unused", 0xE, "array 1 unsigned short"), ("KernBase", 0x10, "unsigned long long"),
        ("PsLoadedModuleList", 0x18, "unsigned long long"),
        ("DebuggerDataList", 0x20, "unsigned long long")]),
    "_KDDEBUGGER_DATA64": (0x340, [("KernBase", 0x18, "unsigned long long"),
                                   ("PsLoadedModuleList", 0x48, "unsigned long long")]),
    "_LDR_DATA_TABLE_ENTRY": (0xE0, [
        ("InLoadOrderLinks", 0, "struct _LIST_ENTRY"),
        ("InMemoryOrderLinks", 0x10, "struct _LIST_ENTRY"),
        ("InInitializationOrderLinks", 0x20, "struct _LIST_ENTRY"),
        ("DllBase", 0x30, "pointer"), ("EntryPoint", 0x38, "pointer"),
        ("SizeOfImage", 0x40, "unsigned long"), ("FullDllName", 0x48, "struct _UNICODE_STRING"),
        ("BaseDllName", 0x58, "struct _UNICODE_STRING"), ("Flags", 0x68, "unsigned long"),
        ("LoadCount", 0x6C, "unsigned short"), ("TlsIndex", 0x6E, "unsigned short")]),
    "_IMAGE_DOS_HEADER": (0x40, [("e_magic", 0, "unsigned short"), ("e_lfanew", 0x3C, "long")]),
}

_ENUMS = {
    "_POOL_TYPE": {"size": 4, "base": "unsigned long",
                   "constants": {member.name: int(member) for member in PoolType}},
    "_NT_PRODUCT_TYPE": {"size": 4, "base": "unsigned long",
                         "constants": {"NtProductWinNt": 1, "NtProductLanManNt": 2,
                                       "NtProductServer": 3}},
}


# Fields that only Windows 7's stubs carry: volatility3's fallback version checks read
# them when a symbol file has no PE version (Windows 10+ files have one).
_WINDOWS7_MARKERS = {("_EPROCESS", "UmsScheduledThreads"), ("_HANDLE_TABLE", "HandleCount")}


def _version(windows):
    """The machine's WindowsVersion, or None for Windows 7 (the original file)."""
    if windows is None:
        return None
    version = windows_version(windows)
    return version if version.segment_heap else None


def _isf_without_guid(version=None) -> dict:
    """The document for Windows 7 (``version`` None) or a segment-heap build."""
    opaque = {name: (size, [field for field in fields
                            if version is None or (name, field[0]) not in _WINDOWS7_MARKERS])
              for name, (size, fields) in _OPAQUE.items()}
    user_types = {name: _struct(size, fields) for name, (size, fields) in {**opaque, **_STRUCTS}.items()}
    if version is None:
        layouts = WINDOWS7
        user_types["_POOL_TRACKER_BIG_PAGES"] = _from_layout(layouts.big_page)
    else:
        layouts = segment_heap_layouts(version)
        user_types["_POOL_TRACKER_BIG_PAGES"] = _from_layout(
            layouts.big_page, {"PoolType": BIG_PAGE_TYPE_BITS})
        if "ProcessBilled" in user_types["_POOL_TRACKER_BIG_PAGES"]["fields"]:
            user_types["_POOL_TRACKER_BIG_PAGES"]["fields"]["ProcessBilled"]["type"] = \
                _type("pointer to struct _EPROCESS")
    user_types["_POOL_HEADER"] = _from_layout(layouts.pool_header)
    user_types["_POOL_TRACKER_TABLE"] = _from_layout(layouts.tracker)
    base_types = {name: {"kind": kind, "size": size, "signed": signed, "endian": "little"}
                  for name, (size, signed, kind) in _BASE_TYPES.items()}
    base_types["void"] = {"kind": "void", "size": 0, "signed": False, "endian": "little"}
    symbols = {name: {"address": rva, "type": _type(kind)} for name, (rva, kind) in image.GLOBALS.items()}
    windows = {"pdb": {"GUID": "", "age": image.PDB_AGE, "database": image.PDB_NAME,
                       "machine_type": 0x8664}}
    if version is not None:
        # ntoskrnl's file version, MAJOR.MINOR.BUILD.QFE (volatility3: major, minor,
        # revision, build).
        windows["pe"] = {"major": version.major, "minor": version.minor,
                         "revision": version.build, "build": 1}
    return {
        "metadata": {"format": FORMAT,
                     "producer": {"name": "ntpool", "version": "1"},
                     "windows": windows},
        "base_types": base_types,
        "user_types": user_types,
        "enums": _ENUMS,
        "symbols": symbols,
    }


def _canonical(document: dict) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


@lru_cache(maxsize=None)
def _generated(version=None) -> tuple[bytes, bytes, str]:
    document = _isf_without_guid(version)
    guid_le = hashlib.sha256(_canonical(document)).digest()[:16]
    guid = uuid.UUID(bytes_le=guid_le).hex.upper()
    document["metadata"]["windows"]["pdb"]["GUID"] = guid
    return guid_le, _canonical(document), guid


def isf(windows=None) -> dict:
    """The symbol file as a dict (a fresh copy)."""
    return json.loads(_generated(_version(windows))[1])


def guid_bytes(windows=None) -> bytes:
    """The GUID's 16 bytes as the CodeView record stores them."""
    return _generated(_version(windows))[0]


def guid(windows=None) -> str:
    """The GUID as volatility3 spells it (upper-case hex, no dashes)."""
    return _generated(_version(windows))[2]


def relative_path(windows=None) -> str:
    """Where the file goes under a symbols folder."""
    return os.path.join("windows", image.PDB_NAME, f"{guid(windows)}-{image.PDB_AGE}.json.xz")


@lru_cache(maxsize=None)
def _compressed(version) -> bytes:
    return lzma.compress(_generated(version)[1], preset=6)


def compressed(windows=None) -> bytes:
    """The file's bytes (xz; the same for the same layouts)."""
    return _compressed(_version(windows))


def every_windows() -> list:
    """One WindowsVersion per distinct symbol file: Windows 7, then each segment-heap build."""
    return [BUILDS[7601]] + [version for build, version in sorted(BUILDS.items())
                             if version.segment_heap]


def package_symbols_directory() -> str:
    """The symbols folder shipped with ntpool (for ``vol -s``)."""
    return os.path.join(_PACKAGE_DATA, "symbols")


def package_plugins_directory() -> str:
    """volatility3 plugins shipped with ntpool (for ``vol -p``)."""
    return os.path.join(_PACKAGE_DATA, "plugins")


def install_symbols(directory, windows=None) -> str:
    """Write the machine's symbol file under ``directory`` (a symbols folder) unless it is
    there; its path."""
    path = os.path.join(os.fspath(directory), relative_path(windows))
    data = compressed(windows)
    try:
        with open(path, "rb") as existing:
            if existing.read() == data:
                return path
    except OSError:
        pass
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "wb") as out:
        out.write(data)
    os.replace(temporary, path)
    return path


def install_every_symbol_file(directory) -> list[str]:
    """Every modelled build's symbol file under ``directory``; their paths."""
    return [install_symbols(directory, windows) for windows in every_windows()]


def symbols_beside(dump_path) -> str:
    """The symbols folder beside a dump (``DIR/symbols``)."""
    return os.path.join(os.path.dirname(os.path.abspath(os.fspath(dump_path))), SYMBOLS_FOLDER)
