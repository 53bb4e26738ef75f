"""ntoskrnl's image as an analyser finds it: a small PE32+ at KernBase and its globals.

Windows keeps the structures a debugger starts from in the kernel image's data section, at
addresses its symbol file (PDB) names: KdDebuggerDataBlock, KdVersionBlock,
PsLoadedModuleList, PoolBigPageTable and the rest. ntpool's kernel image is the first
``KERNEL_IMAGE_BYTES`` of the kernel data region, laid out here:

    RVA 0x0000  headers: DOS header, PE32+ headers, two sections, the debug directory entry
    RVA 0x1000  .rdata: IMAGE_DEBUG_DIRECTORY, the CodeView record (RSDS, GUID, age,
                ``ntkrnlmp.pdb``), NtBuildLab
    RVA 0x2000  .data: the globals (``GLOBALS``), KDDEBUGGER_DATA64 first

The CodeView record's GUID is the symbol file's (``ntpool.dump.isf``): analysers that find
the image (volatility3 looks for ``KDBG`` and takes its KernBase) load the symbol file
with that GUID, whose symbol addresses are the RVAs below. The headers and globals are
written at dump time; PsLoadedModuleList and the drivers' lookaside list heads
(ExNPagedLookasideListHead, ExPagedLookasideListHead) are live (the core keeps them there).
"""

import struct

from ..constants import (
    KERNEL_IMAGE_BYTES,
    KERNEL_IMAGE_EX_NPAGED_LOOKASIDE_LIST_HEAD,
    KERNEL_IMAGE_EX_NPAGED_LOOKASIDE_LOCK,
    KERNEL_IMAGE_EX_PAGED_LOOKASIDE_LIST_HEAD,
    KERNEL_IMAGE_EX_PAGED_LOOKASIDE_LOCK,
    KERNEL_IMAGE_EX_SYSTEM_LOOKASIDE_LIST_HEAD,
    KERNEL_IMAGE_PS_LOADED_MODULE_LIST,
    PAGE_SIZE,
)
from ..windows import windows_version
from . import format as f

PDB_NAME = "ntkrnlmp.pdb"
PDB_AGE = 1

RDATA_RVA = 0x1000
DATA_RVA = 0x2000

# .rdata
DEBUG_DIRECTORY = 0x1000
CODEVIEW_RECORD = 0x1020
NT_BUILD_LAB = 0x1100
NT_BUILD_LAB_SIZE = 0x40

# .data: each global's RVA and its type in the symbol file ("struct NAME", a base type, or
# "pointer"); the symbol file lists exactly these.
GLOBALS = {
    "KdDebuggerDataBlock": (0x2000, "struct _KDDEBUGGER_DATA64"),
    "KdVersionBlock": (0x2400, "struct _DBGKD_GET_VERSION64"),
    "PsActiveProcessHead": (0x2440, "struct _LIST_ENTRY"),
    "PsLoadedModuleList": (KERNEL_IMAGE_PS_LOADED_MODULE_LIST, "struct _LIST_ENTRY"),
    "PoolBigPageTable": (0x2460, "pointer"),
    "PoolBigPageTableSize": (0x2468, "unsigned long long"),
    "PoolTrackTable": (0x2470, "pointer"),
    "PoolTrackTableSize": (0x2478, "unsigned long long"),
    "KeNumberProcessors": (0x2480, "unsigned long"),
    "CmNtCSDVersion": (0x2484, "unsigned long"),
    "MmSystemRangeStart": (0x2488, "pointer"),
    "MmHighestUserAddress": (0x2490, "pointer"),
    "MmUserProbeAddress": (0x2498, "unsigned long long"),
    "MmNonPagedPoolStart": (0x24A0, "pointer"),
    "MmNonPagedPoolEnd": (0x24A8, "pointer"),
    "MmPagedPoolStart": (0x24B0, "pointer"),
    "MmPagedPoolEnd": (0x24B8, "pointer"),
    # Live (the core keeps them): the drivers' lookaside lists, linked through their ListEntry.
    "ExNPagedLookasideListHead": (KERNEL_IMAGE_EX_NPAGED_LOOKASIDE_LIST_HEAD, "struct _LIST_ENTRY"),
    "ExNPagedLookasideLock": (KERNEL_IMAGE_EX_NPAGED_LOOKASIDE_LOCK, "unsigned long long"),
    "ExPagedLookasideListHead": (KERNEL_IMAGE_EX_PAGED_LOOKASIDE_LIST_HEAD, "struct _LIST_ENTRY"),
    "ExPagedLookasideLock": (KERNEL_IMAGE_EX_PAGED_LOOKASIDE_LOCK, "unsigned long long"),
    # The kernel's own lists (the I/O manager's IRP and MDL lookasides), linked the same way.
    "ExSystemLookasideListHead": (KERNEL_IMAGE_EX_SYSTEM_LOOKASIDE_LIST_HEAD, "struct _LIST_ENTRY"),
    "NtBuildLab": (NT_BUILD_LAB, "array 64 char"),
    # Object types by index (the object manager is not modelled: all NULL, none to list).
    "ObTypeIndexTable": (0x2500, "array 100 pointer"),
}
KDBG_RVA = GLOBALS["KdDebuggerDataBlock"][0]
NTPL_RVA = KDBG_RVA + f.KDDEBUGGER_DATA64_SIZE  # ntpool's own block follows KDBG
DBGKD_GET_VERSION64 = struct.Struct("<HHBBHHBBBBHQQQ")  # 0x28 bytes

