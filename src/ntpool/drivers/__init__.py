"""Drivers: loading, unloading, and knowing which driver (and which line) allocated what.

A driver is any object or module with ``DriverEntry(k, RegistryPath)`` and
``DriverUnload(k)``, and optionally ``name`` ("mydriver.sys"). Loading lays out a
KLDR_DATA_TABLE_ENTRY (Windows 7 x64 offsets) on PsLoadedModuleList in kernel memory, with
the driver's name as a UNICODE_STRING and a made-up image base, so a crash dump names
drivers as Windows' do.

Call sites: the allocator records, in its pool's site map beside the chunk's header (and in
the header's AllocatorBackTraceIndex only with the kernel stack trace database on), the index
of the line that called the allocation routine. ``CallSites`` maps a
(code object, instruction offset) pair to that index once per distinct site; its table
says which driver owns the site, the file, line and function. Resolving a new site is the
slow part and happens once; the fast path pays for one frame lookup and one dict lookup.
"""

import os
import struct
import sys
import types
import zlib
from typing import NamedTuple

from ..packing import x64_struct
from ..constants import NtStatus
from ..errors import NtStatusError, allowed_when_halted
from ..hooks import DriverUnloaded, DriverUnloading

DRIVER_IMAGE_BASE = 0xFFFFF88000E00000  # where Windows 7 x64 loads drivers
DRIVER_IMAGE_STRIDE = 0x100000
LDR_ENTRY_SIZE = 0xA0
LDR_DLL_BASE = 0x30
LDR_ENTRY_POINT = 0x38
LDR_SIZE_OF_IMAGE = 0x40
LDR_FULL_DLL_NAME = 0x48
LDR_BASE_DLL_NAME = 0x58
UNICODE_STRING = x64_struct("<HHxxxxQ")  # Length, MaximumLength, Buffer
LIST_ENTRY = x64_struct("<QQ")

# ntpool's own machinery: every module directly in the package (the kernel, hooks, leaf
# modules) and the core's folders (ARCHITECTURE.md). Code that calls into the machine the way
# a driver does (samples, scenarios, benchmarks, the command line) is not machinery: its
# lines are call sites.
_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
CORE_FOLDERS = ("machine", "pool", "routines", "drivers", "verifier")
_MACHINERY_DIRECTORIES = tuple(_PACKAGE + folder + os.sep for folder in CORE_FOLDERS)


def is_machinery_file(filename: str) -> bool:
    """Whether code in ``filename`` is ntpool's own machinery (walked out of to the caller)."""
    if filename.startswith(_MACHINERY_DIRECTORIES):
        return True
    return os.path.dirname(filename) + os.sep == _PACKAGE
_NATIVE_DIRECTORY = _PACKAGE + "native" + os.sep
NO_DRIVER = 0  # index of "no driver": the kernel itself, or a test calling directly
MAX_SITES = 0xFFFF  # AllocatorBackTraceIndex is a USHORT
BYTE_SITES = 0x100  # site numbers below this fit in a byte (Windows 7 pools' site maps start so)


class CallSite(NamedTuple):
    driver: int  # index into CallSites.drivers' names; 0 when no driver owns the code
    filename: str
    lineno: int
    function: str
    address: int  # an instruction-pointer-like address inside the owner's image


class LoadedDriver:
    """What the machine keeps of a loaded driver."""

    def __init__(self, index: int, obj, name: str, image_base: int, entry_va: int):
        self.index = index
        self.obj = obj
        self.name = name
        self.image_base = image_base
        self.entry_va = entry_va  # its KLDR_DATA_TABLE_ENTRY
        self.name_va = entry_va + LDR_BASE_DLL_NAME  # the UNICODE_STRING of its name
        self.codes: set = set()
        self.ndis_version = None

    def __repr__(self) -> str:
        return f"<driver {self.name} #{self.index} at {self.image_base:#x}>"


def driver_name(obj) -> str:
    name = getattr(obj, "name", None) or getattr(obj, "__name__", None) or type(obj).__name__
    name = str(name).rsplit(".", 1)[-1] if isinstance(obj, types.ModuleType) else str(name)
    return name if name.lower().endswith(".sys") else f"{name}.sys"


