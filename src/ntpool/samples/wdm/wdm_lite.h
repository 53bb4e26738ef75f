/* wdm_lite.h: the I/O manager's slice of the WDK's wdm.h that the WDM sample drivers use
 * (devices, IRPs, stack locations, MDLs, events, timers), on top of ntddk_lite.h.
 *
 * Layouts are Windows 7 x64's (ntpool/routines/layouts.py holds the same offsets); the
 * inline routines are wdm.h's (IoGetCurrentIrpStackLocation, IoSkipCurrentIrpStackLocation,
 * IoCopyCurrentIrpStackLocationToNext, IoSetCompletionRoutine, IoMarkIrpPending,
 * MmGetSystemAddressForMdlSafe, ...), so a driver written against the real WDK builds and
 * runs the same way. */
#ifndef WDM_LITE_H
#define WDM_LITE_H
#include "ntddk_lite.h"

typedef short CSHORT;
typedef char CCHAR;
typedef ULONG ACCESS_MASK, DEVICE_TYPE;
typedef PVOID HANDLE, *PHANDLE;
typedef LONG KPRIORITY;
typedef CCHAR KPROCESSOR_MODE;
typedef union _LARGE_INTEGER { struct { ULONG LowPart; LONG HighPart; }; LONGLONG QuadPart; }
    LARGE_INTEGER, *PLARGE_INTEGER;

#define STATUS_PENDING ((NTSTATUS)0x00000103L)
#define STATUS_TIMEOUT ((NTSTATUS)0x00000102L)
#define STATUS_INVALID_PARAMETER ((NTSTATUS)0xC000000DL)
#define STATUS_INVALID_DEVICE_REQUEST ((NTSTATUS)0xC0000010L)
#define STATUS_MORE_PROCESSING_REQUIRED ((NTSTATUS)0xC0000016L)
#define STATUS_BUFFER_TOO_SMALL ((NTSTATUS)0xC0000023L)
#define STATUS_NOT_SUPPORTED ((NTSTATUS)0xC00000BBL)
#define STATUS_CANCELLED ((NTSTATUS)0xC0000120L)
#define STATUS_DEVICE_BUSY ((NTSTATUS)0x80000011L)

#define KernelMode 0
#define UserMode 1
#define IO_NO_INCREMENT 0
#define FILE_DEVICE_UNKNOWN 0x22
#define FILE_DEVICE_SECURE_OPEN 0x100
#define FILE_ANY_ACCESS 0
#define METHOD_BUFFERED 0
#define METHOD_IN_DIRECT 1
#define METHOD_OUT_DIRECT 2
#define METHOD_NEITHER 3
#define CTL_CODE(DeviceType, Function, Method, Access) \
    (((DeviceType) << 16) | ((Access) << 14) | ((Function) << 2) | (Method))
#define DO_BUFFERED_IO 0x04
#define DO_DIRECT_IO 0x10
#define DO_DEVICE_INITIALIZING 0x80
#define IRP_MJ_CREATE 0x00
#define IRP_MJ_CLOSE 0x02
#define IRP_MJ_READ 0x03
#define IRP_MJ_WRITE 0x04
#define IRP_MJ_DEVICE_CONTROL 0x0e
#define IRP_MJ_CLEANUP 0x12
#define IRP_MJ_MAXIMUM_FUNCTION 0x1b
#define SL_PENDING_RETURNED 0x01
#define SL_INVOKE_ON_CANCEL 0x20
#define SL_INVOKE_ON_SUCCESS 0x40
#define SL_INVOKE_ON_ERROR 0x80
#define MDL_MAPPED_TO_SYSTEM_VA 0x0001
#define MDL_SOURCE_IS_NONPAGED_POOL 0x0004
#define NormalPagePriority 16
#define MmCached 1
#define ARGUMENT_PRESENT(p) ((p) != NULL)

typedef enum _LOCK_OPERATION { IoReadAccess, IoWriteAccess, IoModifyAccess } LOCK_OPERATION;
typedef enum _EVENT_TYPE { NotificationEvent, SynchronizationEvent } EVENT_TYPE;
typedef enum _KWAIT_REASON { Executive = 0 } KWAIT_REASON;

typedef struct _DISPATCHER_HEADER {
    UCHAR Type, Abandoned, Size, DpcActive;
    LONG SignalState;
    LIST_ENTRY WaitListHead;
} DISPATCHER_HEADER;
typedef struct _KEVENT { DISPATCHER_HEADER Header; } KEVENT, *PKEVENT, *PRKEVENT;

typedef struct _IO_STATUS_BLOCK {
    union { NTSTATUS Status; PVOID Pointer; };
    ULONG_PTR Information;
} IO_STATUS_BLOCK, *PIO_STATUS_BLOCK;

typedef struct _MDL {  /* 0x30 bytes, the PFN array follows */
    struct _MDL *Next;
    CSHORT Size, MdlFlags;
    PVOID Process, MappedSystemVa, StartVa;
    ULONG ByteCount, ByteOffset;
} MDL, *PMDL;

typedef struct _DEVICE_OBJECT *PDEVICE_OBJECT;
typedef struct _IRP *PIRP;
typedef struct _FILE_OBJECT *PFILE_OBJECT;
typedef NTSTATUS (NTAPI *PDRIVER_DISPATCH)(PDEVICE_OBJECT DeviceObject, PIRP Irp);
typedef NTSTATUS (NTAPI *PIO_COMPLETION_ROUTINE)(PDEVICE_OBJECT DeviceObject, PIRP Irp, PVOID Context);

