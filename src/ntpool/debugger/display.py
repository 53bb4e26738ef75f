"""kd's display commands on a dump: d* (memory), dt (structures), !pte, lm, k/r, .bugcheck, !vm.

Each function takes the DumpReader (and parsed arguments) and returns the lines kd would
print. Memory the dump does not hold shows as ``?``, as kd shows it; nothing here raises on
what the dump contains.
"""

import struct

from ..constants import PAGE_SHIFT, PAGE_SIZE
from ..dump.reader import DumpFormatError, DumpReader, MemoryReadError
from ..machine.memory import PTE_ADDRESS_MASK, PTE_PRESENT, SELF_MAP_INDEX, canonical
from ..pool.layout import LIST_ENTRY, POOL_HEADER, POOL_TRACKER_BIG_PAGES, POOL_TRACKER_TABLE
from ..pool.segment_heap.layout import BIG_PAGE_TYPE_BITS

# d* commands: (unit size, default count, units per line).
DISPLAY_FORMATS = {"db": (1, 0x80, 16), "dw": (2, 0x40, 8), "dd": (4, 0x20, 4),
                   "dq": (8, 0x10, 2), "dps": (8, 0x10, 1)}
MAX_DISPLAY_BYTES = 1 << 20  # kd refuses ranges over a megabyte unless asked with L?


def kd_address(value: int) -> str:
    """``fffffa80`00000620``: kd's 64-bit address form."""
    return f"{value >> 32:08x}`{value & 0xFFFFFFFF:08x}"


def read_or_none(reader: DumpReader, va: int, size: int) -> bytes | None:
    try:
        return reader.read(va, size)
    except MemoryReadError:
        return None


def display_memory(reader: DumpReader, command: str, address: int, count: int | None,
                   symbol_of) -> list[str]:
    """db/dw/dd/dq/dps ``address`` for ``count`` units (kd's default counts without L)."""
    unit, default, per_line = DISPLAY_FORMATS[command]
    count = default if count is None else count
    if count * unit > MAX_DISPLAY_BYTES:
        return [f"Range error: {count:#x} units of {unit} bytes is more than kd displays at once "
                f"({MAX_DISPLAY_BYTES:#x} bytes)"]
    lines = []
    for start in range(0, count, per_line):
        va = (address + start * unit) & 0xFFFFFFFFFFFFFFFF
        units = min(per_line, count - start)
        raw = [read_or_none(reader, va + i * unit, unit) for i in range(units)]
        if command == "dps":
            value = raw[0]
            if value is None:
                lines.append(f"{kd_address(va)}  ????????`????????")
                continue
            pointer = int.from_bytes(value, "little")
            symbol = symbol_of(pointer)
            lines.append(f"{kd_address(va)}  {kd_address(pointer)}" + (f" {symbol}" if symbol else ""))
            continue
        cells = []
        for index, value in enumerate(raw):
            if value is None:
                text = "??" * unit if unit < 8 else "????????`????????"
            elif unit == 8:
                text = kd_address(int.from_bytes(value, "little"))
            else:
                text = f"{int.from_bytes(value, 'little'):0{unit * 2}x}"
            separator = "-" if command == "db" and index == 8 else " "
            cells.append((separator if index else "") + text)
        line = f"{kd_address(va)}  {''.join(cells)}"
        if command == "db":
            line = line.ljust(19 + 16 * 3) + " " + "".join(
                "?" if b is None else (chr(b[0]) if 0x20 <= b[0] < 0x7F else ".") for b in raw)
        lines.append(line)
    return lines


# --- dt: the structures ntpool writes --------------------------------------------------------

# name -> fields (offset, field name, kind); kinds: u8 u16 u32 u64 ptr, bits:POS:WIDTH of a u32,
# list (LIST_ENTRY), ustr (UNICODE_STRING), chars:N, tag.
def _from_layout(layout, kinds: dict[str, str]) -> list[tuple[int, str, str]]:
    """A dt field list from the pool's own layout module (offsets live only there)."""
    return [(field.offset, field.name, kinds.get(field.name, field.kind))
            for field in sorted(layout.fields.values(), key=lambda f: (f.offset, -len(f.kind)))]


