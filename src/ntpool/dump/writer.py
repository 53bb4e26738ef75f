"""Write a Windows x64 kernel crash dump of a machine, atomically.

``full``: DUMP_HEADER64 and every physical page, one run (DumpType 1, a complete memory
dump). ``kernel``: the bitmap format (DumpType 5) holding only the frames the machine uses
(``PhysicalMemory.frame_in_use``), which is what Windows' kernel and automatic dumps are.
The file is written next to its destination and renamed over it, so a reader never sees a
half-written dump at the path.
"""

import ctypes
import os
import tempfile

from ..constants import PAGE_SHIFT, PAGE_SIZE
from . import format as f
from . import isf
from .layout import directory_table_base, lay_out_debugger_data, system_time

KINDS = ("full", "kernel")
CHUNK_PAGES = 4096  # 16 MiB per write
# A run of at least this many pages the host never gave the machine's memory is left as a
# hole in the file (it reads as zeros, as the pages do) rather than read and written.
HOLE_PAGES = 16
_HOLE = b"\x01" * HOLE_PAGES
_PAGEMAP_ENTRY = 8
# A /proc/self/pagemap entry's top byte: bit 7 "present", bit 6 "swapped". Neither: the page
# was never touched (a private anonymous mapping), so it holds zeros.
_NEVER_TOUCHED = bytes(0 if byte & 0xC0 else 1 for byte in range(256))
_BIT_CHARS = bytes([0x30] + [0x31] * 255)


def _context_record(kernel) -> bytes:
    context = bytearray(f.CONTEXT_SIZE)
    context[f.CONTEXT_OFF_FLAGS:f.CONTEXT_OFF_FLAGS + 4] = f.CONTEXT_FLAGS_FULL.to_bytes(4, "little")
    for offset in (f.CONTEXT_OFF_MXCSR, f.CONTEXT_OFF_FLTSAVE_MXCSR):
        context[offset:offset + 4] = f.MXCSR_DEFAULT.to_bytes(4, "little")
    context[f.CONTEXT_OFF_SEG_CS:f.CONTEXT_OFF_SEG_CS + 2] = f.KGDT64_R0_CODE.to_bytes(2, "little")
    context[f.CONTEXT_OFF_SEG_SS:f.CONTEXT_OFF_SEG_SS + 2] = f.KGDT64_R0_DATA.to_bytes(2, "little")
    return bytes(context)