def _codes_of(obj) -> set:
    """Every code object a driver's functions (and the functions nested in them) run."""
    found: set = set()
    functions = []
    if isinstance(obj, types.ModuleType):
        holders = [obj]
    else:
        holders = [c for c in type(obj).__mro__ if c is not object]
        holders.append(obj)
    for holder in holders:
        for value in vars(holder).values():
            if isinstance(value, (staticmethod, classmethod)):
                value = value.__func__
            if isinstance(value, types.FunctionType):
                functions.append(value)
            elif isinstance(value, type) and isinstance(obj, types.ModuleType) and \
                    value.__module__ == obj.__name__:
                functions.extend(v for v in vars(value).values() if isinstance(v, types.FunctionType))
    stack = [f.__code__ for f in functions]
    while stack:
        code = stack.pop()
        if code in found:
            continue
        found.add(code)
        stack.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
    return found


def site_key(frame) -> int:
    """A frame's key in ``CallSites.index`` (the fast paths compute it inline)."""
    return id(frame.f_code) + frame.f_lasti


class CallSites:
    """The table of allocation call sites and the drivers that own them."""

    def __init__(self):
        # id(code) + lasti -> site number (``site_key``). The code object's address, not the
        # code object: CPython does not cache a code object's hash (49-284 ns a call in 3.11),
        # and this lookup is the fast path's first. Plus the instruction's byte offset, not a
        # (code, offset) tuple, which costs a tuple, its hash and its comparison (about 25 ns
        # more): since 3.11 a code object holds its bytecode, so an offset into it is smaller
        # than the object and the sum is an address inside that very object, which no other
        # live object shares. Every code object in a key is kept alive in ``_indexed_codes``
        # while it is, so no other object can take its place meanwhile.
        self.index: dict = {}
        self._indexed_codes: list = []
        self.table: list[CallSite] = [CallSite(NO_DRIVER, "?", 0, "?", 0)]
        self._by_identity: dict = {}
        self.code_owner: dict = {}  # code object -> LoadedDriver
        self.drivers: list[LoadedDriver | None] = [None]
        # id(code) -> (code, whether it is ntpool's own machinery and no driver's): by id, as
        # the index is (a code object's hash is not cached), the code kept so that no other
        # takes its id; made again when a driver loads or unloads (``_forget_resolved``).
        self._machinery: dict = {}
        # Set by the native CPU: the site of the compiled code ntpool is answering for, asked
        # for when the first frame outside the machinery is the native call bridge's.
        self.native_resolver = None
        # The native call bridge's handlers (native.bindings), by their code objects' ids (a
        # code object's hash is not cached; the dict keeps each alive, so no id is reused):
        # a frame of one is a compiled driver's call, whose site ``native_resolver`` gives.
        self.native_bridges: dict[int, object] = {}
        # Called once, as the first site numbered BYTE_SITES or more is made (before anyone
        # can record it): the Windows 7 pools' site maps then go from a byte a unit to two.
        self._outgrew_a_byte: list = []
        # Called whenever the index is cleared (``when_index_cleared``).
        self._index_cleared: list = []

    def when_sites_outgrow_a_byte(self, listener) -> None:
        """Call ``listener()`` as the first site numbered 256 or more is made (at once if
        one has been)."""
        if len(self.table) > BYTE_SITES:
            listener()
        else:
            self._outgrew_a_byte.append(listener)

    def _add(self, site: CallSite) -> int:
        self.table.append(site)
        number = len(self.table) - 1
        if number == BYTE_SITES:
            for listener in self._outgrew_a_byte:
                listener()
            self._outgrew_a_byte.clear()
        return number

    def lookup(self, frame) -> int:
        """The site number of the driver call that ``frame`` is in, or leads out to.

        A frame of ntpool's own machinery (a routine built on another) is walked out of to
        the first frame that is not; only such frames' sites are cached, since a routine's
        frame can be called from anywhere.
        """
        if id(frame.f_code) in self.native_bridges:  # a compiled driver's call, straight to ntpool
            return self.native_resolver()
        key = id(frame.f_code) + frame.f_lasti  # site_key(frame)
        site = self.index.get(key)
        if site is not None:
            return site
        start = frame
        # The walk out of ntpool's frames: each code's answer as _is_machinery keeps it
        # (code, is machinery), read here; _is_machinery works out a code not seen yet.
        machinery = self._machinery
        while frame is not None:
            known = machinery.get(id(frame.f_code))
            if not (known[1] if known is not None else self._is_machinery(frame.f_code)):
                break
            frame = frame.f_back
        if frame is None:
            return 0
        if self.native_resolver is not None and frame.f_code.co_filename.startswith(_NATIVE_DIRECTORY):
            return self.native_resolver()
        if frame is not start:
            return self.lookup(frame)
        return self._resolve(frame, key)

    def _is_machinery(self, code) -> bool:
        known = self._machinery.get(id(code))
        if known is None:
            known = self._machinery[id(code)] = \
                (code, is_machinery_file(code.co_filename) and code not in self.code_owner)
        return known[1]

    def _resolve(self, frame, key) -> int:
        owner = self._owner_of(frame)
        identity = ((frame.f_code, frame.f_lasti), owner.index if owner else NO_DRIVER)
        site = self._by_identity.get(identity)
        if site is None:
            if len(self.table) > MAX_SITES:
                return 0  # the back trace database is full, as Windows' can be
            code = frame.f_code
            base = owner.image_base if owner else 0
            # A stable place in the image per function (crc32, not hash(): str hashes change
            # from process to process, and a seeded run must give the same parameters).
            spot = zlib.crc32(f"{code.co_filename}:{code.co_firstlineno}".encode()) & 0xFFFF0
            address = base + 0x1000 + spot + frame.f_lasti
            site = self._add(CallSite(identity[1], code.co_filename, frame.f_lineno,
                                      code.co_qualname, address))
            self._by_identity[identity] = site
        self._indexed_codes.append(frame.f_code)
        self.index[key] = site
        return site

    def _owner_of(self, frame) -> LoadedDriver | None:
        """The driver whose code is on the stack nearest the call (helpers count as theirs)."""
        depth = 0
        while frame is not None and depth < 32:
            owner = self.code_owner.get(frame.f_code)
            if owner is not None:
                return owner
            frame = frame.f_back
            depth += 1
        return None

    def add_native_site(self, driver: "LoadedDriver", address: int, function: str,
                        filename: str, lineno: int) -> int:
        """A call site in a compiled driver's image (the CPU caches the number by address)."""
        if len(self.table) > MAX_SITES:
            return 0
        return self._add(CallSite(driver.index, filename, lineno, function, address))

    def site_of_caller(self) -> int:
        """Site of the nearest code on the stack that is not ntpool's own machinery
        (a driver's, or a test's): where a faulting access or a bad call came from."""
        return self.lookup(sys._getframe(1))

    def add_driver(self, driver: LoadedDriver) -> None:
        # A compiled driver's code is machine code: its sites come from the native CPU.
        driver.codes = set() if getattr(driver.obj, "native", False) else _codes_of(driver.obj)
        for code in driver.codes:
            self.code_owner[code] = driver
        self._forget_resolved()  # sites seen before the driver loaded are re-resolved

    def remove_driver(self, driver: LoadedDriver) -> None:
        for code in driver.codes:
            if self.code_owner.get(code) is driver:
                del self.code_owner[code]
        self._forget_resolved()

    def when_index_cleared(self, listener) -> None:
        """Call ``listener()`` whenever the index is cleared (a driver loaded or unloaded):
        for a cache of what the index said (the allocation fast path's last site)."""
        self._index_cleared.append(listener)

    def _forget_resolved(self) -> None:
        # Cleared in place: the allocator's fast path holds this very dict.
        self.index.clear()
        self._indexed_codes.clear()
        self._machinery.clear()  # a driver's code is not machinery, whatever its file
        for listener in self._index_cleared:
            listener()

    def owner(self, site: int) -> LoadedDriver | None:
        """The driver whose code holds call site ``site`` (None: no driver, or no such site).

        The one place that knows a site names its owner by index into ``drivers``."""
        if not 0 <= site < len(self.table):
            return None
        index = self.table[site].driver
        return self.drivers[index] if 0 < index < len(self.drivers) else None

    def describe(self, site: int) -> str:
        if not 0 < site < len(self.table):
            return "unknown call site"
        entry = self.table[site]
        owner = self.owner(site)
        who = owner.name if owner else "no driver"
        # The file's name, as CALL_SITE and "Probably caused by" give it (not the path).
        filename = entry.filename.replace("\\", "/").rsplit("/", 1)[-1]
        return f"{who} {entry.function} ({filename}:{entry.lineno})"


