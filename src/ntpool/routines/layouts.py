"""Windows 7 x64 layouts of the structures drivers share with the I/O, object, security and
configuration managers: one place for every offset, so that the routines, the native bridge,
dumps and the debugger agree with each other and with Windows.

Offsets are those of Windows 7 SP1 x64 (ntoskrnl's public symbols, as printed by ``dt`` and
collected by Vergilius; ReactOS's and the WDK's headers for the documented parts). Only the
fields ntpool reads or writes are named; the sizes are Windows' own, so a structure a driver
embeds or indexes (``MajorFunction[]``, stack locations after an IRP, the extension after a
device object) lands where Windows puts it.
"""

from ..tags import from_display


class UNICODE_STRING:
    Length = 0x00  # USHORT, bytes, no terminator
    MaximumLength = 0x02  # USHORT
    Buffer = 0x08  # PWSTR
    SIZE = 0x10


ANSI_STRING = UNICODE_STRING  # the same shape with a PCHAR Buffer


class LIST_ENTRY:
    Flink = 0x00
    Blink = 0x08
    SIZE = 0x10


class DISPATCHER_HEADER:
    Type = 0x00  # UCHAR: EventNotificationObject 0, EventSynchronizationObject 1
    Size = 0x02  # UCHAR, in ULONGs
    SignalState = 0x04  # LONG
    WaitListHead = 0x08  # LIST_ENTRY
    SIZE = 0x18


KEVENT_SIZE = DISPATCHER_HEADER.SIZE
KMUTANT_SIZE = 0x38
KSEMAPHORE_SIZE = 0x20


class FAST_MUTEX:
    Count = 0x00  # LONG: 1 free, 0 owned
    Owner = 0x08  # PKTHREAD
    Contention = 0x10  # ULONG
    Event = 0x18  # KEVENT
    OldIrql = 0x30  # ULONG
    SIZE = 0x38


class ERESOURCE:
    SystemResourcesList = 0x00  # LIST_ENTRY
    OwnerTable = 0x10
    ActiveCount = 0x18  # SHORT
    Flag = 0x1A  # USHORT
    SharedWaiters = 0x20
    ExclusiveWaiters = 0x28
    OwnerEntry = 0x30  # OWNER_ENTRY: OwnerThread, TableSize/OwnerCount
    ActiveEntries = 0x40  # ULONG
    ContentionCount = 0x44
    NumberOfSharedWaiters = 0x48
    NumberOfExclusiveWaiters = 0x4C
    SIZE = 0x68


# --- the object manager ------------------------------------------------------------------

class OBJECT_HEADER:
    """Precedes every object's body; optional headers (name, creator, ...) precede it."""
    PointerCount = 0x00  # LONG_PTR
    HandleCount = 0x08
    Lock = 0x10
    TypeIndex = 0x18  # UCHAR: index into ObTypeIndexTable
    TraceFlags = 0x19
    InfoMask = 0x1A  # which optional headers precede this one
    Flags = 0x1B
    ObjectCreateInfo = 0x20
    SecurityDescriptor = 0x28  # EX_FAST_REF: low 4 bits are a reference count
    Body = 0x30
    SIZE = 0x30


class OBJECT_HEADER_NAME_INFO:
    Directory = 0x00
    Name = 0x08  # UNICODE_STRING
    ReferenceCount = 0x18
    SIZE = 0x20


OB_INFO_MASK_NAME = 0x02
OB_FLAG_PERMANENT = 0x10
OB_FLAG_KERNEL_OBJECT = 0x02

# ObTypeIndexTable indices of Windows 7 SP1 x64 (``!object \ObjectTypes``).
OB_TYPE_INDEX = {"Process": 7, "Thread": 8, "SymbolicLink": 4, "Event": 12, "Device": 25, "Driver": 26, "File": 28,
                 "Key": 35}

