"""The I/O manager: driver and device objects, symbolic links, IRPs and their stack
locations, file objects, MDLs, user buffers and probes, and the requests a user-mode caller
sends (create, device control with each transfer method, read, write, cleanup, close).

Everything lives in simulated memory with Windows 7 x64's layouts (``layouts``) and in
ntpool's pool with the tags Windows uses: a device object is a "Devi" allocation holding
its OBJECT_HEADER, the DEVICE_OBJECT, the driver's extension and the DEVOBJ_EXTENSION; an
IRP is "Irp " with its stack locations after it; an MDL is "Mdl " with its PFN array; a
buffered request's SystemBuffer is "Io  ". What the kernel allocates for a driver to give
back (IRPs, MDLs, devices, links) is charged to the driver's call site, so a leak is named
by tag and by the driver's line or offset; the kernel's own bookkeeping (the driver object,
object names) is the kernel's.

Driver code is reached through addresses, as on Windows: ``MajorFunction[]``,
``DriverUnload``, completion routines. ``call_code(address, *args)`` runs what is there: a
Python function registered with ``code_address`` (a Python driver, or the kernel's own
IopInvalidDeviceRequest), or native code through the native bridge's ``native_call``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Callable

from ..packing import x64_struct
from ..constants import (
    DISPATCH_LEVEL,
    PAGE_SHIFT,
    PAGE_SIZE,
    SYSTEM_RANGE_START,
    BugCheckCode,
    NtStatus,
    PfnListCorrupt,
    PoolType,
    VerifierStop,
)
from ..errors import MachineHung, NtStatusError
from ..hooks import CopiedToUser, FramesAliased, SystemBufferMade
from ..machine.user_space import MM_USER_PROBE_ADDRESS, PTE_USER, UserSpace
from . import io_lookaside
from . import layouts as L
from .io_lookaside import (
    FIXED_SIZE_MDL,
    IOP_FIXED_SIZE_MDL_PFNS,
    IOP_LARGE_IRP_STACK_LOCATIONS,
    IOP_MEDIUM_IRP_STACK_LOCATIONS,
    LookasideLargeIrpList,
    LookasideMdlList,
    LookasideMediumIrpList,
    LookasideSmallIrpList,
)
from .objects import STATUS_OBJECT_NAME_NOT_FOUND
from .registry import register_type, routine

# What IoInitializeIrp writes of an IRP, from its start to its current stack location: Type
# and Size; ThreadListEntry's links (to itself); IoStatus.Status (IoReuseIrp's); the
# StackCount, CurrentLocation, ApcEnvironment and AllocationFlags bytes; the current stack
# location. The rest of the packet is zeros. An MDL's whole header (MmInitializeMdl).
_IRP_PACKET = x64_struct("<HH28xQQI14xBBxxBB112xQ")
# What IoReuseIrp reads of an IRP (from its start): Size, StackCount, AllocationFlags.
_IRP_REUSED = struct.Struct("<2xH62xB4xB")
_MDL_HEADER = x64_struct("<QHH4xQQQII")
# What IoFreeMdl reads of an MDL (from its Size): MdlFlags, MappedSystemVa.
_MDL_FLAGS_AND_MAPPING = x64_struct("<2xH12xQ")
# What MmBuildMdlForNonPagedPool reads of an MDL (from its Size): MdlFlags, StartVa,
# ByteCount, ByteOffset; and what it writes: MappedSystemVa, MdlFlags.
_MDL_BUILT = x64_struct("<2xH20xQII")
_MDL_MAPPED = x64_struct("<Q")
_MDL_FLAGS = struct.Struct("<H")
_QWORD = x64_struct("<Q")
_TWO_QWORDS = x64_struct("<QQ")
_USHORT = struct.Struct("<H")
_ULONG = struct.Struct("<I")
assert _MDL_BUILT.size == L.MDL.SIZE - L.MDL.Size
assert _IRP_PACKET.size == L.IRP.CurrentStackLocation + 8 and _MDL_HEADER.size == L.MDL.SIZE
assert _IRP_REUSED.size == L.IRP.AllocationFlags + 1
assert _MDL_FLAGS_AND_MAPPING.size == L.MDL.MappedSystemVa + 8 - L.MDL.Size
_IRP_TYPE_BYTES = L.IO_TYPE_IRP.to_bytes(2, "little")
# The last offset in a page where an IRP's StackCount and AllocationFlags lie in it too.
_LAST_FLAGS_OFFSET = PAGE_SIZE - 1 - max(L.IRP.StackCount, L.IRP.AllocationFlags)
# What IoFreeIrp reads of an IRP (from its start): Type, StackCount, AllocationFlags.
_IRP_FREED = struct.Struct("<H64xB4xB")
assert _IRP_FREED.size == L.IRP.AllocationFlags + 1 and L.IRP.StackCount == 0x42
# The AllocationFlags IoFreeIrp reads to keep an IRP on a lookaside list (fixed size alone).
_IRP_KEPT_FLAGS = L.IRP_ALLOCATED_FIXED_SIZE | L.IRP_QUOTA_CHARGED | L.IRP_ALLOCATED_MUST_SUCCEED
_NONPAGED_POOL = PoolType.NonPagedPool

STATUS_PENDING = 0x00000103
STATUS_MORE_PROCESSING_REQUIRED = 0xC0000016
STATUS_INVALID_DEVICE_REQUEST = 0xC0000010
STATUS_DATATYPE_MISALIGNMENT = 0x80000002
STATUS_BUFFER_TOO_SMALL = 0xC0000023
STATUS_DELETE_PENDING = 0xC0000056
STATUS_NO_SUCH_DEVICE = 0xC000000E
STATUS_OBJECT_NAME_COLLISION = 0xC0000035
# IoAllocateDriverObjectExtension's block: IO_CLIENT_EXTENSION (NextExtension,
# ClientIdentificationAddress), then the driver's context area. Its tag is ReactOS's
# TAG_DRIVER_EXTENSION ('DRVE' in memory, io/iomgr/driver.c); Windows' is not public.
IO_CLIENT_EXTENSION_SIZE = 0x10
TAG_DRIVER_EXTENSION = int.from_bytes(b"DRVE", "little")
CLIENT_EXTENSION_WALK_LIMIT = 1 << 16
MASK64 = (1 << 64) - 1
_PAGE_FRAME = MASK64 & ~(PAGE_SIZE - 1)  # a 64-bit address's page bits (MDL.StartVa's)

MULTIPLE_IRP_COMPLETE_REQUESTS = 0x44
NO_MORE_IRP_STACK_LOCATIONS = 0x35
INVALID_PROCESS_ATTACH_ATTEMPT = 0x05

IRP_MJ_CREATE = 0x00
IRP_MJ_CLOSE = 0x02
IRP_MJ_READ = 0x03
IRP_MJ_WRITE = 0x04
IRP_MJ_DEVICE_CONTROL = 0x0E
IRP_MJ_INTERNAL_DEVICE_CONTROL = 0x0F
IRP_MJ_SHUTDOWN = 0x10
IRP_MJ_CLEANUP = 0x12
IRP_MJ_NAMES = (
    "IRP_MJ_CREATE", "IRP_MJ_CREATE_NAMED_PIPE", "IRP_MJ_CLOSE", "IRP_MJ_READ", "IRP_MJ_WRITE",
    "IRP_MJ_QUERY_INFORMATION", "IRP_MJ_SET_INFORMATION", "IRP_MJ_QUERY_EA", "IRP_MJ_SET_EA",
    "IRP_MJ_FLUSH_BUFFERS", "IRP_MJ_QUERY_VOLUME_INFORMATION", "IRP_MJ_SET_VOLUME_INFORMATION",
    "IRP_MJ_DIRECTORY_CONTROL", "IRP_MJ_FILE_SYSTEM_CONTROL", "IRP_MJ_DEVICE_CONTROL",
    "IRP_MJ_INTERNAL_DEVICE_CONTROL", "IRP_MJ_SHUTDOWN", "IRP_MJ_LOCK_CONTROL", "IRP_MJ_CLEANUP",
    "IRP_MJ_CREATE_MAILSLOT", "IRP_MJ_QUERY_SECURITY", "IRP_MJ_SET_SECURITY", "IRP_MJ_POWER",
    "IRP_MJ_SYSTEM_CONTROL", "IRP_MJ_DEVICE_CHANGE", "IRP_MJ_QUERY_QUOTA", "IRP_MJ_SET_QUOTA",
    "IRP_MJ_PNP")

METHOD_BUFFERED = 0
METHOD_IN_DIRECT = 1
METHOD_OUT_DIRECT = 2
METHOD_NEITHER = 3
METHOD_NAMES = ("METHOD_BUFFERED", "METHOD_IN_DIRECT", "METHOD_OUT_DIRECT", "METHOD_NEITHER")

KernelMode = 0
UserMode = 1
IoReadAccess = 0
IoWriteAccess = 1
IoModifyAccess = 2

# Where MmMapLockedPages* maps an MDL's pages in system space (system PTEs).
SYSTEM_PTE_BASE = 0xFFFFF88F00000000
# IRPs of up to LARGE_IRP_STACK_LOCATIONS come from lookaside lists of fixed sizes (one stack
# location, IopMediumIrpStackLocations and IopLargeIrpStackLocations of them), as Windows 7
# and later's IoAllocateIrp takes them.
LARGE_IRP_STACK_LOCATIONS = IOP_LARGE_IRP_STACK_LOCATIONS
IRP_BOUNDARY = 0x80000000
# The list an IRP of StackCount n (0 to 0xFF) is taken from and given back to: the small list
# for one location, the medium list up to IOP_MEDIUM_IRP_STACK_LOCATIONS, else the large one
# (a StackCount a driver changed past those: the large list, as IoFreeIrp's test of it does).
_IRP_LIST = tuple(LookasideSmallIrpList if count == 1 else LookasideMediumIrpList
                  if 1 < count <= IOP_MEDIUM_IRP_STACK_LOCATIONS else LookasideLargeIrpList
                  for count in range(0x100))
# IoAllocateIrp's sizes by StackSize (1 to 0x7F): the allocation's (its list's entries, or
# StackSize's own past LARGE_IRP_STACK_LOCATIONS) and the packet's, IoSizeOfIrp.
_IRP_SIZES = (None,) + tuple(
    (io_lookaside.IO_LOOKASIDES[_IRP_LIST[count]][3] if count <= LARGE_IRP_STACK_LOCATIONS
     else L.io_size_of_irp(count), L.io_size_of_irp(count))
    for count in range(1, 0x80))

# (LOCK_OPERATION and CCHAR are the registry's own, signed as the WDK's enum and char are.)
for _name, _size, _pointer in (("DEVICE_TYPE", 4, False), ("MM_PAGE_PRIORITY", 4, False),
                               ("PDRIVER_DISPATCH", 8, True), ("PIO_COMPLETION_ROUTINE", 8, True),
                               ("PKEVENT", 8, True)):
    register_type(_name, _size, pointer=_pointer)


def ctl_code(device_type: int, function: int, method: int, access: int) -> int:
    """CTL_CODE of devioctl.h."""
    return (device_type << 16) | (access << 14) | (function << 2) | method


def irp_major_name(major: int) -> str:
    return IRP_MJ_NAMES[major] if 0 <= major < len(IRP_MJ_NAMES) else f"IRP_MJ_{major:#x}"


@dataclass
class IoResult:
    """What a request came back with."""

    major: int
    status: int
    information: int
    output: bytes = b""
    pending: bool = False  # the driver returned STATUS_PENDING and has not completed it yet
    completed: bool = False  # the driver completed it (now or later)
    irp: int = 0

    @property
    def status_name(self) -> str:
        return status_name(self.status)


def status_name(status: int) -> str:
    names = {0: "STATUS_SUCCESS", STATUS_PENDING: "STATUS_PENDING",
             STATUS_INVALID_DEVICE_REQUEST: "STATUS_INVALID_DEVICE_REQUEST",
             0xC00000BB: "STATUS_NOT_SUPPORTED", 0xC000000D: "STATUS_INVALID_PARAMETER",
             STATUS_BUFFER_TOO_SMALL: "STATUS_BUFFER_TOO_SMALL",
             0x80000005: "STATUS_BUFFER_OVERFLOW", 0xC0000005: "STATUS_ACCESS_VIOLATION",
             0xC0000022: "STATUS_ACCESS_DENIED", 0xC000009A: "STATUS_INSUFFICIENT_RESOURCES",
             0xC0000001: "STATUS_UNSUCCESSFUL", STATUS_NO_SUCH_DEVICE: "STATUS_NO_SUCH_DEVICE",
             STATUS_OBJECT_NAME_NOT_FOUND: "STATUS_OBJECT_NAME_NOT_FOUND",
             0xC0000010: "STATUS_INVALID_DEVICE_REQUEST", 0xC0000002: "STATUS_NOT_IMPLEMENTED"}
    name = names.get(status & 0xFFFFFFFF)
    if name is None:
        try:
            name = NtStatus(status & 0xFFFFFFFF).name
        except ValueError:
            name = f"NTSTATUS {status & 0xFFFFFFFF:#010x}"
    return name


@dataclass
class WdmDriver:
    """A driver object the I/O manager made: where its entry points are read from."""

    name: str  # e.g. "wdm_test"
    driver_object: int
    registry_path: int  # the UNICODE_STRING DriverEntry receives (gone after DriverEntry)
    service_key: str
    loaded: object = None  # the LoadedDriver whose code this is
    deleted: bool = False
    python_code: list = field(default_factory=list)  # addresses registered for this driver


class IoRoutines:
    """The I/O manager's routines and the request path, mixed into the machine."""

    def _init_io(self) -> None:
        self.user_space = UserSpace(self.space)
        # address -> (Python callable, the LoadedDriver it belongs to or None)
        self.python_code: dict[int, tuple[Callable, object]] = {}
        self._next_code = 0xFFFFF80001000000  # inside ntoskrnl's image range, never mapped
        # The native bridge sets this: native_call(address, args) -> rax, running the
        # driver's machine code at ``address`` with the x64 calling convention.
        self.native_call: Callable | None = None
        self.wdm_drivers: dict[int, WdmDriver] = {}  # DRIVER_OBJECT address -> driver
        self.client_extensions: dict[int, list[int]] = {}  # DRIVER_OBJECT -> its "DRVE" blocks
        self.io_requests: dict[int, dict] = {}  # IRP address -> the I/O manager's request
        self.file_handles: dict[int, FileHandle] = {}  # FILE_OBJECT address -> its opener
        self._system_ptes: dict[int, int] = {}  # mapping base -> page count
        self._next_system_pte = SYSTEM_PTE_BASE
        self.invalid_device_request = self.code_address(_iop_invalid_device_request)
        io_lookaside.init_io_lookasides(self)  # IRPs' and MDLs' lookaside lists

    def io_lookaside_holdings(self) -> dict[str, tuple[int, int]]:
        """What the I/O manager's IRP and MDL lookaside lists keep allocated in pool, as
        poolmon counts it: tag -> (allocations, bytes) (``io_lookaside.holdings``)."""
        return io_lookaside.holdings(self)

    # --- code by address -------------------------------------------------------------------

    def code_address(self, function: Callable, owner=None) -> int:
        """An address that stands for a Python function as code (a dispatch routine, a
        completion routine); ``call_code`` at it calls the function."""
        address = self._next_code
        self._next_code += 0x10
        self.python_code[address] = (function, owner)
        return address

    def call_code(self, address: int, *args) -> int:
        """Run the code at ``address`` with ``args`` (integers, the x64 way): a registered
        Python function, or machine code (``Kernel.jump_to``: the driver's code through the
        native bridge, or the bug check of jumping where no code is)."""
        entry = self.python_code.get(address)
        if entry is not None:
            function, owner = entry
            if owner is None:
                result = function(self, *args)
            else:
                previous = self.current_driver
                self.current_driver = owner
                try:
                    result = function(self, *args)
                finally:
                    self.current_driver = previous
            return 0 if result is None else result
        return self.jump_to(address, args)  # native code, or the fault of jumping there

    # --- driver objects ----------------------------------------------------------------------

    def create_driver_object(self, name: str, image_base: int = 0, image_size: int = 0,
                             section: int = 0, entry: int = 0, loaded=None,
                             registry_path: str | None = None) -> WdmDriver:
        """What IopLoadDriver makes before DriverEntry: the DRIVER_OBJECT ("\\Driver\\NAME",
        with its DRIVER_EXTENSION after it), every MajorFunction pointing at
        IopInvalidDeviceRequest, the service key in the registry, and the RegistryPath
        UNICODE_STRING DriverEntry receives (freed when DriverEntry returns)."""
        base = name[:-4] if name.lower().endswith(".sys") else name
        body_size = L.DRIVER_OBJECT.SIZE + L.DRIVER_EXTENSION.SIZE
        driver = self._ob_create("Driver", body_size, f"\\Driver\\{base}", on_behalf=False,
                                 permanent=True)
        if not driver:
            raise NtStatusError(NtStatus.STATUS_INSUFFICIENT_RESOURCES, "no pool for the driver object")
        extension = driver + L.DRIVER_OBJECT.SIZE
        self._put16(driver + L.DRIVER_OBJECT.Type, L.IO_TYPE_DRIVER)
        self._put16(driver + L.DRIVER_OBJECT.Size, L.DRIVER_OBJECT.SIZE)
        self._put64(driver + L.DRIVER_OBJECT.DriverStart, image_base)
        self._put32(driver + L.DRIVER_OBJECT.DriverSize, image_size)
        if loaded is not None and not section:
            section = loaded.entry_va  # its KLDR_DATA_TABLE_ENTRY
        self._put64(driver + L.DRIVER_OBJECT.DriverSection, section)
        self._put64(driver + L.DRIVER_OBJECT.DriverExtension, extension)
        self._put64(driver + L.DRIVER_OBJECT.DriverInit, entry)
        self._put64(extension + L.DRIVER_EXTENSION.DriverObject, driver)
        self._put_string_copy(driver + L.DRIVER_OBJECT.DriverName, f"\\Driver\\{base}", L.TAG_IO_NAME)
        self._put_string_copy(extension + L.DRIVER_EXTENSION.ServiceKeyName, base, L.TAG_IO_NAME)
        table = self.invalid_device_request.to_bytes(8, "little") * (L.IRP_MJ_MAXIMUM_FUNCTION + 1)
        self.write(driver + L.DRIVER_OBJECT.MajorFunction, table)
        service_key = registry_path or f"\\Registry\\Machine\\System\\CurrentControlSet\\Services\\{base}"
        self.registry_prepare_service(service_key, base)
        registry_path = self._io_allocate(PoolType.PagedPool, L.UNICODE_STRING.SIZE, L.TAG_IO_NAME, False)
        self._put_string_copy(registry_path, service_key, L.TAG_IO_NAME)
        wdm = WdmDriver(base, driver, registry_path, service_key, loaded)
        self.wdm_drivers[driver] = wdm
        self.objects[driver].delete = _free_client_extensions
        return wdm

    def _put_string_copy(self, us_va: int, text: str, tag: int) -> int:
        """Fill the UNICODE_STRING at ``us_va`` with a pool copy of ``text`` (NUL-terminated)."""
        encoded = text.encode("utf-16-le")
        buffer = self._io_allocate(PoolType.PagedPool, len(encoded) + 2, tag, False)
        if not buffer:
            raise NtStatusError(NtStatus.STATUS_INSUFFICIENT_RESOURCES, f"no pool for {text!r}")
        self.write(buffer, encoded + b"\0\0")
        self._put_unicode_string(us_va, len(encoded), len(encoded) + 2, buffer)
        return buffer

    def _free_string_copy(self, us_va: int) -> None:
        buffer = self._get64(us_va + L.UNICODE_STRING.Buffer)
        if buffer:
            self.pool.free(buffer, None)
            self._put_unicode_string(us_va, 0, 0, 0)

    def driver_entry_returned(self, wdm: WdmDriver) -> None:
        """The RegistryPath string is the I/O manager's, and goes when DriverEntry returns."""
        if wdm.registry_path:
            self._free_string_copy(wdm.registry_path)
            self.pool.free(wdm.registry_path, None)
            wdm.registry_path = 0

    def driver_unload_routine(self, wdm: WdmDriver) -> int:
        return self._get64(wdm.driver_object + L.DRIVER_OBJECT.DriverUnload)

    def major_function(self, driver_object: int, major: int) -> int:
        return self._get64(driver_object + L.DRIVER_OBJECT.MajorFunction + 8 * major)

    def registered_majors(self, driver_object: int) -> list[int]:
        """The major functions the driver set (those not left at IopInvalidDeviceRequest)."""
        return [m for m in range(L.IRP_MJ_MAXIMUM_FUNCTION + 1)
                if self.major_function(driver_object, m) != self.invalid_device_request]

    def delete_driver_object(self, wdm: WdmDriver) -> None:
        """After DriverUnload (or a failed DriverEntry): the driver object goes."""
        self.driver_entry_returned(wdm)
        driver = wdm.driver_object
        extension = driver + L.DRIVER_OBJECT.SIZE
        self._free_string_copy(driver + L.DRIVER_OBJECT.DriverName)
        self._free_string_copy(extension + L.DRIVER_EXTENSION.ServiceKeyName)
        for address in wdm.python_code:
            self.python_code.pop(address, None)
        self.wdm_drivers.pop(driver, None)
        wdm.deleted = True
        self._ob_make_temporary(driver)
        self._ob_dereference(driver)

    # --- driver object extensions (IO_CLIENT_EXTENSION blocks on DRIVER_EXTENSION) --------------

    @routine("NTSTATUS IoAllocateDriverObjectExtension(PDRIVER_OBJECT DriverObject, "
             "PVOID ClientIdentificationAddress, ULONG DriverObjectExtensionSize, "
             "_Out_ PVOID *DriverObjectExtension)")
    def IoAllocateDriverObjectExtension(self, DriverObject, ClientIdentificationAddress,
                                        DriverObjectExtensionSize) -> tuple[int, int]:
        """(status, extension): a zeroed context area of nonpaged pool ("DRVE", after its
        IO_CLIENT_EXTENSION header: NextExtension, ClientIdentificationAddress), first on
        DriverExtension->ClientDriverExtension, freed with the driver object. An identifier
        the driver has used already is STATUS_OBJECT_NAME_COLLISION, no pool
        STATUS_INSUFFICIENT_RESOURCES; the extension is NULL on failure."""
        self._check_irql_at_most(DISPATCH_LEVEL, "IoAllocateDriverObjectExtension")
        size = IO_CLIENT_EXTENSION_SIZE + (DriverObjectExtensionSize & 0xFFFFFFFF)
        head = self._get64(DriverObject + L.DRIVER_OBJECT.DriverExtension) + \
            L.DRIVER_EXTENSION.ClientDriverExtension
        if self._client_extension(head, ClientIdentificationAddress):
            return STATUS_OBJECT_NAME_COLLISION, 0
        block = self._io_allocate(PoolType.NonPagedPool, size, TAG_DRIVER_EXTENSION, False)
        if not block:
            return NtStatus.STATUS_INSUFFICIENT_RESOURCES, 0
        self.write(block, bytes(size))
        self._put64(block, self._get64(head))
        self._put64(block + 8, ClientIdentificationAddress)
        self._put64(head, block)
        self.client_extensions.setdefault(DriverObject, []).append(block)
        return NtStatus.STATUS_SUCCESS, block + IO_CLIENT_EXTENSION_SIZE

    @routine("PVOID IoGetDriverObjectExtension(PDRIVER_OBJECT DriverObject, "
             "PVOID ClientIdentificationAddress)")
    def IoGetDriverObjectExtension(self, DriverObject, ClientIdentificationAddress) -> int:
        """The context area allocated under that identifier, or NULL."""
        head = self._get64(DriverObject + L.DRIVER_OBJECT.DriverExtension) + \
            L.DRIVER_EXTENSION.ClientDriverExtension
        block = self._client_extension(head, ClientIdentificationAddress)
        return block + IO_CLIENT_EXTENSION_SIZE if block else 0

    def _client_extension(self, head: int, identifier: int) -> int:
        """The IO_CLIENT_EXTENSION with that identifier on the list at ``head`` (0: none).
        A list the driver damaged into a loop is walked as Windows walks it, under the I/O
        database's queued spin lock: forever (``MachineHung``)."""
        block = self._get64(head)
        steps = 0
        while block:
            if self._get64(block + 8) == identifier & MASK64:
                return block
            block = self._get64(block)
            steps += 1
            if steps > CLIENT_EXTENSION_WALK_LIMIT:
                raise MachineHung(f"the driver object extension list at {head:#x} never ends "
                                  f"(a loop): Windows walks it forever at DISPATCH_LEVEL")
        return 0

    def devices_of(self, driver_object: int) -> list[int]:
        devices = []
        device = self._get64(driver_object + L.DRIVER_OBJECT.DeviceObject)
        while device and len(devices) < 4096:
            devices.append(device)
            device = self._get64(device + L.DEVICE_OBJECT.NextDevice)
        return devices

    # --- devices ---------------------------------------------------------------------------

    @routine("NTSTATUS IoCreateDevice(PDRIVER_OBJECT DriverObject, ULONG DeviceExtensionSize, "
             "PUNICODE_STRING DeviceName, DEVICE_TYPE DeviceType, ULONG DeviceCharacteristics, "
             "BOOLEAN Exclusive, _Out_ PDEVICE_OBJECT *DeviceObject)")
    def IoCreateDevice(self, DriverObject, DeviceExtensionSize, DeviceName, DeviceType,
                       DeviceCharacteristics, Exclusive) -> tuple[int, int]:
        """A "Devi" object: DEVICE_OBJECT, zeroed extension, DEVOBJ_EXTENSION; linked first
        on the driver's list, DO_DEVICE_INITIALIZING set. (status, device)."""
        name = self._unicode_string(DeviceName) if DeviceName else None
        extension_size = (DeviceExtensionSize + 7) & ~7
        body_size = L.DEVICE_OBJECT.SIZE + extension_size + L.DEVOBJ_EXTENSION.SIZE
        if name == "":
            name = None
        try:
            # Permanent, as IoCreateDevice makes them: closing a handle to the device does
            # not take its name; IoDeleteDevice makes it temporary.
            device = self._ob_create("Device", body_size, name, permanent=True)
        except NtStatusError as error:
            return error.status, 0
        if not device:
            return NtStatus.STATUS_INSUFFICIENT_RESOURCES, 0
        devobj_extension = device + L.DEVICE_OBJECT.SIZE + extension_size
        self._put16(device + L.DEVICE_OBJECT.Type, L.IO_TYPE_DEVICE)
        self._put16(device + L.DEVICE_OBJECT.Size, L.DEVICE_OBJECT.SIZE + DeviceExtensionSize)
        self._put64(device + L.DEVICE_OBJECT.DriverObject, DriverObject)
        flags = L.DO_DEVICE_INITIALIZING | (L.DO_EXCLUSIVE if Exclusive else 0) | \
            (L.DO_DEVICE_HAS_NAME if name else 0)
        self._put32(device + L.DEVICE_OBJECT.Flags, flags)
        self._put32(device + L.DEVICE_OBJECT.Characteristics, DeviceCharacteristics)
        self._put64(device + L.DEVICE_OBJECT.DeviceExtension,
                    device + L.DEVICE_OBJECT.SIZE if DeviceExtensionSize else 0)
        self._put32(device + L.DEVICE_OBJECT.DeviceType, DeviceType)
        self._put8(device + L.DEVICE_OBJECT.StackSize, 1)
        self._put16(device + L.DEVICE_OBJECT.SectorSize, 512 if DeviceType in (2, 7, 8) else 0)
        self._put64(device + L.DEVICE_OBJECT.DeviceObjectExtension, devobj_extension)
        self._put16(devobj_extension + L.DEVOBJ_EXTENSION.Type, L.IO_TYPE_DEVICE_OBJECT_EXTENSION)
        self._put16(devobj_extension + L.DEVOBJ_EXTENSION.Size, L.DEVOBJ_EXTENSION.SIZE)
        self._put64(devobj_extension + L.DEVOBJ_EXTENSION.DeviceObject, device)
        # DeviceLock: a synchronization event, signalled.
        self.write(device + L.DEVICE_OBJECT.DeviceLock, bytes([1, 0, 6, 0, 1, 0, 0, 0]))
        lock_list = device + L.DEVICE_OBJECT.DeviceLock + L.DISPATCHER_HEADER.WaitListHead
        self._put64(lock_list, lock_list)
        self._put64(lock_list + 8, lock_list)
        first = self._get64(DriverObject + L.DRIVER_OBJECT.DeviceObject)
        self._put64(device + L.DEVICE_OBJECT.NextDevice, first)
        self._put64(DriverObject + L.DRIVER_OBJECT.DeviceObject, device)
        return NtStatus.STATUS_SUCCESS, device

    @routine("VOID IoDeleteDevice(PDEVICE_OBJECT DeviceObject)")
    def IoDeleteDevice(self, DeviceObject) -> None:
        """Unlink from the driver's list, drop the name; the memory goes with the last
        reference (an open file keeps it)."""
        self._object(DeviceObject, "Device")
        driver = self._get64(DeviceObject + L.DEVICE_OBJECT.DriverObject)
        link = driver + L.DRIVER_OBJECT.DeviceObject
        while True:
            current = self._get64(link)
            if not current:
                break
            if current == DeviceObject:
                self._put64(link, self._get64(DeviceObject + L.DEVICE_OBJECT.NextDevice))
                break
            link = current + L.DEVICE_OBJECT.NextDevice
        extension = self._get64(DeviceObject + L.DEVICE_OBJECT.DeviceObjectExtension)
        # DOE_DELETE_PENDING
        self._put32(extension + L.DEVOBJ_EXTENSION.ExtensionFlags,
                    self._get32(extension + L.DEVOBJ_EXTENSION.ExtensionFlags) | 0x4)
        self._ob_make_temporary(DeviceObject)
        self._ob_dereference(DeviceObject)

    @routine("NTSTATUS IoCreateSymbolicLink(PUNICODE_STRING SymbolicLinkName, PUNICODE_STRING DeviceName)")
    def IoCreateSymbolicLink(self, SymbolicLinkName, DeviceName) -> int:
        """A permanent "Symb" object whose LinkTarget ("Symt") names the device."""
        link_name = self._unicode_string(SymbolicLinkName)
        target = self._unicode_string(DeviceName)
        try:
            link = self._ob_create("SymbolicLink", 0x20, link_name, PoolType.PagedPool,
                                   permanent=True)
        except NtStatusError as error:
            return error.status
        if not link:
            return NtStatus.STATUS_INSUFFICIENT_RESOURCES
        encoded = target.encode("utf-16-le")
        buffer = self._io_allocate(PoolType.PagedPool, len(encoded) + 2, _SYMT)
        if not buffer:
            self._ob_make_temporary(link)
            self._ob_dereference(link)
            return NtStatus.STATUS_INSUFFICIENT_RESOURCES
        self.write(buffer, encoded + b"\0\0")
        self._put_unicode_string(link + 0x08, len(encoded), len(encoded) + 2, buffer)
        self.objects[link].delete = _delete_symbolic_link
        self._ob_dereference_to_permanent(link)
        return NtStatus.STATUS_SUCCESS

    def _ob_dereference_to_permanent(self, body: int) -> None:
        # ObInsertObject's handle is closed at once: a permanent object keeps no reference.
        self._add_counts(body, -1, 0)

    @routine("NTSTATUS IoDeleteSymbolicLink(PUNICODE_STRING SymbolicLinkName)")
    def IoDeleteSymbolicLink(self, SymbolicLinkName) -> int:
        body = self._ob_lookup(self._unicode_string(SymbolicLinkName))
        if body is None or self.objects[body].type_name != "SymbolicLink":
            return STATUS_OBJECT_NAME_NOT_FOUND
        self._add_counts(body, 1, 0)
        self._ob_make_temporary(body)
        self._ob_dereference(body)
        return NtStatus.STATUS_SUCCESS

    def symbolic_link_target(self, link: int) -> str:
        return self._unicode_string(link + 0x08)

    def resolve_device(self, name: str) -> int:
        """The device object a name reaches (symbolic links followed), or NtStatusError."""
        for _ in range(32):
            body = self._ob_lookup(name)
            if body is None:
                raise NtStatusError(STATUS_OBJECT_NAME_NOT_FOUND, name)
            kind = self.objects[body].type_name
            if kind == "Device":
                return body
            if kind != "SymbolicLink":
                raise NtStatusError(0xC0000024, f"{name} is a {kind} object, not a device")
            name = self.symbolic_link_target(body)
        raise NtStatusError(STATUS_OBJECT_NAME_NOT_FOUND, f"{name}: too many symbolic links")

    @routine("PDEVICE_OBJECT IoAttachDeviceToDeviceStack(PDEVICE_OBJECT SourceDevice, "
             "PDEVICE_OBJECT TargetDevice)")
    def IoAttachDeviceToDeviceStack(self, SourceDevice, TargetDevice) -> int:
        """Attach on top of TargetDevice's stack; returns the device attached to."""
        top = self._top_of_stack(TargetDevice)
        self._put64(top + L.DEVICE_OBJECT.AttachedDevice, SourceDevice)
        self._put8(SourceDevice + L.DEVICE_OBJECT.StackSize,
                   self.read(top + L.DEVICE_OBJECT.StackSize, 1)[0] + 1)
        self._put32(SourceDevice + L.DEVICE_OBJECT.AlignmentRequirement,
                    self._get32(top + L.DEVICE_OBJECT.AlignmentRequirement))
        self._put16(SourceDevice + L.DEVICE_OBJECT.SectorSize,
                    self._get16(top + L.DEVICE_OBJECT.SectorSize))
        extension = self._get64(SourceDevice + L.DEVICE_OBJECT.DeviceObjectExtension)
        self._put64(extension + L.DEVOBJ_EXTENSION.AttachedTo, top)
        self._add_counts(top, 1, 0)
        return top

    @routine("NTSTATUS IoAttachDevice(PDEVICE_OBJECT SourceDevice, PUNICODE_STRING TargetDevice, "
             "_Out_ PDEVICE_OBJECT *AttachedDevice)")
    def IoAttachDevice(self, SourceDevice, TargetDevice) -> tuple[int, int]:
        try:
            target = self.resolve_device(self._unicode_string(TargetDevice))
        except NtStatusError as error:
            return error.status, 0
        return NtStatus.STATUS_SUCCESS, self.IoAttachDeviceToDeviceStack(SourceDevice, target)

    @routine("VOID IoDetachDevice(PDEVICE_OBJECT TargetDevice)")
    def IoDetachDevice(self, TargetDevice) -> None:
        attached = self._get64(TargetDevice + L.DEVICE_OBJECT.AttachedDevice)
        if attached:
            extension = self._get64(attached + L.DEVICE_OBJECT.DeviceObjectExtension)
            self._put64(extension + L.DEVOBJ_EXTENSION.AttachedTo, 0)
        self._put64(TargetDevice + L.DEVICE_OBJECT.AttachedDevice, 0)
        self._ob_dereference(TargetDevice)

    def _top_of_stack(self, device: int) -> int:
        for _ in range(64):
            above = self._get64(device + L.DEVICE_OBJECT.AttachedDevice)
            if not above:
                return device
            device = above
        return device

    @routine("PDEVICE_OBJECT IoGetAttachedDeviceReference(PDEVICE_OBJECT DeviceObject)")
    def IoGetAttachedDeviceReference(self, DeviceObject) -> int:
        top = self._top_of_stack(DeviceObject)
        self._add_counts(top, 1, 0)
        return top

    @routine("PDEVICE_OBJECT IoGetAttachedDevice(PDEVICE_OBJECT DeviceObject)")
    def IoGetAttachedDevice(self, DeviceObject) -> int:
        return self._top_of_stack(DeviceObject)

    @routine("NTSTATUS IoGetDeviceObjectPointer(PUNICODE_STRING ObjectName, ACCESS_MASK DesiredAccess, "
             "_Out_ PFILE_OBJECT *FileObject, _Out_ PDEVICE_OBJECT *DeviceObject)")
    def IoGetDeviceObjectPointer(self, ObjectName, DesiredAccess) -> tuple[int, int, int]:
        """Open the named device (a create IRP to its stack): (status, file, top device).
        The caller dereferences the file object when done."""
        try:
            handle = self.open(self._unicode_string(ObjectName), kernel_caller=True)
        except NtStatusError as error:
            return error.status, 0, 0
        # As ZwOpenFile, ObReferenceObjectByHandle, ZwClose: the handle's close sends
        # IRP_MJ_CLEANUP; the caller's reference keeps the file object until it lets go,
        # and IRP_MJ_CLOSE goes down then.
        file = handle.file_object
        self._add_counts(file, 1, 0)
        handle.close()
        return NtStatus.STATUS_SUCCESS, file, self._top_of_stack(handle.device)

    @routine("BOOLEAN IoIsWdmVersionAvailable(UCHAR MajorVersion, UCHAR MinorVersion)")
    def IoIsWdmVersionAvailable(self, MajorVersion, MinorVersion) -> int:
        """Windows 7 is WDM 6.0 (0x06, 0x00)."""
        return int((MajorVersion, MinorVersion) <= (6, 0))

    # --- IRPs ------------------------------------------------------------------------------

    @routine("PIRP IoAllocateIrp(CCHAR StackSize, BOOLEAN ChargeQuota)")
    def IoAllocateIrp(self, StackSize, ChargeQuota=False) -> int:
        """An IRP, initialized, CurrentLocation = StackSize + 1: one of up to
        LARGE_IRP_STACK_LOCATIONS locations (not quota charged) from the processor's small,
        medium or large IRP lookaside list or the system's (``io_lookaside``), else an "Irp "
        from nonpaged pool; NULL when pool is exhausted."""
        if type(StackSize) is int and 0 < StackSize <= LARGE_IRP_STACK_LOCATIONS and not ChargeQuota:
            # The usual call, a fixed-size IRP not charged to quota: when the processor's list
            # gives one on a resident page with room for the packet on it (``io_take_at``
            # gives its physical address then, and only while nobody listens for memory
            # writes), the packet is the template copied and the IRP's address packed in
            # (``<``: the current stack location, just past the packet, is on its page too).
            # (Routines made per machine are called through a local: an instance attribute
            # called as a method is looked up on the class first, unspecialized in 3.11.)
            take = self.io_take_at
            irp, irp_at = take(_IRP_LIST[StackSize])
            if irp_at is not None:
                template, packet_size = _IRP_TEMPLATES[StackSize]
                if (irp_at & 0xFFF) + packet_size < PAGE_SIZE:
                    self._mem[irp_at:irp_at + packet_size] = template
                    at = irp_at >> 3  # (an entry is 16-byte aligned)
                    qwords = self._words
                    qwords[at + _THREAD_LIST_QWORD] = qwords[at + _THREAD_LIST_QWORD + 1] = \
                        irp + _IRP_THREAD_LIST_ENTRY
                    qwords[at + _CURRENT_STACK_LOCATION_QWORD] = irp + packet_size
                    return irp
            allocation_size, packet_size = _IRP_SIZES[StackSize]
            if not irp:
                irp = self.pool.allocate(_NONPAGED_POOL, allocation_size, L.TAG_IRP)
            if irp:
                self.write(irp, _irp_packet(irp, packet_size, StackSize, L.IRP_ALLOCATED_FIXED_SIZE, 0))
            return irp
        flags = L.IRP_QUOTA_CHARGED if ChargeQuota else 0
        if type(StackSize) is int and 0 < StackSize < 0x80:
            # The usual call, a CCHAR's positive value: the sizes from the table, and the
            # pool's allocation fast path called from here, one frame below the driver's
            # call, so that its call-site lookup finds that call without walking out of
            # ntpool's frames (``_io_allocate`` is one frame more: the same site, found
            # the longer way).
            allocation_size, packet_size = _IRP_SIZES[StackSize]
            irp = 0
            if StackSize <= LARGE_IRP_STACK_LOCATIONS:  # fixed size: a lookaside list's
                flags |= L.IRP_ALLOCATED_FIXED_SIZE
                if not ChargeQuota:
                    irp = self.io_take(_IRP_LIST[StackSize])
            if not irp:
                irp = self.pool.allocate(_NONPAGED_POOL, allocation_size, L.TAG_IRP)
            if irp:
                self.write(irp, _irp_packet(irp, packet_size, StackSize, flags, 0))
            return irp
        StackSize &= 0xFF
        if StackSize > 0x7F:
            StackSize -= 0x100
        if StackSize < 1:
            return 0
        allocation_size, packet_size = _IRP_SIZES[StackSize]
        irp = 0
        if StackSize <= LARGE_IRP_STACK_LOCATIONS:
            flags |= L.IRP_ALLOCATED_FIXED_SIZE
            if not ChargeQuota:
                irp = self.io_take(_IRP_LIST[StackSize])
        if not irp:
            irp = self._io_allocate(PoolType.NonPagedPool, allocation_size, L.TAG_IRP)
        if not irp:
            return 0
        self._prepare_irp(irp, packet_size, StackSize, flags)
        return irp

    @routine("VOID IoInitializeIrp(PIRP Irp, USHORT PacketSize, CCHAR StackSize)")
    def IoInitializeIrp(self, Irp, PacketSize, StackSize) -> None:
        self._prepare_irp(Irp, PacketSize, StackSize)

    def _prepare_irp(self, Irp, PacketSize, StackSize, allocation_flags: int = 0, status: int = 0) -> None:
        """IoInitializeIrp, and the AllocationFlags IoAllocateIrp sets (and the status and
        flags IoReuseIrp keeps): the packet, made here with every field in place, written
        at once."""
        if type(PacketSize) is int and L.IRP.SIZE <= PacketSize <= 0xFFFF and type(StackSize) is int:
            self.write(Irp, _irp_packet(Irp, PacketSize, StackSize, allocation_flags, status))
            return
        self.write(Irp, bytes(PacketSize))
        self._put16(Irp + L.IRP.Type, L.IO_TYPE_IRP)
        self._put16(Irp + L.IRP.Size, PacketSize)
        self._put8(Irp + L.IRP.StackCount, StackSize)
        self._put8(Irp + L.IRP.CurrentLocation, StackSize + 1)
        self._put8(Irp + L.IRP.ApcEnvironment, 0)
        entry = Irp + L.IRP.ThreadListEntry
        self._put64(entry, entry)
        self._put64(entry + 8, entry)
        self._put64(Irp + L.IRP.CurrentStackLocation,
                    Irp + L.IRP.SIZE + StackSize * L.IO_STACK_LOCATION.SIZE)
        if allocation_flags:
            self._put8(Irp + L.IRP.AllocationFlags, allocation_flags)
        if status:
            self._put32(Irp + L.IRP.IoStatus_Status, status)

    @routine("VOID IoFreeIrp(PIRP Irp)")
    def IoFreeIrp(self, Irp) -> None:
        """Free an IRP; one that is not an IRP (already freed) is bug check 0x44."""
        offset = Irp & 0xFFF if type(Irp) is int else PAGE_SIZE
        base = self._tlb.get(Irp >> PAGE_SHIFT) \
            if offset <= _LAST_FLAGS_OFFSET and not self._writes_published else None
        irp_at = base + offset if base is not None else None
        if irp_at is not None:
            # The usual call: the IRP's Type, StackCount and AllocationFlags on a resident
            # page, nobody listening for memory writes: read at once.
            irp_type, stack_count, flags = _IRP_FREED.unpack_from(self._mem, irp_at)
        if irp_at is not None and irp_type == L.IO_TYPE_IRP:
            self._mem[irp_at] = 0  # (the Type's high byte is 0 already)
        else:
            if self.read(Irp + L.IRP.Type, 2) != _IRP_TYPE_BYTES:
                self.KeBugCheckEx(MULTIPLE_IRP_COMPLETE_REQUESTS, Irp, 0, 0, 0,
                                  detail=f"IoFreeIrp of {Irp:#x}, which is not an IRP (freed twice?)")
            self.write(Irp + L.IRP.Type, b"\0\0")
            flags = stack_count = irp_at = None
        if self.built_irps:  # (an empty set's test costs less than a discard)
            self.built_irps.discard(Irp)  # a driver freeing its own request (its completion routine)
        # A fixed-size IRP (neither quota charged nor must-succeed) goes back to the small,
        # medium or large IRPs' lookaside list while one keeps it (its physical address known
        # on the usual call: the list's push needs no translation of its own).
        if flags is None:
            flags = self.read(Irp + L.IRP.AllocationFlags, 1)[0]
        if flags & _IRP_KEPT_FLAGS == L.IRP_ALLOCATED_FIXED_SIZE:
            if stack_count is None:
                stack_count = self.read(Irp + L.IRP.StackCount, 1)[0]
            if irp_at is not None:
                give_back = self.io_give_back_at  # (through a local: see IoAllocateIrp)
                if give_back(_IRP_LIST[stack_count], Irp, irp_at):
                    return
            elif self.io_give_back(_IRP_LIST[stack_count], Irp):
                return
        self.pool.free(Irp, L.TAG_IRP)

    @routine("VOID IoReuseIrp(PIRP Irp, NTSTATUS Iostatus)")
    def IoReuseIrp(self, Irp, Iostatus) -> None:
        """IoInitializeIrp with the IRP's own Size and StackCount, keeping its
        AllocationFlags; IoStatus.Status is Iostatus."""
        offset = Irp & 0xFFF if type(Irp) is int and type(Iostatus) is int else PAGE_SIZE
        base = self._tlb.get(Irp >> PAGE_SHIFT) \
            if offset <= PAGE_SIZE - _IRP_REUSED.size and not self._writes_published else None
        if base is not None:
            # The usual call, an IRP whose fields read here are on one resident page, nobody
            # listening for memory writes: read at once, and (a Size that holds the whole
            # IRP) the packet written once with the flags and the status in place.
            size, stack_count, flags = _IRP_REUSED.unpack_from(self._mem, base + offset)
            if size >= L.IRP.SIZE:
                self._prepare_irp(Irp, size, stack_count, flags, Iostatus)
                return
        flags = self.read(Irp + L.IRP.AllocationFlags, 1)[0]
        self.IoInitializeIrp(Irp, self._get16(Irp + L.IRP.Size), self.read(Irp + L.IRP.StackCount, 1)[0])
        self._put8(Irp + L.IRP.AllocationFlags, flags)
        self._put32(Irp + L.IRP.IoStatus_Status, Iostatus)

    def _resident(self, va, size: int) -> int | None:
        """The physical address of ``size`` bytes at ``va`` when they are on one resident
        page and nobody listens for memory writes (a usual call's fields, read and written
        straight to memory there); None for anything else (the general way)."""
        offset = va & 0xFFF if type(va) is int else PAGE_SIZE
        if offset > PAGE_SIZE - size or self._writes_published:
            return None
        base = self._tlb.get(va >> PAGE_SHIFT)
        return None if base is None else base + offset

    def current_stack_location(self, irp: int) -> int:
        return self._get64(irp + L.IRP.CurrentStackLocation)

    @routine("NTSTATUS IofCallDriver(PDEVICE_OBJECT DeviceObject, PIRP Irp)")
    def IofCallDriver(self, DeviceObject, Irp) -> int:
        """Move to the next stack location and call the device's driver's dispatch routine
        for its major function; no location left is bug check 0x35."""
        irp_at = self._resident(Irp, L.IRP.SIZE) if type(DeviceObject) is int else None
        if irp_at is not None:
            location = self._mem[irp_at + L.IRP.CurrentLocation]
            stack = _QWORD.unpack_from(self._mem, irp_at + L.IRP.CurrentStackLocation)[0] - \
                L.IO_STACK_LOCATION.SIZE
            stack_at = self._resident(stack, L.IO_STACK_LOCATION.SIZE) if 1 < location < 0x80 else None
            if stack_at is not None:
                # The usual call, the IRP and its next stack location each on a resident page,
                # nobody listening for memory writes: the same stores, in the same order, made
                # straight to memory.
                mem = self._mem
                mem[irp_at + L.IRP.CurrentLocation] = location - 1
                _QWORD.pack_into(mem, irp_at + L.IRP.CurrentStackLocation, stack)
                _QWORD.pack_into(mem, stack_at + L.IO_STACK_LOCATION.DeviceObject, DeviceObject & MASK64)
                return self._dispatch(DeviceObject, Irp, mem[stack_at + L.IO_STACK_LOCATION.MajorFunction])
        location = self.read(Irp + L.IRP.CurrentLocation, 1)[0]
        location = location - 0x100 if location > 0x7F else location
        location -= 1
        if location <= 0:
            self.KeBugCheckEx(NO_MORE_IRP_STACK_LOCATIONS, Irp, 0, 0, 0,
                              detail=f"IofCallDriver with IRP {Irp:#x} on its last stack location")
        self._put8(Irp + L.IRP.CurrentLocation, location)
        stack = self.current_stack_location(Irp) - L.IO_STACK_LOCATION.SIZE
        self._put64(Irp + L.IRP.CurrentStackLocation, stack)
        self._put64(stack + L.IO_STACK_LOCATION.DeviceObject, DeviceObject)
        return self._dispatch(DeviceObject, Irp, self.read(stack + L.IO_STACK_LOCATION.MajorFunction, 1)[0])

    def _dispatch(self, DeviceObject, Irp, major: int) -> int:
        """Call the device's driver's dispatch routine for ``major`` (IofCallDriver's end)."""
        driver = self._get64(DeviceObject + L.DEVICE_OBJECT.DriverObject)
        dispatch = self.major_function(driver, major) if major <= L.IRP_MJ_MAXIMUM_FUNCTION \
            else self.invalid_device_request
        return self.call_code(dispatch, DeviceObject, Irp) & 0xFFFFFFFF


    @routine("VOID IofCompleteRequest(PIRP Irp, CCHAR PriorityBoost)")
    def IofCompleteRequest(self, Irp, PriorityBoost=0) -> None:
        """Complete: each stack location upward, calling the completion routines set for
        this outcome; STATUS_MORE_PROCESSING_REQUIRED from one stops there. Completing an
        IRP twice is bug check 0x44 (MULTIPLE_IRP_COMPLETE_REQUESTS)."""
        # Where the IRP, or a stack location, is on a resident page and nobody listens for
        # memory writes (``_resident``), its fields are read and written straight to memory:
        # the same reads and stores, in the same order, as the general way's.
        mem = self._mem
        irp_at = self._resident(Irp, L.IRP.SIZE)
        if irp_at is not None:
            count = mem[irp_at + L.IRP.StackCount]
            location = mem[irp_at + L.IRP.CurrentLocation]
            not_in_progress = location > count or _USHORT.unpack_from(mem, irp_at + L.IRP.Type)[0] != L.IO_TYPE_IRP
        else:
            count = self.read(Irp + L.IRP.StackCount, 1)[0]
            location = self.read(Irp + L.IRP.CurrentLocation, 1)[0]
            not_in_progress = location > count or self._get16(Irp + L.IRP.Type) != L.IO_TYPE_IRP
        if not_in_progress:
            self.KeBugCheckEx(MULTIPLE_IRP_COMPLETE_REQUESTS, Irp, 0, 0, 0,
                              detail=f"IRP {Irp:#x} completed when it is not in progress "
                                     f"(completed twice?)")
        status = _ULONG.unpack_from(mem, irp_at + L.IRP.IoStatus_Status)[0] if irp_at is not None \
            else self._get32(Irp + L.IRP.IoStatus_Status)
        if status == STATUS_PENDING:
            self.KeBugCheckEx(MULTIPLE_IRP_COMPLETE_REQUESTS, Irp, 0, 0, 0,
                              detail=f"IRP {Irp:#x} completed with STATUS_PENDING")
        while True:
            irp_at = self._resident(Irp, L.IRP.SIZE)  # (again: a completion routine may free or page it out)
            location = mem[irp_at + L.IRP.CurrentLocation] if irp_at is not None \
                else self.read(Irp + L.IRP.CurrentLocation, 1)[0]
            if location > count:
                break
            if irp_at is not None:
                stack = _QWORD.unpack_from(mem, irp_at + L.IRP.CurrentStackLocation)[0]
                stack_at = self._resident(stack, L.IO_STACK_LOCATION.SIZE)
            else:
                stack = self.current_stack_location(Irp)
                stack_at = None
            if stack_at is not None:
                control = mem[stack_at + L.IO_STACK_LOCATION.Control]
                routine_address, context = _TWO_QWORDS.unpack_from(
                    mem, stack_at + L.IO_STACK_LOCATION.CompletionRoutine)
                mem[irp_at + L.IRP.PendingReturned] = control & L.SL_PENDING_RETURNED
                # IopClearStackLocation, then step up to the caller's location.
                mem[stack_at + L.IO_STACK_LOCATION.MinorFunction:stack_at + L.IO_STACK_LOCATION.Control + 1] = \
                    b"\0\0\0"
                _TWO_QWORDS.pack_into(mem, stack_at + L.IO_STACK_LOCATION.CompletionRoutine, 0, 0)
                mem[irp_at + L.IRP.CurrentLocation] = location + 1 & 0xFF
                _QWORD.pack_into(mem, irp_at + L.IRP.CurrentStackLocation,
                                 stack + L.IO_STACK_LOCATION.SIZE & MASK64)
                status = _ULONG.unpack_from(mem, irp_at + L.IRP.IoStatus_Status)[0]
                cancelled = mem[irp_at + L.IRP.Cancel]
            else:
                control = self.read(stack + L.IO_STACK_LOCATION.Control, 1)[0]
                routine_address = self._get64(stack + L.IO_STACK_LOCATION.CompletionRoutine)
                context = self._get64(stack + L.IO_STACK_LOCATION.Context)
                self._put8(Irp + L.IRP.PendingReturned, control & L.SL_PENDING_RETURNED)
                # IopClearStackLocation, then step up to the caller's location.
                self.write(stack + L.IO_STACK_LOCATION.MinorFunction, bytes(3))
                self._put64(stack + L.IO_STACK_LOCATION.CompletionRoutine, 0)
                self._put64(stack + L.IO_STACK_LOCATION.Context, 0)
                self._put8(Irp + L.IRP.CurrentLocation, location + 1)
                self._put64(Irp + L.IRP.CurrentStackLocation, stack + L.IO_STACK_LOCATION.SIZE)
                status = self._get32(Irp + L.IRP.IoStatus_Status)
                cancelled = self.read(Irp + L.IRP.Cancel, 1)[0]
            wanted = (L.SL_INVOKE_ON_SUCCESS if status < 0x80000000 else L.SL_INVOKE_ON_ERROR) | \
                (L.SL_INVOKE_ON_CANCEL if cancelled else 0)
            if routine_address and control & wanted:
                upper = 0 if location + 1 > count else self._get64(
                    stack + L.IO_STACK_LOCATION.SIZE + L.IO_STACK_LOCATION.DeviceObject)
                result = self.call_code(routine_address, upper, Irp, context) & 0xFFFFFFFF
                if result == STATUS_MORE_PROCESSING_REQUIRED:
                    return
            elif (mem[irp_at + L.IRP.PendingReturned] if stack_at is not None
                  else self.read(Irp + L.IRP.PendingReturned, 1)[0]) and location + 1 <= count:
                # IoMarkIrpPending on the caller's behalf, as IofCompleteRequest does.
                upper_stack = stack + L.IO_STACK_LOCATION.SIZE
                self._put8(upper_stack + L.IO_STACK_LOCATION.Control,
                           self.read(upper_stack + L.IO_STACK_LOCATION.Control, 1)[0] | L.SL_PENDING_RETURNED)
        if Irp in self.built_irps:
            self.complete_built_irp(Irp)  # a driver's own request (routines/io_build.py)
            return
        request = self.io_requests.get(Irp)
        if request is not None:
            request["completed"] = True
            if request.get("pending"):
                # Completed after its dispatch routine returned STATUS_PENDING.
                del self.io_requests[Irp]
                self._complete_io_request(Irp, request)


    # --- MDLs ------------------------------------------------------------------------------

    @routine("PMDL IoAllocateMdl(PVOID VirtualAddress, ULONG Length, BOOLEAN SecondaryBuffer, "
             "BOOLEAN ChargeQuota, PIRP Irp)")
    def IoAllocateMdl(self, VirtualAddress, Length, SecondaryBuffer=False, ChargeQuota=False, Irp=0) -> int:
        """An "Mdl " describing Length bytes at VirtualAddress (no pages locked yet); with an
        IRP it becomes Irp->MdlAddress, or is chained after it when SecondaryBuffer."""
        if not Length or Length > 0xFFFFFFFF:
            return 0
        byte_offset = VirtualAddress & 0xFFF  # (PAGE_SIZE - 1)
        pages = (byte_offset + Length + 0xFFF) >> PAGE_SHIFT  # _span_pages
        size = _MDL_SIZE + 8 * pages
        if size > 0x7FFF:
            return 0
        # An MDL of at most IOP_FIXED_SIZE_MDL_PFNS pages is fixed size: from the processor's
        # MDL lookaside list or the system's, else the pool. The pool's allocation fast path is
        # called from here, one frame below the driver's call (as IoAllocateIrp calls it), and
        # MmInitializeMdl's header written at once.
        if pages <= IOP_FIXED_SIZE_MDL_PFNS:
            flags = L.MDL_ALLOCATED_FIXED_SIZE
            take = self.io_take_at  # (through a local: see IoAllocateIrp)
            mdl, mdl_at = take(LookasideMdlList)
            if mdl_at is not None and not Irp and (mdl_at & 0xFFF) <= _LAST_MDL_HEADER_OFFSET:
                # The usual call: an MDL from the processor's list with its header on a
                # resident page (``io_take_at`` gives its physical address only while nobody
                # listens for memory writes), for no IRP: the header packed in place.
                _MDL_HEADER.pack_into(self._mem, mdl_at, 0, size, flags, 0, 0, VirtualAddress & _PAGE_FRAME,
                                      Length & 0xFFFFFFFF, byte_offset)
                return mdl
            mdl = mdl or self.pool.allocate(_NONPAGED_POOL, FIXED_SIZE_MDL, L.TAG_MDL)
        else:
            flags = 0
            mdl = self.pool.allocate(_NONPAGED_POOL, size, L.TAG_MDL)
        if not mdl:
            return 0
        self.write(mdl, _mdl_header(VirtualAddress, Length, size, flags))
        if Irp:
            if SecondaryBuffer:
                # Chained after the IRP's last MDL, found by following each Next to 0, as
                # Windows does: a chain a driver damaged into a loop is followed forever.
                link, met = Irp + L.IRP.MdlAddress, set()
                while next_mdl := self._get64(link):
                    if next_mdl in met:
                        raise MachineHung(f"the MDL chain of IRP {Irp:#x} loops back to {next_mdl:#x}: "
                                          f"IoAllocateMdl follows its Next links forever")
                    met.add(next_mdl)
                    link = next_mdl + L.MDL.Next
                self._put64(link, mdl)
            else:
                self._put64(Irp + L.IRP.MdlAddress, mdl)
        return mdl

    def _mm_initialize_mdl(self, mdl: int, va: int, length: int, size: int, flags: int = 0) -> None:
        """MmInitializeMdl (and the MdlFlags IoAllocateMdl sets): the header, written at once."""
        self.write(mdl, _mdl_header(va, length, size, flags))

    @routine("VOID IoFreeMdl(PMDL Mdl)")
    def IoFreeMdl(self, Mdl) -> None:
        """Free an MDL (its system mapping, if one is left, goes with it)."""
        offset = Mdl & 0xFFF if type(Mdl) is int else PAGE_SIZE
        base = self._tlb.get(Mdl >> PAGE_SHIFT) \
            if offset <= PAGE_SIZE - _MDL_START_VA and not self._writes_published else None
        if base is not None:
            # The usual call, the fields read here on one resident page, nobody listening
            # for memory writes (as the other routines' usual calls): read at once.
            mdl_at = base + offset
            flags, mapped = _MDL_FLAGS_AND_MAPPING.unpack_from(self._mem, mdl_at + _MDL_SIZE_FIELD)
        else:
            flags = self._get16(Mdl + L.MDL.MdlFlags)
            mapped = self._get64(Mdl + L.MDL.MappedSystemVa)
        if flags & L.MDL_MAPPED_TO_SYSTEM_VA:
            mapped &= _PAGE_FRAME
            if mapped not in self.reserved_mappings and not flags & (L.MDL_SOURCE_IS_NONPAGED_POOL | L.MDL_PARTIAL):
                self._unmap_system(mapped)
        if flags & L.MDL_ALLOCATED_FIXED_SIZE:
            # Kept on the processor's MDL lookaside list or the system's (its physical address
            # known on the usual call).
            if base is not None:
                give_back = self.io_give_back_at  # (through a local: see IoAllocateIrp)
                if give_back(LookasideMdlList, Mdl, mdl_at):
                    return
            elif self.io_give_back(LookasideMdlList, Mdl):
                return
        self.pool.free(Mdl, L.TAG_MDL)

    def _mdl_span(self, mdl: int) -> tuple[int, int, int]:
        start = self._get64(mdl + L.MDL.StartVa)
        count = self._get32(mdl + L.MDL.ByteCount)
        offset = self._get32(mdl + L.MDL.ByteOffset)
        return start, offset, count

    @routine("VOID MmBuildMdlForNonPagedPool(PMDL MemoryDescriptorList)")
    def MmBuildMdlForNonPagedPool(self, MemoryDescriptorList) -> None:
        mdl = MemoryDescriptorList
        if self._build_mdl_on_its_page(mdl):
            return
        start, offset, count = self._mdl_span(mdl)
        pfns = []
        for page in range(_span_pages(start + offset, count)):
            va = start + (page << PAGE_SHIFT)
            pa = self.space.translate(va)
            if pa is None:
                self.read(va, 1)  # the fault says what is wrong with the address
                pa = self.space.translate(va)
            pfns.append(pa >> PAGE_SHIFT)
        self.write(mdl + L.MDL.SIZE, b"".join(p.to_bytes(8, "little") for p in pfns))
        self._put64(mdl + L.MDL.MappedSystemVa, start + offset)
        self._put16(mdl + L.MDL.MdlFlags, self._get16(mdl + L.MDL.MdlFlags) | L.MDL_SOURCE_IS_NONPAGED_POOL)

    def _build_mdl_on_its_page(self, mdl) -> bool:
        """MmBuildMdlForNonPagedPool's usual call, inline: the MDL and its PFN array on one
        resident page, every page it describes resident (in the TLB, where ``translate``
        finds them), nobody listening for memory writes. The header is read at once, the
        frames, MappedSystemVa and MdlFlags written straight to memory. False, with nothing
        read or written, for anything else (the general way then faults, if it must, as
        Windows would)."""
        offset = mdl & 0xFFF if type(mdl) is int else PAGE_SIZE
        base = self._tlb.get(mdl >> PAGE_SHIFT) \
            if offset <= PAGE_SIZE - L.MDL.SIZE and not self._writes_published else None
        if base is None:
            return False
        at = base + offset
        mem = self._mem
        flags, start, count, byte_offset = _MDL_BUILT.unpack_from(mem, at + L.MDL.Size)
        first = start + byte_offset
        pages = ((first & (PAGE_SIZE - 1)) + count + PAGE_SIZE - 1) >> PAGE_SHIFT  # _span_pages
        if offset + L.MDL.SIZE + 8 * pages > PAGE_SIZE:
            return False
        tlb_get = self._tlb.get
        first_page = start >> PAGE_SHIFT  # (start + page * PAGE_SIZE) >> PAGE_SHIFT, page by page
        frames = bytearray()
        for page in range(pages):
            frame = tlb_get(first_page + page)
            if frame is None:
                return False
            frames += (frame >> PAGE_SHIFT).to_bytes(8, "little")
        mem[at + L.MDL.SIZE:at + L.MDL.SIZE + len(frames)] = frames
        _MDL_MAPPED.pack_into(mem, at + L.MDL.MappedSystemVa, first & MASK64)
        _MDL_FLAGS.pack_into(mem, at + L.MDL.MdlFlags, (flags | L.MDL_SOURCE_IS_NONPAGED_POOL) & 0xFFFF)
        return True

    @routine("VOID MmProbeAndLockPages(PMDL MemoryDescriptorList, KPROCESSOR_MODE AccessMode, "
             "LOCK_OPERATION Operation)")
    def MmProbeAndLockPages(self, MemoryDescriptorList, AccessMode, Operation) -> None:
        """Make the pages resident and record their frames; an address the caller may not
        use, a page that is not there, or (for IoWriteAccess/IoModifyAccess) one that is
        read-only raises STATUS_ACCESS_VIOLATION, as Windows raises it (drivers call this in
        __try)."""
        mdl = MemoryDescriptorList
        start, offset, count = self._mdl_span(mdl)
        write = Operation in (IoWriteAccess, IoModifyAccess)
        if AccessMode == UserMode and start + offset + count > MM_USER_PROBE_ADDRESS:
            raise NtStatusError(NtStatus.STATUS_ACCESS_VIOLATION,
                                f"MmProbeAndLockPages of {start + offset:#x}: not a user address")
        pfns = []
        for page in range(_span_pages(start + offset, count)):
            va = start + (page << PAGE_SHIFT)
            if self.irql_by_processor[self.current_processor] > DISPATCH_LEVEL:
                break
            pte = self.space.pte(va)
            if not pte & 1:
                if va >= SYSTEM_RANGE_START and self.pager.is_paged_out(va):
                    self.pager.page_in(va)
                    pte = self.space.pte(va)
                else:
                    raise NtStatusError(NtStatus.STATUS_ACCESS_VIOLATION,
                                        f"MmProbeAndLockPages: {va:#x} is not mapped")
            if write and not pte & 2:
                raise NtStatusError(NtStatus.STATUS_ACCESS_VIOLATION,
                                    f"MmProbeAndLockPages: {va:#x} is read-only")
            pfns.append((pte & 0x000FFFFFFFFFF000) >> PAGE_SHIFT)
        self.write(mdl + L.MDL.SIZE, b"".join(p.to_bytes(8, "little") for p in pfns))
        self._put64(mdl + L.MDL.Process, self.current_process.address if start < SYSTEM_RANGE_START else 0)
        flags = self._get16(mdl + L.MDL.MdlFlags) | L.MDL_PAGES_LOCKED | (L.MDL_WRITE_OPERATION if write else 0)
        self._put16(mdl + L.MDL.MdlFlags, flags)

    @routine("VOID MmUnlockPages(PMDL MemoryDescriptorList)")
    def MmUnlockPages(self, MemoryDescriptorList) -> None:
        mdl = MemoryDescriptorList
        flags = self._get16(mdl + L.MDL.MdlFlags)
        if not flags & L.MDL_PAGES_LOCKED:
            self.KeBugCheckEx(BugCheckCode.PFN_LIST_CORRUPT, PfnListCorrupt.UNLOCK_PAGES_NOT_LOCKED, 0, mdl, flags,
                              detail=f"MmUnlockPages of MDL {mdl:#x} whose pages are not locked")
        if flags & L.MDL_MAPPED_TO_SYSTEM_VA:
            self._unmap_system(self._get64(mdl + L.MDL.MappedSystemVa) & ~(PAGE_SIZE - 1))
            flags &= ~L.MDL_MAPPED_TO_SYSTEM_VA
        self._put16(mdl + L.MDL.MdlFlags, flags & ~(L.MDL_PAGES_LOCKED | L.MDL_WRITE_OPERATION))

    @routine("PVOID MmMapLockedPagesSpecifyCache(PMDL MemoryDescriptorList, KPROCESSOR_MODE AccessMode, "
             "MEMORY_CACHING_TYPE CacheType, PVOID RequestedAddress, ULONG BugCheckOnFailure, "
             "ULONG Priority)")
    def MmMapLockedPagesSpecifyCache(self, MemoryDescriptorList, AccessMode=KernelMode, CacheType=1,
                                     RequestedAddress=0, BugCheckOnFailure=0, Priority=16) -> int:
        """The MDL's pages mapped in system space (its own address for nonpaged pool);
        what MmGetSystemAddressForMdlSafe returns."""
        mdl = MemoryDescriptorList
        flags = self._get16(mdl + L.MDL.MdlFlags)
        if flags & L.MDL_MAPPING_FLAGS:
            return self._get64(mdl + L.MDL.MappedSystemVa)
        start, offset, count = self._mdl_span(mdl)
        pages = _span_pages(start + offset, count)
        frames = self._mdl_frames_to_map(mdl, flags, pages)
        base = self._map_system_ptes(frames, pages, PTE_USER if AccessMode == UserMode else 0)
        self._put64(mdl + L.MDL.MappedSystemVa, base + offset)
        self._put16(mdl + L.MDL.MdlFlags, flags | L.MDL_MAPPED_TO_SYSTEM_VA)
        return base + offset

    def _mdl_frames_to_map(self, mdl: int, flags: int, pages: int) -> list[int]:
        """The frames of the MDL's first ``pages`` PFN array entries that a mapping maps,
        checked first (``_check_mdl_frames``): up to an entry of MM_EMPTY_LIST, the end of
        the array's frames, past which Windows maps no page (WRK)."""
        pfns = self.read(mdl + L.MDL.SIZE, 8 * pages)
        self._check_mdl_frames(mdl, flags, pfns)
        frames = []
        for index in range(pages):
            pfn = int.from_bytes(pfns[8 * index:8 * index + 8], "little")
            if pfn == MM_EMPTY_LIST:
                break
            frames.append(pfn)
        return frames

    def _check_mdl_frames(self, mdl: int, flags: int, pfns: bytes) -> None:
        """A frame in the MDL's PFN array that is no RAM of the machine. For a verified
        driver Driver Verifier stops first, before any PTE is written: 0xC4/0x89 (the MDL,
        the address of the array entry, the frame), unless the MDL says MDL_IO_SPACE (WRK
        verifier.c, ViCheckMdlPages, which VerifierMapLockedPages(SpecifyCache) run). Without
        Verifier Windows maps whatever frame the MDL names (WRK iosup.c reads its MMPFN
        for the cache attribute): device memory, or addresses no device decodes, which
        ntpool's machine does not have: a ValueError naming the MDL and the frame (from a
        compiled driver, NativeError; README, departures)."""
        frames = self.physical.frame_count
        for index in range(len(pfns) // 8):
            pfn = int.from_bytes(pfns[8 * index:8 * index + 8], "little")
            if pfn == MM_EMPTY_LIST:
                return
            if pfn < frames:
                continue
            entry = mdl + L.MDL.SIZE + 8 * index
            verifier = self.verifier
            if not flags & L.MDL_IO_SPACE and verifier is not None and \
                    verifier.options_for_site(self.call_sites.site_of_caller()) is not None:
                self.KeBugCheckEx(BugCheckCode.DRIVER_VERIFIER_DETECTED_VIOLATION,
                                  VerifierStop.MDL_PAGE_NOT_MEMORY, mdl, entry, pfn,
                                  detail=f"MDL {mdl:#x} of a verified driver names frame "
                                         f"{pfn:#x} (PFN array entry {entry:#x}), which is "
                                         f"no memory of the machine ({frames:#x} frames)")
            raise ValueError(f"MDL {mdl:#x} names frame {pfn:#x} (PFN array entry {entry:#x}), "
                             f"past the machine's {frames:#x} frames of memory: Windows would "
                             f"map it (device memory, or addresses nothing decodes), and "
                             f"ntpool's machine has no memory there")

    @routine("PVOID MmMapLockedPages(PMDL MemoryDescriptorList, KPROCESSOR_MODE AccessMode)")
    def MmMapLockedPages(self, MemoryDescriptorList, AccessMode) -> int:
        return self.MmMapLockedPagesSpecifyCache(MemoryDescriptorList, AccessMode)

    def system_address_for_mdl(self, Mdl, Priority=16):
        """MmGetSystemAddressForMdlSafe (a wdm.h macro), for Python drivers."""
        return self.MmMapLockedPagesSpecifyCache(Mdl, KernelMode, 1, 0, 0, Priority)

    @routine("VOID MmUnmapLockedPages(PVOID BaseAddress, PMDL MemoryDescriptorList)")
    def MmUnmapLockedPages(self, BaseAddress, MemoryDescriptorList) -> None:
        self._unmap_system(BaseAddress & ~(PAGE_SIZE - 1))
        flags = self._get16(MemoryDescriptorList + L.MDL.MdlFlags)
        self._put16(MemoryDescriptorList + L.MDL.MdlFlags, flags & ~L.MDL_MAPPED_TO_SYSTEM_VA)

    def _map_system_ptes(self, frames, pages: int, bits: int = 0, aliased: bool = True,
                         base: int | None = None) -> int:
        """Map ``frames`` writable at fresh system PTEs (``pages`` of them reserved, a guard
        page after) with ``bits`` in each PTE; the base. ``aliased``: the frames are in use
        already (an MDL's, RAM mapped as I/O space), so a CPU that scanned code on them hears
        of the second mapping (``FramesAliased``)."""
        if base is None:  # else PTEs reserved before (MmAllocateMappingAddress)
            base = self._next_system_pte
            self._next_system_pte += (pages + 1) << PAGE_SHIFT
        if frames:  # the PTEs of each page table written at once (map_pages), bits and all
            self.space.map_pages(base, frames, bits=bits)
        self._system_ptes[base] = pages
        if aliased and frames and self.hooks.listening(FramesAliased):
            self.hooks.publish(FramesAliased(base, tuple(frames)))
        return base

    def _unmap_system(self, base: int) -> None:
        pages = self._system_ptes.pop(base, None)
        if pages is None:
            return
        if pages == 1:
            self.space.unmap_page(base)
        else:  # the PTEs of each page table cleared at once
            self.space.unmap_pages(base, pages)
        self.mapping_changed()

    def mapping_changed(self) -> None:
        """Page-table entries went away: a CPU caching translations must forget them (the
        native bridge replaces this)."""

    # --- probes --------------------------------------------------------------------------

    @routine("VOID ProbeForRead(PVOID Address, SIZE_T Length, ULONG Alignment)")
    def ProbeForRead(self, Address, Length, Alignment) -> None:
        """Raise STATUS_DATATYPE_MISALIGNMENT or STATUS_ACCESS_VIOLATION (as ExRaiseStatus
        raises: a driver calls this inside __try) unless [Address, Address+Length) is in
        user space and aligned."""
        if Length:
            if Alignment and Address & (Alignment - 1):
                raise NtStatusError(STATUS_DATATYPE_MISALIGNMENT, f"ProbeForRead({Address:#x})")
            end = Address + Length
            if end > MM_USER_PROBE_ADDRESS or end < Address:
                raise NtStatusError(NtStatus.STATUS_ACCESS_VIOLATION,
                                    f"ProbeForRead of {Length} bytes at {Address:#x}: not user space")

    @routine("VOID ProbeForWrite(PVOID Address, SIZE_T Length, ULONG Alignment)")
    def ProbeForWrite(self, Address, Length, Alignment) -> None:
        """As ProbeForRead, and every page must be there and writable."""
        self.ProbeForRead(Address, Length, Alignment)
        if Length:
            page = Address & ~(PAGE_SIZE - 1)
            while page < Address + Length:
                pte = self.space.pte(page)
                if pte & 3 != 3:
                    raise NtStatusError(NtStatus.STATUS_ACCESS_VIOLATION,
                                        f"ProbeForWrite: {max(page, Address):#x} is not writable")
                page += PAGE_SIZE

    # --- the requests a user-mode caller sends -------------------------------------------

    def open(self, name: str, kernel_caller: bool = False) -> "FileHandle":
        """Open a device by name (symbolic links followed): a FILE_OBJECT and an IRP_MJ_CREATE
        down the device's stack. A failed create raises NtStatusError with its status."""
        device = self.resolve_device(name)
        extension = self._get64(device + L.DEVICE_OBJECT.DeviceObjectExtension)
        if self._get32(extension + L.DEVOBJ_EXTENSION.ExtensionFlags) & 0x4:
            raise NtStatusError(STATUS_DELETE_PENDING, f"{name}: the device is being deleted")
        top = self._top_of_stack(device)
        file = self._ob_create("File", L.FILE_OBJECT.SIZE, on_behalf=False)
        if not file:
            raise NtStatusError(NtStatus.STATUS_INSUFFICIENT_RESOURCES, "no pool for a file object")
        self._put16(file + L.FILE_OBJECT.Type, L.IO_TYPE_FILE)
        self._put16(file + L.FILE_OBJECT.Size, L.FILE_OBJECT.SIZE)
        self._put64(file + L.FILE_OBJECT.DeviceObject, device)
        self._put8(file + L.FILE_OBJECT.ReadAccess, 1)
        self._put8(file + L.FILE_OBJECT.WriteAccess, 1)
        self._add_counts(device, 1, 0)
        handle = FileHandle(self, file, device, top, name, kernel_caller)
        self.objects[file].delete = _close_file_object
        result = handle.request(IRP_MJ_CREATE)
        if result.status & 0x80000000 or result.pending:
            handle.file_closed_without_irps()
            raise NtStatusError(result.status, f"IRP_MJ_CREATE of {name}")
        handle.create_result = result
        handle.opened = True
        return handle

    def _build_irp(self, top: int, file: int, major: int, kernel_caller: bool) -> int:
        stack_size = self.read(top + L.DEVICE_OBJECT.StackSize, 1)[0]
        irp = self.IoAllocateIrp(stack_size, False)
        if not irp:
            raise NtStatusError(NtStatus.STATUS_INSUFFICIENT_RESOURCES, "no pool for an IRP")
        self._put8(irp + L.IRP.RequestorMode, KernelMode if kernel_caller else UserMode)
        self._put64(irp + L.IRP.OriginalFileObject, file)
        self._put64(irp + L.IRP.Thread, self.current_thread)
        next_stack = self.current_stack_location(irp) - L.IO_STACK_LOCATION.SIZE
        self._put8(next_stack + L.IO_STACK_LOCATION.MajorFunction, major)
        self._put64(next_stack + L.IO_STACK_LOCATION.FileObject, file)
        return irp

    def _complete_io_request(self, irp: int, request: dict) -> None:
        """The I/O manager's side of completion (IopCompleteRequest): the status and
        Information into the caller's result, buffers copied back and freed, the IRP freed."""
        result = request["result"]
        result.status = self._get32(irp + L.IRP.IoStatus_Status)
        result.information = self._get64(irp + L.IRP.IoStatus_Information)
        result.pending = False
        result.completed = True
        finish = request.get("finish")
        if finish is not None:
            finish(result)
        self.IoFreeIrp(irp)


MM_EMPTY_LIST = 0xFFFFFFFFFFFFFFFF  # a PFN array entry that ends the MDL's frames


def _irp_packet(irp: int, packet_size: int, stack_size: int, allocation_flags: int, status: int) -> bytearray:
    """The bytes IoInitializeIrp writes at ``irp`` (``packet_size`` of them, at least an
    IRP's), with AllocationFlags and IoStatus.Status as given."""
    packet = bytearray(packet_size)
    entry = irp + L.IRP.ThreadListEntry
    _IRP_PACKET.pack_into(packet, 0, L.IO_TYPE_IRP, packet_size, entry, entry, status & 0xFFFFFFFF,
                          stack_size & 0xFF, stack_size + 1 & 0xFF, 0, allocation_flags & 0xFF,
                          irp + L.IRP.SIZE + stack_size * L.IO_STACK_LOCATION.SIZE & MASK64)
    return packet


# IoAllocateIrp's usual packet and its size, a fixed-size IRP not charged to quota, by StackSize (1 to
# LARGE_IRP_STACK_LOCATIONS): every byte IoInitializeIrp writes but the three QWORDs that
# hold the IRP's own address (ThreadListEntry's links, CurrentStackLocation), stored over
# it.
_IRP_TEMPLATES = (None,) + tuple(
    (_irp_packet(0, L.io_size_of_irp(count), count, L.IRP_ALLOCATED_FIXED_SIZE, 0), L.io_size_of_irp(count))
    for count in range(1, LARGE_IRP_STACK_LOCATIONS + 1))
# Those QWORDs, by their index from the IRP's first; and the offsets the usual calls use, as
# module constants (a class attribute's load, L.IRP.X, is not specialized in CPython 3.11).
_IRP_THREAD_LIST_ENTRY = L.IRP.ThreadListEntry
_MDL_SIZE = L.MDL.SIZE
_MDL_SIZE_FIELD = L.MDL.Size
_MDL_START_VA = L.MDL.StartVa
_LAST_MDL_HEADER_OFFSET = PAGE_SIZE - _MDL_HEADER.size
_THREAD_LIST_QWORD = L.IRP.ThreadListEntry // 8
_CURRENT_STACK_LOCATION_QWORD = L.IRP.CurrentStackLocation // 8


def _mdl_header(va: int, length: int, size: int, flags: int) -> bytes:
    """MmInitializeMdl's MDL header (with ``flags`` as its MdlFlags)."""
    return _MDL_HEADER.pack(0, size & 0xFFFF, flags, 0, 0, va & ~(PAGE_SIZE - 1) & MASK64,
                            length & 0xFFFFFFFF, va & (PAGE_SIZE - 1))


def _span_pages(va: int, length: int) -> int:
    """ADDRESS_AND_SIZE_TO_SPAN_PAGES."""
    return ((va & (PAGE_SIZE - 1)) + length + PAGE_SIZE - 1) >> PAGE_SHIFT


def _free_client_extensions(k, driver: int) -> None:
    """IopDeleteDriver: the driver object's extensions go with it (the blocks it allocated,
    kept beside the machine, so links the driver wrote over lose none)."""
    for block in k.client_extensions.pop(driver, ()):
        k.pool.free(block, None)
    k._put64(driver + L.DRIVER_OBJECT.SIZE + L.DRIVER_EXTENSION.ClientDriverExtension, 0)


def _iop_invalid_device_request(k, DeviceObject, Irp):
    """IopInvalidDeviceRequest: what a major function the driver did not set does."""
    k._put32(Irp + L.IRP.IoStatus_Status, STATUS_INVALID_DEVICE_REQUEST)
    k._put64(Irp + L.IRP.IoStatus_Information, 0)
    k.IofCompleteRequest(Irp, 0)
    return STATUS_INVALID_DEVICE_REQUEST


def _delete_symbolic_link(k, body):
    buffer = k._get64(body + 0x08 + L.UNICODE_STRING.Buffer)
    if buffer:
        k.pool.free(buffer, None)


def _close_file_object(k, body):
    handle = k.file_handles.pop(body, None)
    device = k._get64(body + L.FILE_OBJECT.DeviceObject)
    if handle is not None and handle.opened:
        handle._send_close()
    if device and device in k.objects:
        k._ob_dereference(device)


_SYMT = L.from_display("Symt")


class FileHandle:
    """An open device, as the caller sees it: send requests, then close.

    ``device_control(code, input, output_length)`` builds the IRP as the I/O manager does
    for the code's transfer method; ``read`` and ``write`` follow the device's
    DO_BUFFERED_IO / DO_DIRECT_IO flags; ``close`` sends IRP_MJ_CLEANUP, then IRP_MJ_CLOSE
    when the last reference to the file object goes. Each returns an ``IoResult``.
    """

    def __init__(self, kernel, file_object: int, device: int, top: int, name: str,
                 kernel_caller: bool):
        self.kernel = kernel
        self.file_object = file_object
        self.device = device
        self.top = top
        self.name = name
        self.kernel_caller = kernel_caller
        self.opened = False
        self.closed = False
        self.create_result: IoResult | None = None
        self.close_result: IoResult | None = None
        self.cleanup_result: IoResult | None = None
        self.pending: list[IoResult] = []  # requests the driver returned STATUS_PENDING for
        kernel.file_handles[file_object] = self

    def request(self, major: int, minor: int = 0, parameters: bytes = b"", system_buffer: int = 0,
                user_buffer: int = 0, mdl: int = 0, flags: int = 0, finish=None) -> IoResult:
        """Send one IRP with ``major`` (stack Parameters bytes as given). If the driver
        completes it, the result is final; if it returns STATUS_PENDING, ``pending`` is set
        and the result (and ``finish(result)``: copying back, freeing buffers) is filled in
        when the driver completes the IRP later."""
        k = self.kernel
        irp = k._build_irp(self.top, self.file_object, major, self.kernel_caller)
        stack = k.current_stack_location(irp) - L.IO_STACK_LOCATION.SIZE
        k._put8(stack + L.IO_STACK_LOCATION.MinorFunction, minor)
        if parameters:
            k.write(stack + L.IO_STACK_LOCATION.Parameters, parameters[:0x20])
        k._put64(irp + L.IRP.AssociatedIrp, system_buffer)
        k._put64(irp + L.IRP.UserBuffer, user_buffer)
        k._put64(irp + L.IRP.MdlAddress, mdl)
        k._put32(irp + L.IRP.Flags, flags)
        result = IoResult(major, STATUS_PENDING, 0, pending=True)
        result.irp = irp
        request = {"completed": False, "result": result, "finish": finish}
        k.io_requests[irp] = request
        try:
            if self.kernel_caller:
                returned = k.IofCallDriver(self.top, irp)
            else:
                # The request's thread came from user mode: its PreviousMode says so while the
                # driver handles it (ExGetPreviousMode), and is KernelMode again after.
                with k.previous_mode(UserMode):
                    returned = k.IofCallDriver(self.top, irp)
                k.return_to_kernel()  # the request's thread goes back to user mode: workers run
        except BaseException:
            k.io_requests.pop(irp, None)
            raise
        if request["completed"]:
            del k.io_requests[irp]
            k._complete_io_request(irp, request)
        else:
            # STATUS_PENDING: the IRP is the driver's until it completes it (a leak if never).
            request["pending"] = True
            result.status = returned
            self.pending.append(result)
        return result

    def device_control(self, code: int, input: bytes = b"", output_length: int = 0,
                       internal: bool = False) -> IoResult:
        """IRP_MJ_DEVICE_CONTROL with ``code``; buffers as METHOD_(code & 3) has them:
        METHOD_BUFFERED one SystemBuffer ("Io  ") for both; METHOD_IN/OUT_DIRECT the input
        in a SystemBuffer and the output described by a locked MDL; METHOD_NEITHER the
        caller's user-mode pointers (Type3InputBuffer, UserBuffer)."""
        k = self.kernel
        self._check_open()
        method = code & 3
        input = bytes(input)
        user_in = k.user_space.allocate(len(input)) if input else 0
        if user_in:
            k.write(user_in, input)
        user_out = k.user_space.allocate(output_length) if output_length else 0
        held = {"system_buffer": 0, "mdl": 0}
        flags = 0

        def finish(result: IoResult) -> None:
            count = min(result.information, output_length)
            system_buffer = held["system_buffer"]
            # The I/O manager copies back unless the status is an error (warnings such as
            # STATUS_BUFFER_OVERFLOW copy too).
            if method == METHOD_BUFFERED and system_buffer and count and result.status < 0xC0000000:
                if k.hooks.listening(CopiedToUser):
                    k.hooks.publish(CopiedToUser(system_buffer, count))
                k.write(user_out, k.read(system_buffer, count))
            result.output = k.read(user_out, count) if count else b""
            release()

        def release() -> None:
            self._release_buffers(held, user_in, user_out)

        try:
            if method == METHOD_BUFFERED:
                length = max(len(input), output_length)
                if length:
                    held["system_buffer"] = self._system_buffer(length)
                    if k.hooks.listening(SystemBufferMade):
                        k.hooks.publish(SystemBufferMade(held["system_buffer"], length, len(input),
                                                         self._driver_name()))
                    if input:
                        k.write(held["system_buffer"], input)
                    flags = L.IRP_BUFFERED_IO | L.IRP_DEALLOCATE_BUFFER | \
                        (L.IRP_INPUT_OPERATION if output_length else 0)
            elif method in (METHOD_IN_DIRECT, METHOD_OUT_DIRECT):
                if input:
                    held["system_buffer"] = self._system_buffer(len(input))
                    k.write(held["system_buffer"], input)
                    flags = L.IRP_BUFFERED_IO | L.IRP_DEALLOCATE_BUFFER
                if output_length:
                    held["mdl"] = self._locked_mdl(user_out, output_length,
                                                   IoReadAccess if method == METHOD_IN_DIRECT else IoWriteAccess)
        except BaseException:
            release()
            raise
        parameters = (output_length.to_bytes(8, "little") + len(input).to_bytes(8, "little") +
                      code.to_bytes(8, "little") +
                      (user_in if method == METHOD_NEITHER else 0).to_bytes(8, "little"))
        major = IRP_MJ_INTERNAL_DEVICE_CONTROL if internal else IRP_MJ_DEVICE_CONTROL
        try:
            return self.request(major, parameters=parameters, system_buffer=held["system_buffer"],
                                user_buffer=user_out if method in (METHOD_BUFFERED, METHOD_NEITHER) else 0,
                                mdl=held["mdl"], flags=flags, finish=finish)
        except BaseException:
            if not k.halted:
                release()
            raise

    def _driver_name(self) -> str:
        """The image name of the driver whose device this handle opened ("" if unknown)."""
        k = self.kernel
        wdm = k.wdm_drivers.get(k._get64(self.device + L.DEVICE_OBJECT.DriverObject))
        loaded = getattr(wdm, "loaded", None)
        return loaded.name if loaded is not None else (wdm.name + ".sys" if wdm else "")

    def _system_buffer(self, length: int) -> int:
        k = self.kernel
        va = k._io_allocate(PoolType.NonPagedPool, length, L.TAG_SYSTEM_BUFFER, on_behalf=False)
        if not va:
            raise NtStatusError(NtStatus.STATUS_INSUFFICIENT_RESOURCES, "no pool for a system buffer")
        return va

    def _locked_mdl(self, va: int, length: int, operation: int) -> int:
        k = self.kernel
        mdl = k.pool.allocate_generic(PoolType.NonPagedPool, L.MDL.SIZE + 8 * _span_pages(va, length),
                                      L.TAG_MDL, site=0)
        if not mdl:
            raise NtStatusError(NtStatus.STATUS_INSUFFICIENT_RESOURCES, "no pool for an MDL")
        k._mm_initialize_mdl(mdl, va, length, L.MDL.SIZE + 8 * _span_pages(va, length))
        k.MmProbeAndLockPages(mdl, UserMode, operation)
        return mdl

    def _release_buffers(self, held: dict, *user_buffers: int) -> None:
        """What the I/O manager frees when a request ends: its system buffer, its MDL (pages
        unlocked first) and the caller's user-mode buffers; each once."""
        k = self.kernel
        if held["system_buffer"]:
            k.pool.free(held["system_buffer"], L.TAG_SYSTEM_BUFFER)
            held["system_buffer"] = 0
        if held["mdl"]:
            self._release_mdl(held["mdl"])
            held["mdl"] = 0
        for va in user_buffers:
            if va and va in k.user_space.buffers:
                k.user_space.free(va)

    def _release_mdl(self, mdl: int) -> None:
        k = self.kernel
        if k._get16(mdl + L.MDL.MdlFlags) & L.MDL_PAGES_LOCKED:
            k.MmUnlockPages(mdl)
        k.IoFreeMdl(mdl)

    def _transfer(self, major: int, data: bytes | None, length: int) -> IoResult:
        k = self.kernel
        self._check_open()
        user = k.user_space.allocate(length) if length else 0
        if data:
            k.write(user, data)
        device_flags = k._get32(self.device + L.DEVICE_OBJECT.Flags)
        held = {"system_buffer": 0, "mdl": 0}
        flags = L.IRP_READ_OPERATION if major == IRP_MJ_READ else L.IRP_WRITE_OPERATION

        def release() -> None:
            self._release_buffers(held, user)

        def finish(result: IoResult) -> None:
            if major == IRP_MJ_READ:
                count = min(result.information, length)
                if held["system_buffer"] and count and result.status < 0xC0000000:
                    k.write(user, k.read(held["system_buffer"], count))
                result.output = k.read(user, count) if count else b""
            release()

        try:
            if length and device_flags & L.DO_BUFFERED_IO:
                held["system_buffer"] = self._system_buffer(length)
                if data:
                    k.write(held["system_buffer"], data)
                flags |= L.IRP_BUFFERED_IO | L.IRP_DEALLOCATE_BUFFER | \
                    (L.IRP_INPUT_OPERATION if major == IRP_MJ_READ else 0)
            elif length and device_flags & L.DO_DIRECT_IO:
                held["mdl"] = self._locked_mdl(user, length,
                                               IoWriteAccess if major == IRP_MJ_READ else IoReadAccess)
            parameters = length.to_bytes(8, "little") + bytes(8) + bytes(8)
            return self.request(major, parameters=parameters, system_buffer=held["system_buffer"],
                                user_buffer=user, mdl=held["mdl"], flags=flags, finish=finish)
        except BaseException:
            if not k.halted:
                release()
            raise

    def read(self, length: int) -> IoResult:
        """IRP_MJ_READ of ``length`` bytes; ``output`` is what the driver returned."""
        return self._transfer(IRP_MJ_READ, None, length)

    def write(self, data: bytes) -> IoResult:
        """IRP_MJ_WRITE of ``data``."""
        return self._transfer(IRP_MJ_WRITE, bytes(data), len(data))

    def _check_open(self) -> None:
        if self.closed or not self.opened:
            raise ValueError(f"{self.name} is not open")

    def close(self) -> tuple[IoResult, IoResult | None]:
        """IRP_MJ_CLEANUP (the handle closes), then IRP_MJ_CLOSE when the file object's last
        reference goes: (cleanup result, close result)."""
        self._check_open()
        self.cleanup_result = self.request(IRP_MJ_CLEANUP)
        self.closed = True
        self.kernel._ob_dereference(self.file_object)
        return self.cleanup_result, self.close_result

    def _send_close(self) -> None:
        self.close_result = self.request(IRP_MJ_CLOSE)
        self.opened = False

    def file_closed_without_irps(self) -> None:
        self.opened = False
        self.closed = True
        self.kernel._ob_dereference(self.file_object)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.opened and not self.closed and not self.kernel.halted:
            self.close()