STRUCTURES = {
    # WinDbg shows the header's first four bytes as bit fields of one ULONG.
    "_POOL_HEADER": [(0x000, name, f"bits:{8 * index}:8") for index, name in enumerate(
        ("PreviousSize", "PoolIndex", "BlockSize", "PoolType"))] + [(0x000, "Ulong1", "u32")]
    + [f for f in _from_layout(POOL_HEADER, {"PoolTag": "tag", "ProcessBilled": "ptr"})
       if f[0] >= 4],
    "_POOL_TRACKER_TABLE": _from_layout(POOL_TRACKER_TABLE, {"Key": "tag"}),
    "_POOL_TRACKER_BIG_PAGES": _from_layout(POOL_TRACKER_BIG_PAGES, {"Va": "ptr", "Key": "tag"}),
    "_LIST_ENTRY": _from_layout(LIST_ENTRY, {"Flink": "ptr", "Blink": "ptr"}),
    "_UNICODE_STRING": [(0x000, "Length", "u16"), (0x002, "MaximumLength", "u16"),
                        (0x008, "Buffer", "ustr")],
    "_KLDR_DATA_TABLE_ENTRY": [
        (0x000, "InLoadOrderLinks", "list"), (0x030, "DllBase", "ptr"),
        (0x038, "EntryPoint", "ptr"), (0x040, "SizeOfImage", "u32"),
        (0x048, "FullDllName", "ustr_at"), (0x058, "BaseDllName", "ustr_at")],
    "_EPROCESS": [(0x180, "UniqueProcessId", "ptr"), (0x2E0, "ImageFileName", "chars:15")],
    "_DBGKD_DEBUG_DATA_HEADER64": [(0x000, "List", "list"), (0x010, "OwnerTag", "tag"),
                                   (0x014, "Size", "u32")],
}
_SIZES = {"u8": 1, "u16": 2, "u32": 4, "u64": 8, "ptr": 8, "tag": 4, "list": 16, "ustr": 8,
          "ustr_at": 16}


def structure_names() -> list[str]:
    return sorted(STRUCTURES)


def _dump_structure(reader: DumpReader, key: str) -> list[tuple[int, str, str]]:
    """A structure as this dump's Windows lays it out: the tracker and big page entries
    differ on Windows 10/11 (64-bit counters; PoolType a bit field, ProcessBilled from build
    20348), where `dt` showed Windows 7's on every dump."""
    if key not in ("_POOL_TRACKER_TABLE", "_POOL_TRACKER_BIG_PAGES"):
        return STRUCTURES[key]
    try:
        layouts = reader.pool_layouts()
        segment_heap = reader.segment_heap
    except (DumpFormatError, ValueError):  # no readable debugger data: Windows 7's, as named
        return STRUCTURES[key]
    if key == "_POOL_TRACKER_TABLE":
        return _from_layout(layouts.tracker, {"Key": "tag"})
    fields = _from_layout(layouts.big_page, {"Va": "ptr", "Key": "tag", "ProcessBilled": "ptr"})
    if segment_heap:  # the u32 at +0xC is Pattern:8, PoolType:12, SlushSize:12
        at = layouts.big_page.PoolType
        fields = [f for f in fields if f[1] != "PoolType"] + [
            (at, bits_name, f"bits:{first}:{width}") for bits_name, first, width in BIG_PAGE_TYPE_BITS]
        fields.sort(key=lambda f: f[0])
    return fields


def display_type(reader: DumpReader, name: str, address: int | None) -> list[str]:
    """``dt NAME [Address]``: the layout, and the values when an address is given."""
    key = next((k for k in STRUCTURES if k.lower() == name.lower()), None)
    if key is None:
        return [f"Symbol {name} not found. ntpool's dumps define: {', '.join(structure_names())}"]
    fields = _dump_structure(reader, key)
    width = max(len(field) for _, field, _ in fields)
    lines = [] if address is None else [f"nt!{key}"]
    for offset, field, kind in fields:
        label = f"   +0x{offset:03x} {field:<{width}} : "
        if address is None:
            lines.append(label + _type_text(kind))
            continue
        lines.append(label + _field_value(reader, address + offset, kind))
    return lines