# Pool tags of the objects (the object type's Key) and of what the kernel allocates beside
# them, as pooltag.txt lists them. Values are ULONGs whose bytes show as the name.
TAG_DEVICE = from_display("Devi")  # Device objects
TAG_DRIVER = from_display("Driv")  # Driver objects
TAG_FILE = from_display("File")  # File objects
TAG_SYMBOLIC_LINK = from_display("Symb")  # Symbolic link objects (and their target)
TAG_KEY = from_display("Key ")  # Key objects (one per open registry handle)
TAG_OBJECT_NAME = from_display("ObNm")  # object names
TAG_IRP = from_display("Irp ")  # Io, IRP packets
TAG_MDL = from_display("Mdl ")  # Io, Mdls
TAG_IO_NAME = from_display("IoNm")  # Io parsing names (the driver's service key name)
TAG_STRING = from_display("Strg")  # Dynamic Translated strings (Rtl*String allocations)
TAG_SECURITY_DESCRIPTOR = from_display("SeSd")  # Security Descriptor
TAG_CAPTURED_SD = from_display("SeSc")  # Captured Security Descriptor
TAG_SYSTEM_BUFFER = from_display("Io  ")  # general IO allocations (buffered I/O's SystemBuffer)
TAG_REGISTRY_VALUE = from_display("CMDa")  # value data
TAG_CONTIGUOUS = from_display("MmCm")  # Calls made to MmAllocateContiguousMemory
TAG_ERROR_LOG = from_display("IoEr")  # Io error log packets
TAG_KEY_CONTROL_BLOCK = from_display("CMkb")  # registry key control blocks


# --- the I/O manager -----------------------------------------------------------------------

IO_TYPE_DEVICE = 3
IO_TYPE_DRIVER = 4
IO_TYPE_FILE = 5
IO_TYPE_IRP = 6
IO_TYPE_ERROR_LOG = 11
IO_TYPE_DEVICE_OBJECT_EXTENSION = 13

IRP_MJ_MAXIMUM_FUNCTION = 0x1B


class DRIVER_OBJECT:
    Type = 0x00  # CSHORT IO_TYPE_DRIVER
    Size = 0x02
    DeviceObject = 0x08  # first of its devices
    Flags = 0x10
    DriverStart = 0x18
    DriverSize = 0x20
    DriverSection = 0x28  # its KLDR_DATA_TABLE_ENTRY
    DriverExtension = 0x30
    DriverName = 0x38  # UNICODE_STRING "\Driver\name"
    HardwareDatabase = 0x48  # PUNICODE_STRING
    FastIoDispatch = 0x50
    DriverInit = 0x58
    DriverStartIo = 0x60
    DriverUnload = 0x68
    MajorFunction = 0x70  # PDRIVER_DISPATCH[IRP_MJ_MAXIMUM_FUNCTION + 1]
    SIZE = 0x150


class DRIVER_EXTENSION:
    DriverObject = 0x00
    AddDevice = 0x08
    Count = 0x10
    ServiceKeyName = 0x18  # UNICODE_STRING
    ClientDriverExtension = 0x28
    FsFilterCallbacks = 0x30
    SIZE = 0x38


class DEVICE_OBJECT:
    Type = 0x00  # CSHORT IO_TYPE_DEVICE
    Size = 0x02  # USHORT: sizeof(DEVICE_OBJECT) + extension size
    ReferenceCount = 0x04
    DriverObject = 0x08
    NextDevice = 0x10
    AttachedDevice = 0x18
    CurrentIrp = 0x20
    Timer = 0x28
    Flags = 0x30
    Characteristics = 0x34
    Vpb = 0x38
    DeviceExtension = 0x40
    DeviceType = 0x48
    StackSize = 0x4C  # CCHAR
    Queue = 0x50
    AlignmentRequirement = 0x98
    DeviceQueue = 0xA0
    Dpc = 0xC8
    ActiveThreadCount = 0x108
    SecurityDescriptor = 0x110
    DeviceLock = 0x118  # KEVENT
    SectorSize = 0x130
    Spare1 = 0x132
    DeviceObjectExtension = 0x138
    Reserved = 0x140
    SIZE = 0x150