CALL_SITE_TABLE_MAGIC = b"NTCS"
CALL_SITE_HEADER = struct.Struct("<4sIII")  # magic, count, entry size, reserved
CALL_SITE_ENTRY = x64_struct("<QQII")  # KLDR entry of the owner (0: none), address, line, text offset
CALL_SITE_TEXT_WINDOW = 2048  # a site's function and file with their NULs fit in this many bytes


def call_site_table(call_sites: CallSites) -> bytes:
    """The call-site table as laid out in kernel memory for a crash dump (ntpool's format).

    A header (``NTCS``, count, entry size, 0), then one entry per site: the VA of the owning
    driver's KLDR_DATA_TABLE_ENTRY (its name is there), an instruction-pointer-like address,
    the line number, and the offset from the table's start of "function\0file\0" (UTF-8).
    Entry i is the site whose number is in a chunk's AllocatorBackTraceIndex.
    """
    entries = []
    texts = bytearray()
    text_base = CALL_SITE_HEADER.size + CALL_SITE_ENTRY.size * len(call_sites.table)
    for number, site in enumerate(call_sites.table):
        owner = call_sites.owner(number)
        entries.append(CALL_SITE_ENTRY.pack(owner.entry_va if owner else 0, site.address,
                                            site.lineno, text_base + len(texts)))
        # Each cut to half the reader's window (CALL_SITE_TEXT_WINDOW): both always fit in it.
        texts += site.function.encode("utf-8", "replace")[:CALL_SITE_TEXT_WINDOW // 2 - 1] + b"\0"
        texts += site.filename.encode("utf-8", "replace")[:CALL_SITE_TEXT_WINDOW // 2 - 1] + b"\0"
    header = CALL_SITE_HEADER.pack(CALL_SITE_TABLE_MAGIC, len(entries), CALL_SITE_ENTRY.size, 0)
    return header + b"".join(entries) + bytes(texts)


def parse_call_site_table(data: bytes) -> list[tuple[int, int, int, str, str]]:
    """(ldr entry, address, line, function, file) per site; raises ValueError if malformed."""
    if len(data) < CALL_SITE_HEADER.size:
        raise ValueError("call-site table is truncated")
    magic, count, entry_size, _ = CALL_SITE_HEADER.unpack_from(data)
    if magic != CALL_SITE_TABLE_MAGIC or entry_size != CALL_SITE_ENTRY.size:
        raise ValueError("not an ntpool call-site table")
    if CALL_SITE_HEADER.size + count * entry_size > len(data):
        raise ValueError(f"call-site table claims {count} entries, more than it holds")
    sites = []
    texts: dict[int, tuple[str, str]] = {}  # sites sharing a text share its strings
    for index in range(count):
        ldr, address, line, offset = CALL_SITE_ENTRY.unpack_from(data, CALL_SITE_HEADER.size + index * entry_size)
        if offset >= len(data):
            raise ValueError(f"call-site {index} points past the table")
        if offset not in texts:
            # Function and file, each NUL-terminated within a bounded window: a hostile table
            # whose text runs on for megabytes costs one window per site, not the table's tail.
            parts = data[offset:offset + CALL_SITE_TEXT_WINDOW].split(b"\0", 2)
            if len(parts) < 3:
                raise ValueError(f"call-site {index} text is not terminated within "
                                 f"{CALL_SITE_TEXT_WINDOW} bytes")
            texts[offset] = (parts[0].decode("utf-8", "replace"), parts[1].decode("utf-8", "replace"))
        sites.append((ldr, address, line, *texts[offset]))
    return sites


class DriverRoutines:
    """Kernel methods for loading drivers (mixed into the machine)."""

    def _driver_for(self, driver) -> LoadedDriver:
        for loaded in self.drivers:
            if loaded.obj is driver or loaded is driver or loaded.name == driver:
                return loaded
        raise ValueError(f"driver {driver!r} is not loaded")

    def load_driver(self, driver, RegistryPath: str | None = None) -> LoadedDriver:
        """Load a driver object or module and call its DriverEntry; raises NtStatusError on failure."""
        if not callable(getattr(driver, "DriverEntry", None)):
            raise TypeError(f"{driver!r} is not a driver: it has no DriverEntry")
        name = driver_name(driver)
        if any(d.name.lower() == name.lower() for d in self.drivers):
            raise ValueError(f"a driver named {name} is already loaded")
        prepare = getattr(driver, "prepare", None)
        if callable(prepare):
            prepare(self)  # a compiled driver maps its image into this machine first
        index = len(self.call_sites.drivers)
        # A compiled driver is mapped at its own base; a Python driver gets a made-up one.
        image_base = getattr(driver, "image_base", None) or \
            DRIVER_IMAGE_BASE + (index - 1) * DRIVER_IMAGE_STRIDE
        size = getattr(driver, "image_size", None) or DRIVER_IMAGE_STRIDE
        entry_point = getattr(driver, "entry_point", None) or image_base + 0x1000
        loaded = LoadedDriver(index, driver, name, image_base,
                              self._write_ldr_entry(name, image_base, size, entry_point))
        if getattr(driver, "native", False):
            driver.loaded = loaded
        self.call_sites.drivers.append(loaded)
        self.call_sites.add_driver(loaded)
        self.drivers.append(loaded)
        path = RegistryPath or f"\\Registry\\Machine\\System\\CurrentControlSet\\Services\\{name[:-4]}"
        self.notify_image_loaded(name, image_base, size)  # MmLoadSystemImage: before DriverEntry
        status = self._call_driver(loaded, driver.DriverEntry, self, path)
        status = NtStatus.STATUS_SUCCESS if status is None else status
        if status & 0x80000000:
            # The image is unloaded without DriverUnload; what it allocated is still checked.
            self.hooks.publish(DriverUnloading(loaded))
            self._forget_driver(loaded)
            raise NtStatusError(status, f"DriverEntry of {name} failed")
        return loaded

    def unload_driver(self, driver) -> None:
        """Call DriverUnload, then publish DriverUnloading (Driver Verifier checks what it
        left behind), take the driver off the loaded-module list and publish DriverUnloaded
        (a compiled driver's image is unmapped)."""
        loaded = self._driver_for(driver)
        unload = getattr(loaded.obj, "DriverUnload", None)
        if callable(unload):
            self._call_driver(loaded, unload, self, top_level=False)
        # Work items DriverUnload queued: an I/O work item holds a reference on its device
        # object, which defers the image's unload until it has run; an executive one holds
        # nothing, and its worker gets the processor only after the image is gone (0xCE).
        self.run_work_items(io_only=True)
        self.hooks.publish(DriverUnloading(loaded))
        self._forget_driver(loaded)
        self.return_to_kernel()

    def _call_driver(self, loaded: LoadedDriver, routine, *args, top_level: bool = True):
        previous = self.current_driver
        self.current_driver = loaded
        try:
            result = routine(*args)
        finally:
            self.current_driver = previous
        if previous is None and top_level:
            self.return_to_kernel()  # DriverEntry / DriverUnload returned: work items run
        return result

    def _forget_driver(self, loaded: LoadedDriver) -> None:
        # MmUnloadedDrivers: where the image was, for a later fault there (bug check 0xD4).
        base, _, size = struct.unpack("<QQQ", self.read(loaded.entry_va + LDR_DLL_BASE, 24))
        self.unloaded_drivers.append((loaded.name, base, base + size))
        self.drivers.remove(loaded)
        self.call_sites.remove_driver(loaded)
        self._unlink_ldr_entry(loaded.entry_va)
        self.hooks.publish(DriverUnloaded(loaded))

    def _write_ldr_entry(self, name: str, image_base: int, size: int = DRIVER_IMAGE_STRIDE,
                         entry_point: int | None = None) -> int:
        encoded = name.encode("utf-16-le")
        entry = self.kernel_data.reserve(LDR_ENTRY_SIZE + len(encoded) + 2)
        buffer = entry + LDR_ENTRY_SIZE
        self.write(buffer, encoded + b"\0\0")
        entry_point = image_base + 0x1000 if entry_point is None else entry_point
        self.write(entry + LDR_DLL_BASE, struct.pack("<QQQ", image_base, entry_point, size))
        name_field = UNICODE_STRING.pack(len(encoded), len(encoded) + 2, buffer)
        self.write(entry + LDR_FULL_DLL_NAME, name_field)
        self.write(entry + LDR_BASE_DLL_NAME, name_field)
        head = self.loaded_module_list
        _, blink = LIST_ENTRY.unpack(self.read(head, 16))
        self.write(entry, LIST_ENTRY.pack(head, blink))
        self.write(blink, struct.pack("<Q", entry))
        self.write(head + 8, struct.pack("<Q", entry))
        return entry

    def _unlink_ldr_entry(self, entry: int) -> None:
        flink, blink = LIST_ENTRY.unpack(self.read(entry, 16))
        self.write(blink, struct.pack("<Q", flink))
        self.write(flink + 8, struct.pack("<Q", blink))

    # --- who allocated what -------------------------------------------------------------

    @allowed_when_halted
    def allocation_site(self, address: int) -> CallSite:
        """The call site that allocated ``address`` (from its header, or the big page table)."""
        return self.call_sites.table[self.pool.site_of(address)]

    @allowed_when_halted
    def allocation_driver(self, address: int) -> LoadedDriver | None:
        return self.call_sites.owner(self.pool.site_of(address))