def _type_text(kind: str) -> str:
    if kind.startswith("bits:"):
        _, position, width = kind.split(":")
        return f"Pos {position}, {width} Bits"
    if kind.startswith("chars:"):
        return f"[{kind.split(':')[1]}] UChar"
    return {"u8": "UChar", "u16": "Uint2B", "u32": "Uint4B", "u64": "Uint8B", "ptr": "Ptr64 Void",
            "tag": "Uint4B", "list": "_LIST_ENTRY", "ustr": "Ptr64 Wchar",
            "ustr_at": "_UNICODE_STRING"}[kind]


def _field_value(reader: DumpReader, va: int, kind: str) -> str:
    if kind.startswith("chars:"):
        raw = read_or_none(reader, va, int(kind.split(":")[1]))
        if raw is None:
            return "Memory read error"
        return '"' + raw.split(b"\0", 1)[0].decode("ascii", "replace") + '"'
    if kind.startswith("bits:"):
        raw = read_or_none(reader, va, 4)
        if raw is None:
            return "Memory read error"
        position, width = map(int, kind.split(":")[1:])
        value = (int.from_bytes(raw, "little") >> position) & ((1 << width) - 1)
        return f"0y{value:0{width}b} ({value:#x})"
    size = _SIZES[kind]
    raw = read_or_none(reader, va, size)
    if raw is None:
        return "Memory read error"
    if kind == "list":
        flink, blink = struct.unpack("<QQ", raw)
        return f"[ 0x{kd_address(flink)} - 0x{kd_address(blink)} ]"
    if kind == "ustr_at":
        length, _maximum, buffer = struct.unpack("<HH4xQ", raw)
        text = read_or_none(reader, buffer, min(length, 1024) & ~1)
        shown = text.decode("utf-16-le", "replace") if text is not None else "?"
        return f'"{shown}"'
    value = int.from_bytes(raw, "little")
    if kind == "tag":
        text = "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in raw)
        return f"{value:#x} '{text}'"
    if kind == "ptr":
        return "(null)" if value == 0 else f"0x{kd_address(value)}"
    if kind == "ustr":
        return "(null)" if value == 0 else f"0x{kd_address(value)}"
    return f"{value:#x}" if value > 9 else str(value)


# --- !pte ------------------------------------------------------------------------------------

PTE_BASE = canonical(SELF_MAP_INDEX << 39)


def _self_map_address(va: int, level: int) -> int:
    """Where the self-map shows the entry that maps ``va`` at ``level`` (0 PXE ... 3 PTE)."""
    address = PTE_BASE + (((va & 0xFFFFFFFFFFFF) >> 12) << 3)
    for _ in range(3 - level):
        address = PTE_BASE + (((address & 0xFFFFFFFFFFFF) >> 12) << 3)
    return address


def pte_flags(entry: int, leaf: bool) -> str:
    """kd's flag letters: C G L D A N T (U|K) (W|R) E V."""
    if not entry & PTE_PRESENT:
        return "not valid"
    letters = [
        "-",
        "G" if entry & (1 << 8) and leaf else "-",
        "L" if entry & (1 << 7) and not leaf else "-",
        "D" if entry & (1 << 6) else "-",
        "A" if entry & (1 << 5) else "-",
        "N" if entry & (1 << 4) else "-",
        "T" if entry & (1 << 3) else "-",
        "U" if entry & (1 << 2) else "K",
        "W" if entry & (1 << 1) else "R",
        "-" if entry & (1 << 63) else "E",
        "V",
    ]
    return "".join(letters)


def page_file_offset(reader: DumpReader, va: int) -> int | None:
    """The page-file offset of ``va``'s page when its PTE says it is paged out (a transition
    or page-file PTE, as !pte shows it), else None (present, never mapped, not in the dump)."""
    table = reader.directory_table_base
    for level in range(4):
        if table is None:
            return None
        entry = reader._entry(table, (canonical(va) >> (39 - 9 * level)) & 0x1FF)
        if entry is None:
            return None
        if not entry & PTE_PRESENT:
            return entry >> 32 if entry and level == 3 else None
        if level in (1, 2) and entry & (1 << 7):
            return None  # a large page, present
        table = entry & PTE_ADDRESS_MASK
    return None