typedef struct __attribute__((aligned(16))) _DEVICE_OBJECT {  /* Windows 7 x64: 0x150 bytes */
    CSHORT Type;
    USHORT Size;
    LONG ReferenceCount;
    PDRIVER_OBJECT DriverObject;
    PDEVICE_OBJECT NextDevice, AttachedDevice;
    PIRP CurrentIrp;
    PVOID Timer;
    ULONG Flags, Characteristics;
    PVOID Vpb, DeviceExtension;
    DEVICE_TYPE DeviceType;
    CCHAR StackSize;
    ULONGLONG Queue[9];  /* WAIT_CONTEXT_BLOCK */
    ULONG AlignmentRequirement;
    ULONGLONG DeviceQueue[5];  /* KDEVICE_QUEUE */
    ULONGLONG Dpc[8];  /* KDPC */
    ULONG ActiveThreadCount;
    PVOID SecurityDescriptor;
    KEVENT DeviceLock;
    USHORT SectorSize, Spare1;
    PVOID DeviceObjectExtension, Reserved;
} DEVICE_OBJECT;

typedef struct _IO_STACK_LOCATION {  /* 0x48 bytes */
    UCHAR MajorFunction, MinorFunction, Flags, Control;
    union {
        struct { ULONG Length; ULONG POINTER_ALIGNMENT_1; ULONG Key; ULONG POINTER_ALIGNMENT_2;
                 LARGE_INTEGER ByteOffset; } Read, Write;
        struct { ULONG OutputBufferLength; ULONG Pad1; ULONG InputBufferLength; ULONG Pad2;
                 ULONG IoControlCode; ULONG Pad3; PVOID Type3InputBuffer; } DeviceIoControl;
        struct { PVOID Argument1, Argument2, Argument3, Argument4; } Others;
    } Parameters;
    PDEVICE_OBJECT DeviceObject;
    PFILE_OBJECT FileObject;
    PIO_COMPLETION_ROUTINE CompletionRoutine;
    PVOID Context;
} IO_STACK_LOCATION, *PIO_STACK_LOCATION;

typedef struct _IRP {  /* Windows 7 x64: 0xD0 bytes, the stack locations follow */
    CSHORT Type;
    USHORT Size;
    PMDL MdlAddress;
    ULONG Flags;
    union { struct _IRP *MasterIrp; LONG IrpCount; PVOID SystemBuffer; } AssociatedIrp;
    LIST_ENTRY ThreadListEntry;
    IO_STATUS_BLOCK IoStatus;
    KPROCESSOR_MODE RequestorMode;
    BOOLEAN PendingReturned;
    CHAR StackCount, CurrentLocation;
    BOOLEAN Cancel;
    KIRQL CancelIrql;
    CCHAR ApcEnvironment;
    UCHAR AllocationFlags;
    PIO_STATUS_BLOCK UserIosb;
    PKEVENT UserEvent;
    UCHAR Overlay[0x10];
    PVOID CancelRoutine;
    PVOID UserBuffer;
    union {
        struct {
            PVOID DriverContext[4];
            PVOID Thread;
            PCHAR AuxiliaryBuffer;
            LIST_ENTRY ListEntry;
            PIO_STACK_LOCATION CurrentStackLocation;
            PFILE_OBJECT OriginalFileObject;
        } Overlay;
        UCHAR Apc[0x58];  /* KAPC */
    } Tail;
} IRP;

typedef struct _KDPC *PKDPC;
typedef VOID (NTAPI *PKDEFERRED_ROUTINE)(PKDPC Dpc, PVOID DeferredContext, PVOID SystemArgument1,
                                         PVOID SystemArgument2);
typedef struct _KDPC {  /* 0x40 bytes */
    UCHAR Type, Importance;
    USHORT Number;
    LIST_ENTRY DpcListEntry;
    PKDEFERRED_ROUTINE DeferredRoutine;
    PVOID DeferredContext, SystemArgument1, SystemArgument2, DpcData;
} KDPC;
typedef struct _KTIMER {  /* 0x40 bytes */
    DISPATCHER_HEADER Header;
    ULONGLONG DueTime;
    LIST_ENTRY TimerListEntry;
    PKDPC Dpc;
    ULONG Processor, Period;
} KTIMER, *PKTIMER;