assert NTPL_RVA + f.NTPL_SIZE <= GLOBALS["KdVersionBlock"][0]
assert max(rva for rva, _ in GLOBALS.values()) + 0x40 <= KERNEL_IMAGE_BYTES

_DOS_E_LFANEW = 0x3C
_PE_OFFSET = 0x80
_FILE_HEADER = struct.Struct("<4sHHIIIHH")  # signature + IMAGE_FILE_HEADER
_OPTIONAL_HEADER64 = struct.Struct("<HBBIIIIIQIIHHHHHHIIIIHHQQQQII")
_DATA_DIRECTORY = struct.Struct("<II")
_SECTION_HEADER = struct.Struct("<8sIIIIIIHHI")
_DEBUG_DIRECTORY = struct.Struct("<IIHHIIII")
_IMAGE_DIRECTORY_ENTRY_DEBUG = 6
_IMAGE_DEBUG_TYPE_CODEVIEW = 2
_SECTIONS = ((b".rdata", RDATA_RVA, 0x40000040),  # initialized data, read
             (b".data", DATA_RVA, 0xC0000040))  # initialized data, read, write


def codeview_record(guid_le: bytes, age: int = PDB_AGE) -> bytes:
    """RSDS, the GUID's 16 bytes (as stored), the age, the PDB's name NUL-terminated."""
    return b"RSDS" + guid_le + struct.pack("<I", age) + PDB_NAME.encode() + b"\0"


def headers_and_rdata(image_base: int, guid_le: bytes, windows=None) -> bytes:
    """The image's first two pages: DOS and PE32+ headers, then .rdata."""
    windows = windows_version("7") if windows is None else windows
    major, minor, stamp = windows.major, windows.minor, windows.time_date_stamp
    image = bytearray(DATA_RVA)
    image[0:2] = b"MZ"
    struct.pack_into("<I", image, _DOS_E_LFANEW, _PE_OFFSET)
    _FILE_HEADER.pack_into(image, _PE_OFFSET, b"PE\0\0", 0x8664, len(_SECTIONS), stamp,
                           0, 0, _OPTIONAL_HEADER64.size + 16 * _DATA_DIRECTORY.size,
                           0x22)  # executable image, large address aware
    optional = _PE_OFFSET + _FILE_HEADER.size
    _OPTIONAL_HEADER64.pack_into(
        image, optional, 0x20B, 9, 0,  # PE32+, linker 9.0
        0, KERNEL_IMAGE_BYTES - RDATA_RVA, 0, 0, RDATA_RVA,  # code, data sizes; entry; code base
        image_base, PAGE_SIZE, PAGE_SIZE,  # ImageBase, SectionAlignment, FileAlignment
        major, minor, major, minor, major, minor, 0,  # OS, image and subsystem versions
        KERNEL_IMAGE_BYTES, PAGE_SIZE, 0, 1, 0,  # SizeOfImage, SizeOfHeaders, CheckSum, native
        0x80000, 0x2000, 0x100000, 0x1000, 0, 16)
    directories = optional + _OPTIONAL_HEADER64.size
    _DATA_DIRECTORY.pack_into(image, directories + 8 * _IMAGE_DIRECTORY_ENTRY_DEBUG,
                              DEBUG_DIRECTORY, _DEBUG_DIRECTORY.size)
    sections = directories + 16 * _DATA_DIRECTORY.size
    for index, (name, rva, characteristics) in enumerate(_SECTIONS):
        _SECTION_HEADER.pack_into(image, sections + index * _SECTION_HEADER.size, name, PAGE_SIZE,
                                  rva, PAGE_SIZE, rva, 0, 0, 0, 0, characteristics)
    record = codeview_record(guid_le)
    _DEBUG_DIRECTORY.pack_into(image, DEBUG_DIRECTORY, 0, stamp, 0, 0,
                               _IMAGE_DEBUG_TYPE_CODEVIEW, len(record), CODEVIEW_RECORD,
                               CODEVIEW_RECORD)
    image[CODEVIEW_RECORD:CODEVIEW_RECORD + len(record)] = record
    lab = windows.nt_build_lab.encode()
    image[NT_BUILD_LAB:NT_BUILD_LAB + len(lab)] = lab
    return bytes(image)


def version_block(kern_base: int, windows=None) -> bytes:
    """KdVersionBlock (DBGKD_GET_VERSION64) of an x64 free build (Windows 7 SP1 by default)."""
    return DBGKD_GET_VERSION64.pack(
        f.MAJOR_VERSION_FREE, f.MINOR_VERSION if windows is None else windows.build, 6, 2,  # protocol 6, secondary version 2
        0x47,  # DBGKD_VERS_FLAG_MP | DATA | PTR64 | NOMM
        f.MACHINE_AMD64, 0x0C, 0x03, 0x31, 0, 0,
        kern_base, kern_base + KERNEL_IMAGE_PS_LOADED_MODULE_LIST, 0)


def global_address(kern_base: int, name: str) -> int:
    return kern_base + GLOBALS[name][0]