def display_pte(reader: DumpReader, va: int) -> list[str]:
    va = canonical(va)
    names = ("PXE", "PPE", "PDE", "PTE")
    table = reader.directory_table_base
    cells = []
    for level, name in enumerate(names):
        index = (va >> (39 - 9 * level)) & 0x1FF
        entry = reader._entry(table, index) if table is not None else None
        where = f"{name} at {_self_map_address(va, level):016X}"
        if entry is None:
            cells.append((where, "contains ????????????????", "(not in the dump)"))
            break
        text = f"contains {entry:016X}"
        if entry & PTE_PRESENT:
            pfn = (entry & PTE_ADDRESS_MASK) >> PAGE_SHIFT
            cells.append((where, text, f"pfn {pfn:<8x}{pte_flags(entry, level == 3)}"))
            if level in (1, 2) and entry & (1 << 7):
                break  # a large page: no lower level
            table = entry & PTE_ADDRESS_MASK
            continue
        if entry and level == 3:
            slot, protection = entry >> 32, (entry >> 5) & 0x1F
            cells.append((where, text, f"PageFile: 0 Offset: {slot:x} Protect: {protection:x}"))
        else:
            cells.append((where, text, "not valid"))
        break
    lines = [f"{'VA ' + format(va, 'x'):>60}"]
    for row in range(3):
        lines.append("".join(f"{cell[row]:<27}" for cell in cells).rstrip())
    return lines


# --- lm, k, r, .bugcheck, !vm ---------------------------------------------------------------

def loaded_modules(reader: DumpReader) -> list[str]:
    lines = ["start             end                 module name"]
    modules = reader.loaded_modules()
    shorts = [name.rsplit(".", 1)[0] if name else "?" for name, _, _ in modules]
    width = max([10] + [len(short) for short in shorts])  # a long name keeps the column
    for (name, base, size), short in zip(modules, shorts):
        lines.append(f"{kd_address(base)} {kd_address(base + size)}   {short:<{width}} ({name or '?'})")
    return lines


def bugcheck_lines(reader: DumpReader) -> list[str]:
    if not reader.bugcheck_code:
        return ["The machine did not bug-check: this dump was written on demand."]
    return [f"Bugcheck code {reader.bugcheck_code:08X}",
            "Arguments " + " ".join(kd_address(p) for p in reader.bugcheck_parameters)]


VM_COUNT_COLUMN = 28  # WinDbg's !vm: 'Physical Memory:' and a count end here


def virtual_memory(reader: DumpReader) -> list[str]:
    """``!vm``: physical memory and each pool's use, in pages and Kb, from the dump alone.

    Laid out as WinDbg's: the label, the page count right-aligned so that every count ends
    in the same column (28, further when a count needs it), then the Kb in parentheses, ten
    wide (wider when one needs it), no thousands separators; then what ntpool adds: where
    the figure comes from."""
    frames = reader.page_count
    rows = [("Physical Memory:", frames, "in the dump")]
    entries = reader.tracker_entries()
    used = {0: sum(e.NonPagedBytes for e in entries), 1: sum(e.PagedBytes for e in entries)}
    pools = reader.pool_ranges()
    for index, pool in enumerate(pools):
        mapped = sum(1 for _ in reader.mapped_pages(pool.start, pool.end))
        maximum = (pool.end - pool.start) >> PAGE_SHIFT
        # Each heap by its name (Windows 10/11 have NonPagedPool and NonPagedPoolNx, as
        # WinDbg lists them); the tags' charge once per pool type, after its last heap (the
        # tracker counts NX as nonpaged).
        rows += [(f"{pool.name} Usage:", mapped, "pages mapped"), (f"{pool.name} Max:", maximum, "")]
        if all(later.base_type != pool.base_type for later in pools[index + 1:]):
            label = "NonPagedPool" if pool.base_type == 0 else "PagedPool"
            sharing = sum(1 for other in pools if other.base_type == pool.base_type)
            rows.append((f"{label} Charged:", used[pool.base_type] // PAGE_SIZE,
                         "by the pool tags" + (" (NonPagedPool and NonPagedPoolNx)"
                                               if sharing > 1 else "")))
    end = max([VM_COUNT_COLUMN] + [len(label) + 1 + len(str(pages)) for label, pages, _ in rows])
    kb_width = max([10] + [len(str(pages * 4)) for _, pages, _ in rows])
    lines = ["", "*** Virtual Memory Usage ***"]
    for label, pages, note in rows:
        lines.append(f"\t{label}{pages:>{end - len(label)}} ({pages * 4:>{kb_width}} Kb)"
                     + (f" {note}" if note else ""))
    return lines