#define WDM_LITE_OFFSET(type, field, offset) \
    _Static_assert(__builtin_offsetof(type, field) == (offset), #type "." #field)
WDM_LITE_OFFSET(DEVICE_OBJECT, Flags, 0x30);
WDM_LITE_OFFSET(DEVICE_OBJECT, DeviceExtension, 0x40);
WDM_LITE_OFFSET(DEVICE_OBJECT, StackSize, 0x4c);
WDM_LITE_OFFSET(DEVICE_OBJECT, AlignmentRequirement, 0x98);
WDM_LITE_OFFSET(DEVICE_OBJECT, SecurityDescriptor, 0x110);
WDM_LITE_OFFSET(DEVICE_OBJECT, DeviceObjectExtension, 0x138);
_Static_assert(sizeof(DEVICE_OBJECT) == 0x150, "DEVICE_OBJECT");
WDM_LITE_OFFSET(IRP, IoStatus, 0x30);
WDM_LITE_OFFSET(IRP, UserBuffer, 0x70);
WDM_LITE_OFFSET(IRP, Tail.Overlay.CurrentStackLocation, 0xb8);
_Static_assert(sizeof(IRP) == 0xd0, "IRP");
WDM_LITE_OFFSET(IO_STACK_LOCATION, Parameters.DeviceIoControl.Type3InputBuffer, 0x20);
WDM_LITE_OFFSET(IO_STACK_LOCATION, CompletionRoutine, 0x38);
_Static_assert(sizeof(IO_STACK_LOCATION) == 0x48, "IO_STACK_LOCATION");
_Static_assert(sizeof(MDL) == 0x30, "MDL");
_Static_assert(sizeof(KDPC) == 0x40 && sizeof(KTIMER) == 0x40, "KDPC, KTIMER");

/* --- imports from ntoskrnl.exe --- */
NTSYSAPI VOID NTAPI RtlInitUnicodeString(PUNICODE_STRING DestinationString, PCWSTR SourceString);
NTSYSAPI NTSTATUS NTAPI IoCreateDevice(PDRIVER_OBJECT DriverObject, ULONG DeviceExtensionSize,
        PUNICODE_STRING DeviceName, DEVICE_TYPE DeviceType, ULONG DeviceCharacteristics,
        BOOLEAN Exclusive, PDEVICE_OBJECT *DeviceObject);
NTSYSAPI VOID NTAPI IoDeleteDevice(PDEVICE_OBJECT DeviceObject);
NTSYSAPI NTSTATUS NTAPI IoCreateSymbolicLink(PUNICODE_STRING SymbolicLinkName, PUNICODE_STRING DeviceName);
NTSYSAPI NTSTATUS NTAPI IoDeleteSymbolicLink(PUNICODE_STRING SymbolicLinkName);
NTSYSAPI NTSTATUS __fastcall IofCallDriver(PDEVICE_OBJECT DeviceObject, PIRP Irp);
NTSYSAPI VOID __fastcall IofCompleteRequest(PIRP Irp, CCHAR PriorityBoost);
NTSYSAPI PIRP NTAPI IoAllocateIrp(CCHAR StackSize, BOOLEAN ChargeQuota);
NTSYSAPI VOID NTAPI IoFreeIrp(PIRP Irp);
NTSYSAPI PMDL NTAPI IoAllocateMdl(PVOID VirtualAddress, ULONG Length, BOOLEAN SecondaryBuffer,
                                  BOOLEAN ChargeQuota, PIRP Irp);
NTSYSAPI VOID NTAPI IoFreeMdl(PMDL Mdl);
NTSYSAPI VOID NTAPI MmBuildMdlForNonPagedPool(PMDL MemoryDescriptorList);
NTSYSAPI VOID NTAPI MmProbeAndLockPages(PMDL MemoryDescriptorList, KPROCESSOR_MODE AccessMode,
                                        LOCK_OPERATION Operation);
NTSYSAPI VOID NTAPI MmUnlockPages(PMDL MemoryDescriptorList);
NTSYSAPI PVOID NTAPI MmMapLockedPagesSpecifyCache(PMDL MemoryDescriptorList, KPROCESSOR_MODE AccessMode,
        int CacheType, PVOID RequestedAddress, ULONG BugCheckOnFailure, ULONG Priority);
NTSYSAPI NTSTATUS NTAPI IoGetDeviceObjectPointer(PUNICODE_STRING ObjectName, ACCESS_MASK DesiredAccess,
        PFILE_OBJECT *FileObject, PDEVICE_OBJECT *DeviceObject);
NTSYSAPI PDEVICE_OBJECT NTAPI IoAttachDeviceToDeviceStack(PDEVICE_OBJECT SourceDevice,
                                                          PDEVICE_OBJECT TargetDevice);
NTSYSAPI VOID NTAPI IoDetachDevice(PDEVICE_OBJECT TargetDevice);
NTSYSAPI VOID __fastcall ObfDereferenceObject(PVOID Object);
NTSYSAPI VOID NTAPI KeInitializeEvent(PRKEVENT Event, EVENT_TYPE Type, BOOLEAN State);
NTSYSAPI LONG NTAPI KeSetEvent(PRKEVENT Event, KPRIORITY Increment, BOOLEAN Wait);
NTSYSAPI LONG NTAPI KeResetEvent(PRKEVENT Event);
NTSYSAPI NTSTATUS NTAPI KeWaitForSingleObject(PVOID Object, KWAIT_REASON WaitReason,
        KPROCESSOR_MODE WaitMode, BOOLEAN Alertable, PLARGE_INTEGER Timeout);
NTSYSAPI VOID NTAPI KeInitializeDpc(PKDPC Dpc, PKDEFERRED_ROUTINE DeferredRoutine, PVOID DeferredContext);
NTSYSAPI VOID NTAPI KeInitializeTimer(PKTIMER Timer);
NTSYSAPI BOOLEAN NTAPI KeSetTimer(PKTIMER Timer, LARGE_INTEGER DueTime, PKDPC Dpc);
NTSYSAPI BOOLEAN NTAPI KeCancelTimer(PKTIMER Timer);
NTSYSAPI NTSTATUS NTAPI ObReferenceObjectByHandle(HANDLE Handle, ACCESS_MASK DesiredAccess,
        PVOID ObjectType, KPROCESSOR_MODE AccessMode, PVOID *Object, PVOID HandleInformation);
extern __declspec(dllimport) PVOID *ExEventObjectType;

/* --- deferred work, queued spin locks, semaphores, guarded mutexes (the "dpc" block) --- */
typedef struct _IO_WORKITEM *PIO_WORKITEM;
typedef VOID (NTAPI *PIO_WORKITEM_ROUTINE)(PDEVICE_OBJECT DeviceObject, PVOID Context);
typedef VOID (NTAPI *PIO_WORKITEM_ROUTINE_EX)(PVOID IoObject, PVOID Context, PIO_WORKITEM IoWorkItem);
typedef VOID (NTAPI *PWORKER_THREAD_ROUTINE)(PVOID Parameter);
typedef enum _WORK_QUEUE_TYPE { CriticalWorkQueue, DelayedWorkQueue, HyperCriticalWorkQueue } WORK_QUEUE_TYPE;
typedef struct _WORK_QUEUE_ITEM {  /* 0x20 bytes */
    LIST_ENTRY List;
    PWORKER_THREAD_ROUTINE WorkerRoutine;
    PVOID Parameter;
} WORK_QUEUE_ITEM, *PWORK_QUEUE_ITEM;
#define ExInitializeWorkItem(Item, Routine, Context) \
    ((Item)->WorkerRoutine = (Routine), (Item)->Parameter = (Context), (Item)->List.Flink = NULL)
typedef enum _KDPC_IMPORTANCE { LowImportance, MediumImportance, HighImportance,
                                MediumHighImportance } KDPC_IMPORTANCE;
typedef struct _KSPIN_LOCK_QUEUE {
    struct _KSPIN_LOCK_QUEUE *volatile Next;
    PKSPIN_LOCK volatile Lock;
} KSPIN_LOCK_QUEUE;
typedef struct _KLOCK_QUEUE_HANDLE {  /* 0x18 bytes */
    KSPIN_LOCK_QUEUE LockQueue;
    KIRQL OldIrql;
} KLOCK_QUEUE_HANDLE, *PKLOCK_QUEUE_HANDLE;
typedef struct _KSEMAPHORE { DISPATCHER_HEADER Header; LONG Limit; } KSEMAPHORE, *PKSEMAPHORE, *PRKSEMAPHORE;
typedef struct _KGUARDED_MUTEX {  /* Windows 7 x64: 0x38 bytes */
    LONG Count;
    PVOID Owner;
    ULONG Contention;
    DISPATCHER_HEADER Gate;
    short KernelApcDisable, SpecialApcDisable;
} KGUARDED_MUTEX, *PKGUARDED_MUTEX;
typedef enum _WAIT_TYPE { WaitAll, WaitAny } WAIT_TYPE;
_Static_assert(sizeof(WORK_QUEUE_ITEM) == 0x20 && sizeof(KLOCK_QUEUE_HANDLE) == 0x18, "WORK_QUEUE_ITEM");
_Static_assert(sizeof(KSEMAPHORE) == 0x20 && sizeof(KGUARDED_MUTEX) == 0x38, "KSEMAPHORE, KGUARDED_MUTEX");
NTSYSAPI BOOLEAN NTAPI KeInsertQueueDpc(PKDPC Dpc, PVOID SystemArgument1, PVOID SystemArgument2);
NTSYSAPI BOOLEAN NTAPI KeRemoveQueueDpc(PKDPC Dpc);
NTSYSAPI VOID NTAPI KeFlushQueuedDpcs(VOID);
NTSYSAPI VOID NTAPI KeSetTargetProcessorDpc(PKDPC Dpc, CCHAR Number);
NTSYSAPI VOID NTAPI KeSetImportanceDpc(PKDPC Dpc, KDPC_IMPORTANCE Importance);
NTSYSAPI PIO_WORKITEM NTAPI IoAllocateWorkItem(PDEVICE_OBJECT DeviceObject);
NTSYSAPI VOID NTAPI IoFreeWorkItem(PIO_WORKITEM IoWorkItem);
NTSYSAPI VOID NTAPI IoQueueWorkItem(PIO_WORKITEM IoWorkItem, PIO_WORKITEM_ROUTINE WorkerRoutine,
                                    WORK_QUEUE_TYPE QueueType, PVOID Context);
NTSYSAPI VOID NTAPI IoQueueWorkItemEx(PIO_WORKITEM IoWorkItem, PIO_WORKITEM_ROUTINE_EX WorkerRoutine,
                                      WORK_QUEUE_TYPE QueueType, PVOID Context);
NTSYSAPI ULONG NTAPI IoSizeofWorkItem(VOID);
NTSYSAPI VOID NTAPI IoInitializeWorkItem(PVOID IoObject, PIO_WORKITEM IoWorkItem);
NTSYSAPI VOID NTAPI IoUninitializeWorkItem(PIO_WORKITEM IoWorkItem);
NTSYSAPI VOID NTAPI ExQueueWorkItem(PWORK_QUEUE_ITEM WorkItem, WORK_QUEUE_TYPE QueueType);
NTSYSAPI VOID NTAPI KeAcquireInStackQueuedSpinLock(PKSPIN_LOCK SpinLock, PKLOCK_QUEUE_HANDLE LockHandle);
NTSYSAPI VOID NTAPI KeReleaseInStackQueuedSpinLock(PKLOCK_QUEUE_HANDLE LockHandle);
NTSYSAPI VOID NTAPI KeAcquireInStackQueuedSpinLockAtDpcLevel(PKSPIN_LOCK SpinLock,
                                                             PKLOCK_QUEUE_HANDLE LockHandle);
NTSYSAPI VOID NTAPI KeReleaseInStackQueuedSpinLockFromDpcLevel(PKLOCK_QUEUE_HANDLE LockHandle);
NTSYSAPI VOID NTAPI KeInitializeSemaphore(PRKSEMAPHORE Semaphore, LONG Count, LONG Limit);
NTSYSAPI LONG NTAPI KeReleaseSemaphore(PRKSEMAPHORE Semaphore, KPRIORITY Increment, LONG Adjustment,
                                       BOOLEAN Wait);
NTSYSAPI LONG NTAPI KeReadStateSemaphore(PRKSEMAPHORE Semaphore);
NTSYSAPI VOID NTAPI KeInitializeGuardedMutex(PKGUARDED_MUTEX Mutex);
NTSYSAPI VOID NTAPI KeAcquireGuardedMutex(PKGUARDED_MUTEX Mutex);
NTSYSAPI VOID NTAPI KeReleaseGuardedMutex(PKGUARDED_MUTEX Mutex);
NTSYSAPI BOOLEAN NTAPI KeTryToAcquireGuardedMutex(PKGUARDED_MUTEX Mutex);
NTSYSAPI PLIST_ENTRY NTAPI ExInterlockedInsertHeadList(PLIST_ENTRY ListHead, PLIST_ENTRY ListEntry,
                                                       PKSPIN_LOCK Lock);
NTSYSAPI PLIST_ENTRY NTAPI ExInterlockedInsertTailList(PLIST_ENTRY ListHead, PLIST_ENTRY ListEntry,
                                                       PKSPIN_LOCK Lock);
NTSYSAPI PLIST_ENTRY NTAPI ExInterlockedRemoveHeadList(PLIST_ENTRY ListHead, PKSPIN_LOCK Lock);
NTSYSAPI NTSTATUS NTAPI KeWaitForMultipleObjects(ULONG Count, PVOID Object[], WAIT_TYPE WaitType,
        KWAIT_REASON WaitReason, KPROCESSOR_MODE WaitMode, BOOLEAN Alertable, PLARGE_INTEGER Timeout,
        PVOID WaitBlockArray);
NTSYSAPI ULONGLONG NTAPI KeQueryInterruptTime(VOID);
__declspec(dllimport) VOID NTAPI KeStallExecutionProcessor(ULONG MicroSeconds);  /* HAL.dll */

/* --- the memory manager and error log entries (mm.c) --- */
typedef LARGE_INTEGER PHYSICAL_ADDRESS, *PPHYSICAL_ADDRESS;
typedef int MEMORY_CACHING_TYPE;  /* MmNonCached, MmCached (above), MmWriteCombined, ... */
typedef ULONG NODE_REQUIREMENT;
#define MmNonCached 0
#define MmWriteCombined 2
#define MM_DONT_ZERO_ALLOCATION 0x00000001
#define MM_ALLOCATE_FULLY_REQUIRED 0x00000004
#define MDL_PARTIAL 0x0010
typedef struct _IO_ERROR_LOG_PACKET {  /* x64: 0x30 bytes */
    UCHAR MajorFunctionCode, RetryCount;
    USHORT DumpDataSize, NumberOfStrings, StringOffset, EventCategory;
    NTSTATUS ErrorCode;
    ULONG UniqueErrorValue;
    NTSTATUS FinalStatus;
    ULONG SequenceNumber, IoControlCode;
    LARGE_INTEGER DeviceOffset;
    ULONG DumpData[1];
} IO_ERROR_LOG_PACKET, *PIO_ERROR_LOG_PACKET;
_Static_assert(sizeof(IO_ERROR_LOG_PACKET) == 0x30, "IO_ERROR_LOG_PACKET");
#define ERROR_LOG_MAXIMUM_SIZE 240
NTSYSAPI PVOID NTAPI MmAllocateContiguousMemory(SIZE_T NumberOfBytes,
                                                PHYSICAL_ADDRESS HighestAcceptableAddress);
NTSYSAPI PVOID NTAPI MmAllocateContiguousMemorySpecifyCache(SIZE_T NumberOfBytes,
        PHYSICAL_ADDRESS LowestAcceptableAddress, PHYSICAL_ADDRESS HighestAcceptableAddress,
        PHYSICAL_ADDRESS BoundaryAddressMultiple, MEMORY_CACHING_TYPE CacheType);
NTSYSAPI PVOID NTAPI MmAllocateContiguousMemorySpecifyCacheNode(SIZE_T NumberOfBytes,
        PHYSICAL_ADDRESS LowestAcceptableAddress, PHYSICAL_ADDRESS HighestAcceptableAddress,
        PHYSICAL_ADDRESS BoundaryAddressMultiple, MEMORY_CACHING_TYPE CacheType,
        NODE_REQUIREMENT PreferredNode);
NTSYSAPI VOID NTAPI MmFreeContiguousMemory(PVOID BaseAddress);
NTSYSAPI VOID NTAPI MmFreeContiguousMemorySpecifyCache(PVOID BaseAddress, SIZE_T NumberOfBytes,
                                                       MEMORY_CACHING_TYPE CacheType);
NTSYSAPI PVOID NTAPI MmAllocateNonCachedMemory(SIZE_T NumberOfBytes);
NTSYSAPI VOID NTAPI MmFreeNonCachedMemory(PVOID BaseAddress, SIZE_T NumberOfBytes);
NTSYSAPI PHYSICAL_ADDRESS NTAPI MmGetPhysicalAddress(PVOID BaseAddress);
NTSYSAPI BOOLEAN NTAPI MmIsAddressValid(PVOID VirtualAddress);
NTSYSAPI PVOID NTAPI MmGetVirtualForPhysical(PHYSICAL_ADDRESS PhysicalAddress);
NTSYSAPI SIZE_T NTAPI MmSizeOfMdl(PVOID Base, SIZE_T Length);
NTSYSAPI PMDL NTAPI MmCreateMdl(PMDL MemoryDescriptorList, PVOID Base, SIZE_T Length);
NTSYSAPI VOID NTAPI IoBuildPartialMdl(PMDL SourceMdl, PMDL TargetMdl, PVOID VirtualAddress,
                                      ULONG Length);
NTSYSAPI PMDL NTAPI MmAllocatePagesForMdl(PHYSICAL_ADDRESS LowAddress,
        PHYSICAL_ADDRESS HighAddress, PHYSICAL_ADDRESS SkipBytes, SIZE_T TotalBytes);
NTSYSAPI PMDL NTAPI MmAllocatePagesForMdlEx(PHYSICAL_ADDRESS LowAddress,
        PHYSICAL_ADDRESS HighAddress, PHYSICAL_ADDRESS SkipBytes, SIZE_T TotalBytes,
        MEMORY_CACHING_TYPE CacheType, ULONG Flags);
NTSYSAPI VOID NTAPI MmFreePagesFromMdl(PMDL MemoryDescriptorList);
NTSYSAPI VOID NTAPI MmUnmapLockedPages(PVOID BaseAddress, PMDL MemoryDescriptorList);
NTSYSAPI PVOID NTAPI MmMapIoSpace(PHYSICAL_ADDRESS PhysicalAddress, SIZE_T NumberOfBytes,
                                  MEMORY_CACHING_TYPE CacheType);
NTSYSAPI VOID NTAPI MmUnmapIoSpace(PVOID BaseAddress, SIZE_T NumberOfBytes);
NTSYSAPI PVOID NTAPI IoAllocateErrorLogEntry(PVOID IoObject, UCHAR EntrySize);
NTSYSAPI VOID NTAPI IoWriteErrorLogEntry(PVOID ElEntry);
NTSYSAPI VOID NTAPI IoFreeErrorLogEntry(PVOID ElEntry);
NTSYSAPI PVOID NTAPI MmAllocateMappingAddress(SIZE_T NumberOfBytes, ULONG PoolTag);
NTSYSAPI VOID NTAPI MmFreeMappingAddress(PVOID BaseAddress, ULONG PoolTag);
NTSYSAPI PVOID NTAPI MmMapLockedPagesWithReservedMapping(PVOID MappingAddress, ULONG PoolTag,
        PMDL MemoryDescriptorList, MEMORY_CACHING_TYPE CacheType);
NTSYSAPI VOID NTAPI MmUnmapReservedMapping(PVOID BaseAddress, ULONG PoolTag,
                                           PMDL MemoryDescriptorList);

/* --- system information, version, processors and affinity, the current thread (sysinfo.c) --- */
typedef ULONG_PTR KAFFINITY, *PKAFFINITY;
typedef int SYSTEM_INFORMATION_CLASS;
#define SystemBasicInformation 0
#define SystemModuleInformation 11
#define SystemPoolTagInformation 22
#define SystemBigPoolInformation 66
#define STATUS_INFO_LENGTH_MISMATCH ((NTSTATUS)0xC0000004L)
#define STATUS_INVALID_INFO_CLASS ((NTSTATUS)0xC0000003L)
#define ALL_PROCESSOR_GROUPS 0xffff
typedef struct _SYSTEM_POOLTAG {  /* x64: 0x28 bytes */
    union { UCHAR Tag[4]; ULONG TagUlong; };
    ULONG PagedAllocs, PagedFrees;
    SIZE_T PagedUsed;
    ULONG NonPagedAllocs, NonPagedFrees;
    SIZE_T NonPagedUsed;
} SYSTEM_POOLTAG, *PSYSTEM_POOLTAG;
typedef struct _SYSTEM_POOLTAG_INFORMATION {
    ULONG Count;
    SYSTEM_POOLTAG TagInfo[1];
} SYSTEM_POOLTAG_INFORMATION, *PSYSTEM_POOLTAG_INFORMATION;
typedef struct _RTL_PROCESS_MODULE_INFORMATION {  /* x64: 0x128 bytes */
    HANDLE Section;
    PVOID MappedBase, ImageBase;
    ULONG ImageSize, Flags;
    USHORT LoadOrderIndex, InitOrderIndex, LoadCount, OffsetToFileName;
    UCHAR FullPathName[256];
} RTL_PROCESS_MODULE_INFORMATION;
typedef struct _RTL_PROCESS_MODULES {
    ULONG NumberOfModules;
    RTL_PROCESS_MODULE_INFORMATION Modules[1];
} RTL_PROCESS_MODULES, *PRTL_PROCESS_MODULES;
typedef struct _RTL_OSVERSIONINFOEXW {
    ULONG dwOSVersionInfoSize, dwMajorVersion, dwMinorVersion, dwBuildNumber, dwPlatformId;
    WCHAR szCSDVersion[128];
    USHORT wServicePackMajor, wServicePackMinor, wSuiteMask;
    UCHAR wProductType, wReserved;
} RTL_OSVERSIONINFOEXW, *PRTL_OSVERSIONINFOEXW;
typedef struct _PROCESSOR_NUMBER { USHORT Group; UCHAR Number; UCHAR Reserved; } PROCESSOR_NUMBER,
    *PPROCESSOR_NUMBER;
typedef struct _KTHREAD *PKTHREAD, *PETHREAD;
NTSYSAPI NTSTATUS NTAPI ZwQuerySystemInformation(SYSTEM_INFORMATION_CLASS SystemInformationClass,
        PVOID SystemInformation, ULONG SystemInformationLength, PULONG ReturnLength);
NTSYSAPI NTSTATUS NTAPI RtlGetVersion(PRTL_OSVERSIONINFOEXW lpVersionInformation);
NTSYSAPI BOOLEAN NTAPI PsGetVersion(PULONG MajorVersion, PULONG MinorVersion, PULONG BuildNumber,
                                    PUNICODE_STRING CSDVersion);
NTSYSAPI ULONG NTAPI KeQueryActiveProcessorCount(PKAFFINITY ActiveProcessors);
NTSYSAPI ULONG NTAPI KeQueryActiveProcessorCountEx(USHORT GroupNumber);
NTSYSAPI ULONG NTAPI KeQueryMaximumProcessorCountEx(USHORT GroupNumber);
NTSYSAPI ULONG NTAPI KeGetCurrentProcessorNumberEx(PPROCESSOR_NUMBER ProcNumber);
NTSYSAPI KAFFINITY NTAPI KeSetSystemAffinityThreadEx(KAFFINITY Affinity);
NTSYSAPI VOID NTAPI KeRevertToUserAffinityThreadEx(KAFFINITY Affinity);
NTSYSAPI PETHREAD NTAPI PsGetCurrentThread(VOID);
NTSYSAPI KPROCESSOR_MODE NTAPI ExGetPreviousMode(VOID);
NTSYSAPI BOOLEAN NTAPI PsIsSystemThread(PETHREAD Thread);
#define VER_MINORVERSION 0x0000001
#define VER_MAJORVERSION 0x0000002
#define VER_SERVICEPACKMAJOR 0x0000020
#define VER_GREATER_EQUAL 3
#define STATUS_REVISION_MISMATCH ((NTSTATUS)0xC0000059L)
NTSYSAPI ULONGLONG NTAPI VerSetConditionMask(ULONGLONG ConditionMask, ULONG TypeMask, UCHAR Condition);
NTSYSAPI NTSTATUS NTAPI RtlVerifyVersionInfo(PRTL_OSVERSIONINFOEXW VersionInfo, ULONG TypeMask,
                                             ULONGLONG ConditionMask);

/* --- what wdm.h inlines --- */
#define ObDereferenceObject(o) ObfDereferenceObject(o)
#define IoCallDriver(d, i) IofCallDriver(d, i)
#define IoCompleteRequest(i, b) IofCompleteRequest(i, b)
#define IoGetCurrentIrpStackLocation(Irp) ((Irp)->Tail.Overlay.CurrentStackLocation)
#define IoGetNextIrpStackLocation(Irp) ((Irp)->Tail.Overlay.CurrentStackLocation - 1)
#define IoSkipCurrentIrpStackLocation(Irp) \
    ((Irp)->CurrentLocation++, (Irp)->Tail.Overlay.CurrentStackLocation++)
#define IoMarkIrpPending(Irp) (IoGetCurrentIrpStackLocation(Irp)->Control |= SL_PENDING_RETURNED)
FORCEINLINE VOID IoCopyCurrentIrpStackLocationToNext(PIRP Irp) {
    PIO_STACK_LOCATION current = IoGetCurrentIrpStackLocation(Irp);
    PIO_STACK_LOCATION next = IoGetNextIrpStackLocation(Irp);
    memcpy(next, current, (SIZE_T)&((PIO_STACK_LOCATION)0)->CompletionRoutine);
    next->Control = 0;
}
FORCEINLINE VOID IoSetCompletionRoutine(PIRP Irp, PIO_COMPLETION_ROUTINE Routine, PVOID Context,
                                        BOOLEAN OnSuccess, BOOLEAN OnError, BOOLEAN OnCancel) {
    PIO_STACK_LOCATION next = IoGetNextIrpStackLocation(Irp);
    next->CompletionRoutine = Routine;
    next->Context = Context;
    next->Control = 0;
    if (OnSuccess) next->Control |= SL_INVOKE_ON_SUCCESS;
    if (OnError) next->Control |= SL_INVOKE_ON_ERROR;
    if (OnCancel) next->Control |= SL_INVOKE_ON_CANCEL;
}
FORCEINLINE PVOID MmGetSystemAddressForMdlSafe(PMDL Mdl, ULONG Priority) {
    if (Mdl->MdlFlags & (MDL_MAPPED_TO_SYSTEM_VA | MDL_SOURCE_IS_NONPAGED_POOL))
        return Mdl->MappedSystemVa;
    return MmMapLockedPagesSpecifyCache(Mdl, KernelMode, MmCached, NULL, FALSE, Priority);
}
#define MmGetMdlByteCount(Mdl) ((Mdl)->ByteCount)
/* --- processes, threads and driver lifetime (the "ps" block: lifetime.c, threads.c) --- */
typedef struct _EX_RUNDOWN_REF { ULONG_PTR Count; } EX_RUNDOWN_REF, *PEX_RUNDOWN_REF;
NTSYSAPI VOID NTAPI ExInitializeRundownProtection(PEX_RUNDOWN_REF RunRef);
NTSYSAPI VOID NTAPI ExReInitializeRundownProtection(PEX_RUNDOWN_REF RunRef);
NTSYSAPI BOOLEAN NTAPI ExAcquireRundownProtection(PEX_RUNDOWN_REF RunRef);
NTSYSAPI BOOLEAN NTAPI ExAcquireRundownProtectionEx(PEX_RUNDOWN_REF RunRef, ULONG Count);
NTSYSAPI VOID NTAPI ExReleaseRundownProtection(PEX_RUNDOWN_REF RunRef);
NTSYSAPI VOID NTAPI ExReleaseRundownProtectionEx(PEX_RUNDOWN_REF RunRef, ULONG Count);
NTSYSAPI VOID NTAPI ExWaitForRundownProtectionRelease(PEX_RUNDOWN_REF RunRef);
NTSYSAPI VOID NTAPI ExRundownCompleted(PEX_RUNDOWN_REF RunRef);
NTSYSAPI NTSTATUS NTAPI IoAllocateDriverObjectExtension(PDRIVER_OBJECT DriverObject,
        PVOID ClientIdentificationAddress, ULONG DriverObjectExtensionSize,
        PVOID *DriverObjectExtension);
NTSYSAPI PVOID NTAPI IoGetDriverObjectExtension(PDRIVER_OBJECT DriverObject,
        PVOID ClientIdentificationAddress);

typedef struct _CLIENT_ID { HANDLE UniqueProcess; HANDLE UniqueThread; } CLIENT_ID;
typedef struct _PS_CREATE_NOTIFY_INFO {
    SIZE_T Size;
    ULONG Flags;
    HANDLE ParentProcessId;
    CLIENT_ID CreatingThreadId;
    PVOID FileObject;
    const UNICODE_STRING * ImageFileName;
    const UNICODE_STRING * CommandLine;
    NTSTATUS CreationStatus;
} PS_CREATE_NOTIFY_INFO, *PPS_CREATE_NOTIFY_INFO;
typedef struct _IMAGE_INFO {
    ULONG Properties;  /* ImageAddressingMode:8, SystemModeImage:1, ... */
    PVOID ImageBase;
    ULONG ImageSelector;
    SIZE_T ImageSize;
    ULONG ImageSectionNumber;
} IMAGE_INFO, *PIMAGE_INFO;
typedef struct _EPROCESS *PEPROCESS;
typedef VOID (NTAPI *PCREATE_PROCESS_NOTIFY_ROUTINE)(HANDLE ParentId, HANDLE ProcessId, BOOLEAN Create);
typedef VOID (NTAPI *PCREATE_PROCESS_NOTIFY_ROUTINE_EX)(PEPROCESS Process, HANDLE ProcessId,
                                                        PPS_CREATE_NOTIFY_INFO CreateInfo);
typedef VOID (NTAPI *PCREATE_THREAD_NOTIFY_ROUTINE)(HANDLE ProcessId, HANDLE ThreadId, BOOLEAN Create);
typedef VOID (NTAPI *PLOAD_IMAGE_NOTIFY_ROUTINE)(PUNICODE_STRING FullImageName, HANDLE ProcessId,
                                                 PIMAGE_INFO ImageInfo);
typedef NTSTATUS (NTAPI *PEX_CALLBACK_FUNCTION)(PVOID CallbackContext, PVOID Argument1, PVOID Argument2);
typedef enum _REG_NOTIFY_CLASS { RegNtPreSetValueKey = 1, RegNtPostSetValueKey = 16 } REG_NOTIFY_CLASS;
typedef struct _REG_SET_VALUE_KEY_INFORMATION {
    PVOID Object;
    PUNICODE_STRING ValueName;
    ULONG TitleIndex;
    ULONG Type;
    PVOID Data;
    ULONG DataSize;
    PVOID CallContext, ObjectContext, Reserved;
} REG_SET_VALUE_KEY_INFORMATION, *PREG_SET_VALUE_KEY_INFORMATION;
typedef struct _REG_POST_OPERATION_INFORMATION {
    PVOID Object;
    NTSTATUS Status;
    PVOID PreInformation;
    NTSTATUS ReturnStatus;
    PVOID CallContext, ObjectContext, Reserved;
} REG_POST_OPERATION_INFORMATION, *PREG_POST_OPERATION_INFORMATION;
typedef ULONG OB_OPERATION;
#define OB_OPERATION_HANDLE_CREATE 0x00000001
#define OB_OPERATION_HANDLE_DUPLICATE 0x00000002
#define OB_FLT_REGISTRATION_VERSION 0x0100
typedef int OB_PREOP_CALLBACK_STATUS;
typedef OB_PREOP_CALLBACK_STATUS (NTAPI *POB_PRE_OPERATION_CALLBACK)(PVOID RegistrationContext,
                                                                    PVOID OperationInformation);
typedef VOID (NTAPI *POB_POST_OPERATION_CALLBACK)(PVOID RegistrationContext, PVOID OperationInformation);
typedef struct _OB_OPERATION_REGISTRATION {
    PVOID *ObjectType;
    OB_OPERATION Operations;
    POB_PRE_OPERATION_CALLBACK PreOperation;
    POB_POST_OPERATION_CALLBACK PostOperation;
} OB_OPERATION_REGISTRATION, *POB_OPERATION_REGISTRATION;
typedef struct _OB_CALLBACK_REGISTRATION {
    USHORT Version;
    USHORT OperationRegistrationCount;
    UNICODE_STRING Altitude;
    PVOID RegistrationContext;
    OB_OPERATION_REGISTRATION *OperationRegistration;
} OB_CALLBACK_REGISTRATION, *POB_CALLBACK_REGISTRATION;
#define STATUS_FLT_INSTANCE_ALTITUDE_COLLISION ((NTSTATUS)0xC01C0011L)
#define STATUS_PROCEDURE_NOT_FOUND ((NTSTATUS)0xC000007AL)
#define STATUS_ACCESS_DENIED ((NTSTATUS)0xC0000022L)
/* wdm.h declares them POBJECT_TYPE * (linked to the import's address); imported with
 * dllimport, as here, the variable is the POBJECT_TYPE and its address that pointer. */
extern __declspec(dllimport) PVOID PsProcessType;
extern __declspec(dllimport) PVOID PsThreadType;
NTSYSAPI NTSTATUS NTAPI PsSetCreateProcessNotifyRoutine(PCREATE_PROCESS_NOTIFY_ROUTINE NotifyRoutine,
                                                       BOOLEAN Remove);
NTSYSAPI NTSTATUS NTAPI PsSetCreateProcessNotifyRoutineEx(PCREATE_PROCESS_NOTIFY_ROUTINE_EX NotifyRoutine,
                                                         BOOLEAN Remove);
NTSYSAPI NTSTATUS NTAPI PsSetCreateThreadNotifyRoutine(PCREATE_THREAD_NOTIFY_ROUTINE NotifyRoutine);
NTSYSAPI NTSTATUS NTAPI PsRemoveCreateThreadNotifyRoutine(PCREATE_THREAD_NOTIFY_ROUTINE NotifyRoutine);
NTSYSAPI NTSTATUS NTAPI PsSetLoadImageNotifyRoutine(PLOAD_IMAGE_NOTIFY_ROUTINE NotifyRoutine);
NTSYSAPI NTSTATUS NTAPI PsRemoveLoadImageNotifyRoutine(PLOAD_IMAGE_NOTIFY_ROUTINE NotifyRoutine);
NTSYSAPI NTSTATUS NTAPI CmRegisterCallback(PEX_CALLBACK_FUNCTION Function, PVOID Context,
                                          PLARGE_INTEGER Cookie);
NTSYSAPI NTSTATUS NTAPI CmRegisterCallbackEx(PEX_CALLBACK_FUNCTION Function, const UNICODE_STRING * Altitude,
                                            PVOID Driver, PVOID Context, PLARGE_INTEGER Cookie,
                                            PVOID Reserved);
NTSYSAPI NTSTATUS NTAPI CmUnRegisterCallback(LARGE_INTEGER Cookie);
NTSYSAPI NTSTATUS NTAPI ObRegisterCallbacks(POB_CALLBACK_REGISTRATION CallbackRegistration,
                                           PVOID *RegistrationHandle);
NTSYSAPI VOID NTAPI ObUnRegisterCallbacks(PVOID RegistrationHandle);
typedef VOID (NTAPI *PKSTART_ROUTINE)(PVOID StartContext);
#define SYNCHRONIZE 0x00100000L
NTSYSAPI NTSTATUS NTAPI PsCreateSystemThread(PHANDLE ThreadHandle, ULONG DesiredAccess,
        PVOID ObjectAttributes, HANDLE ProcessHandle, CLIENT_ID *ClientId, PKSTART_ROUTINE StartRoutine,
        PVOID StartContext);
NTSYSAPI NTSTATUS NTAPI PsTerminateSystemThread(NTSTATUS ExitStatus);
NTSYSAPI NTSTATUS NTAPI ZwClose(HANDLE Handle);
#define FILE_ALL_ACCESS 0x001F01FFL
NTSYSAPI PIRP NTAPI IoBuildDeviceIoControlRequest(ULONG IoControlCode, PDEVICE_OBJECT DeviceObject,
        PVOID InputBuffer, ULONG InputBufferLength, PVOID OutputBuffer, ULONG OutputBufferLength,
        BOOLEAN InternalDeviceIoControl, PKEVENT Event, PIO_STATUS_BLOCK IoStatusBlock);
NTSYSAPI PIRP NTAPI IoBuildSynchronousFsdRequest(ULONG MajorFunction, PDEVICE_OBJECT DeviceObject,
        PVOID Buffer, ULONG Length, PLARGE_INTEGER StartingOffset, PKEVENT Event,
        PIO_STATUS_BLOCK IoStatusBlock);
NTSYSAPI PIRP NTAPI IoBuildAsynchronousFsdRequest(ULONG MajorFunction, PDEVICE_OBJECT DeviceObject,
        PVOID Buffer, ULONG Length, PLARGE_INTEGER StartingOffset, PIO_STATUS_BLOCK IoStatusBlock);
NTSYSAPI PDEVICE_OBJECT NTAPI IoGetRelatedDeviceObject(PFILE_OBJECT FileObject);
#endif