def build_header(kernel, kdbg: int, dump_type: int, runs: list[tuple[int, int]],
                 file_size: int, comment: str) -> bytearray:
    """The 0x2000-byte DUMP_HEADER64."""
    header = bytearray(f.FILL * (f.HEADER_SIZE // 4))

    def put(offset: int, value: int, size: int) -> None:
        header[offset:offset + size] = value.to_bytes(size, "little")

    header[0:8] = f.SIGNATURE + f.VALID_DUMP64
    put(f.OFF_MAJOR, f.MAJOR_VERSION_FREE, 4)
    put(f.OFF_MINOR, kernel.windows.build, 4)  # MinorVersion: the build number
    put(f.OFF_DIRECTORY_TABLE_BASE, directory_table_base(kernel), 8)
    put(f.OFF_PFN_DATABASE, 0, 8)  # the machine has no PFN database
    layout = kernel._debugger_data_layout
    put(f.OFF_PS_LOADED_MODULE_LIST, kernel.loaded_module_list, 8)
    put(f.OFF_PS_ACTIVE_PROCESS_HEAD, layout.ps_active_process_head, 8)
    put(f.OFF_MACHINE_IMAGE_TYPE, f.MACHINE_AMD64, 4)
    put(f.OFF_NUMBER_PROCESSORS, kernel.processors, 4)
    bugcheck = kernel.bugcheck
    put(f.OFF_BUGCHECK_CODE, bugcheck.code & 0xFFFFFFFF if bugcheck else 0, 4)
    put(f.OFF_BUGCHECK_CODE + 4, 0, 4)
    for index, value in enumerate(bugcheck.parameters if bugcheck else (0, 0, 0, 0)):
        put(f.OFF_BUGCHECK_PARAMETERS + 8 * index, value, 8)
    put(f.OFF_KD_DEBUGGER_DATA_BLOCK, kdbg, 8)
    if dump_type == f.DUMP_TYPE_FULL:
        total = sum(count for _, count in runs)
        f.PHYSICAL_MEMORY_DESCRIPTOR.pack_into(header, f.OFF_PHYSICAL_MEMORY_BLOCK, len(runs), total)
        for index, (base, count) in enumerate(runs):
            f.PHYSICAL_MEMORY_RUN.pack_into(header, f.OFF_RUNS + 16 * index, base, count)
    header[f.OFF_CONTEXT_RECORD:f.OFF_CONTEXT_RECORD + f.CONTEXT_SIZE] = _context_record(kernel)
    header[f.OFF_EXCEPTION_RECORD:f.OFF_EXCEPTION_RECORD + 0x98] = bytes(0x98)
    put(f.OFF_DUMP_TYPE, dump_type, 4)
    put(f.OFF_DUMP_TYPE + 4, 0, 4)
    put(f.OFF_REQUIRED_DUMP_SPACE, file_size, 8)
    put(f.OFF_SYSTEM_TIME, system_time(kernel), 8)
    header[f.OFF_COMMENT:f.OFF_COMMENT + f.COMMENT_SIZE] = \
        comment.encode("ascii", "replace")[:f.COMMENT_SIZE - 1].ljust(f.COMMENT_SIZE, b"\0")
    put(f.OFF_SYSTEM_UP_TIME, 0, 8)
    return header


def in_use_bitmap(frame_in_use) -> tuple[bytes, int]:
    """(bitmap with bit n set for frame n in use, number of frames in use)."""
    chars = bytes(frame_in_use).translate(_BIT_CHARS)
    present = chars.count(b"1")
    value = int(chars[::-1], 2) if chars else 0
    size = ((len(chars) + 31) // 32) * 4  # whole ULONGs: readers take the bitmap 32 bits at a time
    return value.to_bytes(size, "little"), present


def in_use_runs(frame_in_use):
    """(first frame, count) of each run of frames in use, in order."""
    end = len(frame_in_use)
    start = frame_in_use.find(1)
    while 0 <= start < end:
        stop = frame_in_use.find(0, start)
        if stop < 0:
            stop = end
        yield start, stop - start
        start = frame_in_use.find(1, stop)


def never_touched_pages(physical) -> bytes | None:
    """One byte a frame of ``physical``'s memory: 1 for a frame whose page the host never
    touched (so it holds zeros), read from Linux's /proc/self/pagemap; None where that
    cannot be told (another system, a pagemap not readable, a shared mapping), and then
    every frame is written. Reading untouched pages to write them makes the host fault each
    one in: on a VM about 8 us a page, 2 s a GiB of memory the machine never used."""
    if not getattr(physical, "private_mapping", False):
        return None
    try:
        anchor = ctypes.c_char.from_buffer(physical.buffer)
        address = ctypes.addressof(anchor)
        del anchor  # (the buffer may not be closed while a ctypes object holds it)
        descriptor = os.open("/proc/self/pagemap", os.O_RDONLY)
    except (OSError, TypeError, ValueError, BufferError):
        return None
    try:
        frames = physical.frame_count
        entries = os.pread(descriptor, frames * _PAGEMAP_ENTRY, (address >> PAGE_SHIFT) * _PAGEMAP_ENTRY)
    except OSError:
        return None
    finally:
        os.close(descriptor)
    if len(entries) != frames * _PAGEMAP_ENTRY:
        return None
    return entries[_PAGEMAP_ENTRY - 1::_PAGEMAP_ENTRY].translate(_NEVER_TOUCHED)


def _write_frames(out, buffer, first: int, count: int, untouched: bytes | None = None) -> None:
    """Frames ``first`` to ``first + count - 1``, in order; runs of ``HOLE_PAGES`` or more
    frames ``untouched`` marks are skipped over, left as holes that read as zeros."""
    view = memoryview(buffer)
    end = first + count
    while first < end:
        hole = untouched.find(_HOLE, first, end) if untouched is not None else -1
        written_to = end if hole < 0 else hole
        while first < written_to:
            n = min(written_to - first, CHUNK_PAGES)
            out.write(view[first << PAGE_SHIFT:(first + n) << PAGE_SHIFT])
            first += n
        if hole >= 0:
            hole_end = untouched.find(0, hole, end)
            hole_end = end if hole_end < 0 else hole_end
            out.seek((hole_end - hole) << PAGE_SHIFT, os.SEEK_CUR)
            first = hole_end


def _comment(kernel) -> str:
    if kernel.bugcheck is None:
        return "ntpool live dump"
    return f"ntpool crash dump: {kernel.bugcheck.name}"


def _write_full(kernel, out) -> None:
    frames = kernel.physical.frame_count
    runs = [(0, frames)]
    size = f.HEADER_SIZE + frames * PAGE_SIZE
    out.write(build_header(kernel, lay_out_debugger_data(kernel), f.DUMP_TYPE_FULL, runs, size,
                           _comment(kernel)))
    _write_frames(out, kernel.physical.buffer, 0, frames, never_touched_pages(kernel.physical))


def _write_bitmap(kernel, out) -> None:
    kdbg = lay_out_debugger_data(kernel)  # may take frames: before the bitmap is made
    physical = kernel.physical
    bitmap, present = in_use_bitmap(physical.frame_in_use)
    summary_size = f.SUMMARY_OFF_BITMAP + len(bitmap)
    first_page = f.HEADER_SIZE + ((summary_size + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1))
    size = first_page + present * PAGE_SIZE
    out.write(build_header(kernel, kdbg, f.DUMP_TYPE_BITMAP, [], size, _comment(kernel)))
    summary = bytearray(first_page - f.HEADER_SIZE)
    summary[0:8] = f.SUMMARY_SIGNATURE + f.SUMMARY_VALID_DUMP
    for offset, value in ((f.SUMMARY_OFF_FIRST_PAGE, first_page),
                          (f.SUMMARY_OFF_PRESENT_PAGES, present),
                          (f.SUMMARY_OFF_BITMAP_BITS, physical.frame_count)):
        summary[offset:offset + 8] = value.to_bytes(8, "little")
    summary[f.SUMMARY_OFF_BITMAP:summary_size] = bitmap
    out.write(summary)
    untouched = never_touched_pages(physical)
    for first, count in in_use_runs(physical.frame_in_use):
        _write_frames(out, physical.buffer, first, count, untouched)


def write_dump(kernel, path, kind: str = "full", symbols: bool = True, truth=None) -> str:
    """Write ``kernel``'s crash dump to ``path`` (``kind`` 'full' or 'kernel'); returns the path.

    With ``symbols`` the symbol file analysers need (``ntpool.dump.isf``, the machine's
    build's) is put in a
    ``symbols`` folder beside the dump, once per folder (best effort: the package ships it too);
    ``truth`` is where to write the truth manifest (``ntpool.dump.truth``).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be 'full' or 'kernel', not {kind!r}")
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(prefix=".ntpool-dump-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(handle, "wb") as out:
            (_write_full if kind == "full" else _write_bitmap)(kernel, out)
            out.truncate(out.tell())  # the file's end, when the last pages were a hole
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
    if symbols:
        try:
            isf.install_symbols(isf.symbols_beside(path), kernel.windows)
        except OSError:
            pass  # the dump is written; `ntpool symbols` names the package's copy
    if truth is not None:
        from .truth import write_for_dump

        write_for_dump(kernel, truth, path, kind)
    return path