class DEVOBJ_EXTENSION:
    Type = 0x00  # CSHORT IO_TYPE_DEVICE_OBJECT_EXTENSION
    Size = 0x02
    DeviceObject = 0x08
    PowerFlags = 0x10
    Dope = 0x18
    ExtensionFlags = 0x20
    DeviceNode = 0x28
    AttachedTo = 0x30
    SIZE = 0x70


# DEVICE_OBJECT.Flags
DO_VERIFY_VOLUME = 0x02
DO_BUFFERED_IO = 0x04
DO_EXCLUSIVE = 0x08
DO_DIRECT_IO = 0x10
DO_MAP_IO_BUFFER = 0x20
DO_DEVICE_HAS_NAME = 0x40
DO_DEVICE_INITIALIZING = 0x80
# DEVICE_OBJECT.Characteristics
FILE_DEVICE_SECURE_OPEN = 0x100


class IRP:
    Type = 0x00  # CSHORT IO_TYPE_IRP
    Size = 0x02  # USHORT: IoSizeOfIrp(StackSize)
    MdlAddress = 0x08
    Flags = 0x10
    AssociatedIrp = 0x18  # SystemBuffer
    ThreadListEntry = 0x20
    IoStatus = 0x30  # IO_STATUS_BLOCK
    IoStatus_Status = 0x30  # NTSTATUS (the union's pointer half is 8 bytes)
    IoStatus_Information = 0x38  # ULONG_PTR
    RequestorMode = 0x40  # KPROCESSOR_MODE: 0 KernelMode, 1 UserMode
    PendingReturned = 0x41
    StackCount = 0x42  # CHAR
    CurrentLocation = 0x43  # CHAR
    Cancel = 0x44
    CancelIrql = 0x45
    ApcEnvironment = 0x46
    AllocationFlags = 0x47
    UserIosb = 0x48
    UserEvent = 0x50
    Overlay = 0x58
    CancelRoutine = 0x68
    UserBuffer = 0x70
    DriverContext = 0x78  # Tail.Overlay.DriverContext[4]
    Thread = 0x98
    AuxiliaryBuffer = 0xA0
    ListEntry = 0xA8
    CurrentStackLocation = 0xB8  # Tail.Overlay.CurrentStackLocation
    OriginalFileObject = 0xC0
    SIZE = 0xD0  # the stack locations follow


class IO_STACK_LOCATION:
    MajorFunction = 0x00
    MinorFunction = 0x01
    Flags = 0x02
    Control = 0x03
    Parameters = 0x08
    # Parameters.DeviceIoControl (every ULONG is pointer-aligned on x64)
    OutputBufferLength = 0x08
    InputBufferLength = 0x10
    IoControlCode = 0x18
    Type3InputBuffer = 0x20
    # Parameters.Read / Parameters.Write
    Length = 0x08
    Key = 0x10
    ByteOffset = 0x18
    # Parameters.Create
    SecurityContext = 0x08
    Options = 0x10
    FileAttributes = 0x18
    ShareAccess = 0x1A
    EaLength = 0x20
    DeviceObject = 0x28
    FileObject = 0x30
    CompletionRoutine = 0x38
    Context = 0x40
    SIZE = 0x48


def io_size_of_irp(stack_size: int) -> int:
    """IoSizeOfIrp: the IRP and its stack locations."""
    return IRP.SIZE + stack_size * IO_STACK_LOCATION.SIZE


