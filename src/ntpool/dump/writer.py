"""Write a Windows x64 kernel crash dump of a machine, atomically.

``full``: DUMP_HEADER64 and every physical page, one run (DumpType 1, a complete memory
dump). ``kernel``: the bitmap format (DumpType 5) holding only the frames the machine uses
(``PhysicalMemory.frame_in_use``), which is what Windows' kernel and automatic dumps are.
The file is written next to its destination and renamed over it, so a reader never sees a
half-written dump at the path.
"""

import os
import tempfile

from ..constants import PAGE_SHIFT, PAGE_SIZE
from . import format as f
from . import isf
from .layout import directory_table_base, lay_out_debugger_data, system_time

KINDS = ("full", "kernel")
CHUNK_PAGES = 4096  # 16 MiB per write
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


def _write_frames(out, buffer, first: int, count: int) -> None:
    view = memoryview(buffer)
    while count:
        n = min(count, CHUNK_PAGES)
        out.write(view[first << PAGE_SHIFT:(first + n) << PAGE_SHIFT])
        first += n
        count -= n


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
    _write_frames(out, kernel.physical.buffer, 0, frames)


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
    for first, count in in_use_runs(physical.frame_in_use):
        _write_frames(out, physical.buffer, first, count)


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