# IRP.Flags
IRP_NOCACHE = 0x01
IRP_PAGING_IO = 0x02
IRP_SYNCHRONOUS_API = 0x04
IRP_ASSOCIATED_IRP = 0x08
IRP_BUFFERED_IO = 0x10
IRP_DEALLOCATE_BUFFER = 0x20
IRP_INPUT_OPERATION = 0x40
IRP_CREATE_OPERATION = 0x80
IRP_READ_OPERATION = 0x100
IRP_WRITE_OPERATION = 0x200
IRP_CLOSE_OPERATION = 0x400
IRP_DEFER_IO_COMPLETION = 0x800
# IRP.AllocationFlags
IRP_QUOTA_CHARGED = 0x01
IRP_ALLOCATED_MUST_SUCCEED = 0x02
IRP_ALLOCATED_FIXED_SIZE = 0x04
IRP_LOOKASIDE_ALLOCATION = 0x08
# IO_STACK_LOCATION.Control
SL_PENDING_RETURNED = 0x01
SL_INVOKE_ON_CANCEL = 0x20
SL_INVOKE_ON_SUCCESS = 0x40
SL_INVOKE_ON_ERROR = 0x80


class FILE_OBJECT:
    Type = 0x00  # CSHORT IO_TYPE_FILE
    Size = 0x02
    DeviceObject = 0x08
    Vpb = 0x10
    FsContext = 0x18
    FsContext2 = 0x20
    SectionObjectPointer = 0x28
    PrivateCacheMap = 0x30
    FinalStatus = 0x38
    RelatedFileObject = 0x40
    LockOperation = 0x48
    DeletePending = 0x49
    ReadAccess = 0x4A
    WriteAccess = 0x4B
    DeleteAccess = 0x4C
    SharedRead = 0x4D
    SharedWrite = 0x4E
    SharedDelete = 0x4F
    Flags = 0x50
    FileName = 0x58  # UNICODE_STRING
    CurrentByteOffset = 0x68
    Waiters = 0x70
    Busy = 0x74
    LastLock = 0x78
    Lock = 0x80  # KEVENT
    Event = 0x98  # KEVENT
    CompletionContext = 0xB0
    IrpListLock = 0xB8
    IrpList = 0xC0
    FileObjectExtension = 0xD0
    SIZE = 0xD8


class MDL:
    Next = 0x00
    Size = 0x08  # CSHORT: the MDL and its PFN array
    MdlFlags = 0x0A
    Process = 0x10
    MappedSystemVa = 0x18
    StartVa = 0x20  # page-aligned
    ByteCount = 0x28
    ByteOffset = 0x2C
    SIZE = 0x30  # PFN_NUMBERs follow


# An error log entry: the I/O manager's header, then the driver's IO_ERROR_LOG_PACKET.
class ERROR_LOG_ENTRY:
    Type = 0x00  # CSHORT IO_TYPE_ERROR_LOG
    Size = 0x02  # USHORT: the header and the packet
    ListEntry = 0x08
    DeviceObject = 0x18
    DriverObject = 0x20
    TimeStamp = 0x28
    SIZE = 0x30


class IO_ERROR_LOG_PACKET:
    MajorFunctionCode = 0x00
    RetryCount = 0x01
    DumpDataSize = 0x02
    NumberOfStrings = 0x04
    StringOffset = 0x06
    EventCategory = 0x08
    ErrorCode = 0x0C
    UniqueErrorValue = 0x10
    FinalStatus = 0x14
    SequenceNumber = 0x18
    IoControlCode = 0x1C
    DeviceOffset = 0x20
    DumpData = 0x28
    SIZE = 0x30  # sizeof: DumpData[1] and the padding after it


MDL_MAPPED_TO_SYSTEM_VA = 0x0001
MDL_PAGES_LOCKED = 0x0002
MDL_SOURCE_IS_NONPAGED_POOL = 0x0004
MDL_ALLOCATED_FIXED_SIZE = 0x0008
MDL_PARTIAL = 0x0010
MDL_PARTIAL_HAS_BEEN_MAPPED = 0x0020
MDL_IO_PAGE_READ = 0x0040
MDL_WRITE_OPERATION = 0x0080
MDL_IO_SPACE = 0x0800
MDL_MAPPING_FLAGS = MDL_MAPPED_TO_SYSTEM_VA | MDL_SOURCE_IS_NONPAGED_POOL


# --- security ----------------------------------------------------------------------------

SECURITY_DESCRIPTOR_REVISION = 1
SE_OWNER_DEFAULTED = 0x0001
SE_GROUP_DEFAULTED = 0x0002
SE_DACL_PRESENT = 0x0004
SE_DACL_DEFAULTED = 0x0008
SE_SACL_PRESENT = 0x0010
SE_SACL_DEFAULTED = 0x0020
SE_DACL_PROTECTED = 0x1000
SE_SELF_RELATIVE = 0x8000


class SECURITY_DESCRIPTOR:
    """The absolute form: pointers; SECURITY_DESCRIPTOR_RELATIVE has ULONG offsets at
    Owner 0x04, Group 0x08, Sacl 0x0C, Dacl 0x10 and is 0x14 bytes."""
    Revision = 0x00
    Sbz1 = 0x01
    Control = 0x02  # USHORT
    Owner = 0x08
    Group = 0x10
    Sacl = 0x18
    Dacl = 0x20
    SIZE = 0x28
    RELATIVE_SIZE = 0x14
    RELATIVE_OWNER = 0x04
    RELATIVE_GROUP = 0x08
    RELATIVE_SACL = 0x0C
    RELATIVE_DACL = 0x10


class ACL:
    AclRevision = 0x00
    Sbz1 = 0x01
    AclSize = 0x02  # USHORT
    AceCount = 0x04
    Sbz2 = 0x06
    SIZE = 0x08


ACL_REVISION = 2
ACL_REVISION_DS = 4
ACCESS_ALLOWED_ACE_TYPE = 0
ACE_HEADER_SIZE = 4  # AceType, AceFlags, AceSize; then Mask (4), then the SID


class SE_EXPORTS:
    """SeExports: LUIDs of the privileges (23 x 8 bytes), then PSIDs, Windows 7's order."""
    PRIVILEGES = 23
    SIDS = ("SeNullSid", "SeWorldSid", "SeLocalSid", "SeCreatorOwnerSid", "SeCreatorGroupSid",
            "SeNtAuthoritySid", "SeDialupSid", "SeNetworkSid", "SeBatchSid", "SeInteractiveSid",
            "SeLocalSystemSid", "SeAliasAdminsSid", "SeAliasUsersSid", "SeAliasGuestsSid",
            "SeAliasPowerUsersSid", "SeAliasAccountOpsSid", "SeAliasSystemOpsSid",
            "SeAliasPrintOpsSid", "SeAliasBackupOpsSid", "SeAuthenticatedUsersSid",
            "SeRestrictedSid", "SeAnonymousLogonSid")
    FIRST_SID = 0xB8  # 23 privilege LUIDs
    SIZE = FIRST_SID + 8 * 40  # the tail (more privileges and SIDs) is left zero


# --- the configuration manager -------------------------------------------------------------

class OBJECT_ATTRIBUTES:
    Length = 0x00  # ULONG 0x30
    RootDirectory = 0x08
    ObjectName = 0x10  # PUNICODE_STRING
    Attributes = 0x18
    SecurityDescriptor = 0x20
    SecurityQualityOfService = 0x28
    SIZE = 0x30


OBJ_CASE_INSENSITIVE = 0x40
OBJ_KERNEL_HANDLE = 0x200

REG_NONE = 0
REG_SZ = 1
REG_EXPAND_SZ = 2
REG_BINARY = 3
REG_DWORD = 4
REG_MULTI_SZ = 7
REG_QWORD = 11
REG_OPTION_VOLATILE = 1
REG_CREATED_NEW_KEY = 1
REG_OPENED_EXISTING_KEY = 2

# KEY_VALUE_INFORMATION_CLASS
KeyValueBasicInformation = 0
KeyValueFullInformation = 1
KeyValuePartialInformation = 2
