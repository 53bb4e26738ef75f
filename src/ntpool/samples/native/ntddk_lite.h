/* ntddk_lite.h: the slice of the WDK's wdm.h/ntddk.h/ndis.h the sample drivers use.
 *
 * The declarations follow the WDK (names, types, x64 layouts, the inline routines wdm.h
 * defines on x64: KeGetCurrentIrql/KeRaiseIrql/KeLowerIrql through CR8, the lookaside
 * list allocate/free paths); it exists so that the drivers build with nothing but the
 * compiler from PyPI (ziglang). A driver written against the real WDK headers builds
 * and runs the same way. */
#ifndef NTDDK_LITE_H
#define NTDDK_LITE_H

#define NTAPI __stdcall
#define NTSYSAPI __declspec(dllimport)
#define NDISAPI __declspec(dllimport)
#define FORCEINLINE static __inline __attribute__((always_inline))
#define IN
#define OUT
#define OPTIONAL
#define NULL ((void *)0)
#define TRUE 1
#define FALSE 0

typedef void VOID, *PVOID;
typedef char CHAR, *PCHAR;
typedef const char *PCSTR;
typedef unsigned char UCHAR, *PUCHAR, BOOLEAN, KIRQL, *PKIRQL;
typedef unsigned short USHORT, WCHAR, *PWSTR;
typedef const unsigned short *PCWSTR;
typedef int INT;
typedef unsigned int UINT;
typedef long LONG, NTSTATUS;
typedef unsigned long ULONG, *PULONG;
typedef long long LONGLONG;
typedef unsigned long long ULONGLONG, ULONG64, SIZE_T, ULONG_PTR, KSPIN_LOCK, *PKSPIN_LOCK;
typedef PVOID NDIS_HANDLE, *PNDIS_HANDLE;
typedef int NDIS_STATUS;

typedef enum _POOL_TYPE {
    NonPagedPool = 0, PagedPool = 1, NonPagedPoolMustSucceed = 2,
    NonPagedPoolCacheAligned = 4, PagedPoolCacheAligned = 5, NonPagedPoolNx = 512
} POOL_TYPE;

#define STATUS_SUCCESS ((NTSTATUS)0x00000000L)
#define STATUS_UNSUCCESSFUL ((NTSTATUS)0xC0000001L)
#define STATUS_ACCESS_VIOLATION ((NTSTATUS)0xC0000005L)
#define STATUS_INSUFFICIENT_RESOURCES ((NTSTATUS)0xC000009AL)
#define NT_SUCCESS(Status) (((NTSTATUS)(Status)) >= 0)
#define NDIS_STATUS_SUCCESS ((NDIS_STATUS)0)
#define NDIS_STATUS_RESOURCES ((NDIS_STATUS)0xC000009AL)
#define EXCEPTION_EXECUTE_HANDLER 1
#define EXCEPTION_CONTINUE_SEARCH 0
#define GetExceptionCode _exception_code
#define PASSIVE_LEVEL 0
#define APC_LEVEL 1
#define DISPATCH_LEVEL 2
#define POOL_RAISE_IF_ALLOCATION_FAILURE 16

typedef struct _UNICODE_STRING {
    USHORT Length;
    USHORT MaximumLength;
    PWSTR Buffer;
} UNICODE_STRING, *PUNICODE_STRING;

typedef struct _LIST_ENTRY {
    struct _LIST_ENTRY *Flink, *Blink;
} LIST_ENTRY, *PLIST_ENTRY;

typedef struct _DRIVER_OBJECT *PDRIVER_OBJECT;
typedef VOID (NTAPI *PDRIVER_UNLOAD)(PDRIVER_OBJECT DriverObject);
typedef struct _DRIVER_OBJECT {  /* Windows 7 x64: 0x150 bytes */
    short Type, Size;
    PVOID DeviceObject;
    ULONG Flags;
    PVOID DriverStart;
    ULONG DriverSize;
    PVOID DriverSection, DriverExtension;
    UNICODE_STRING DriverName;
    PUNICODE_STRING HardwareDatabase;
    PVOID FastIoDispatch, DriverInit, DriverStartIo;
    PDRIVER_UNLOAD DriverUnload;
    PVOID MajorFunction[28];
} DRIVER_OBJECT;

/* --- interlocked lists and lookaside lists (x64 layouts) --- */
typedef struct __attribute__((aligned(16))) _SLIST_HEADER {
    ULONGLONG Alignment, Region;
} SLIST_HEADER, *PSLIST_HEADER;
typedef struct _SLIST_ENTRY { struct _SLIST_ENTRY *Next; } SLIST_ENTRY, *PSLIST_ENTRY;
typedef PVOID (NTAPI *PALLOCATE_FUNCTION)(POOL_TYPE PoolType, SIZE_T NumberOfBytes, ULONG Tag);
typedef VOID (NTAPI *PFREE_FUNCTION)(PVOID Buffer);
typedef struct __attribute__((aligned(16))) _GENERAL_LOOKASIDE {
    SLIST_HEADER ListHead;
    USHORT Depth, MaximumDepth;
    ULONG TotalAllocates, AllocateMisses, TotalFrees, FreeMisses;
    POOL_TYPE Type;
    ULONG Tag, Size;
    PALLOCATE_FUNCTION Allocate;
    PFREE_FUNCTION Free;
    LIST_ENTRY ListEntry;
    ULONG LastTotalAllocates, LastAllocateMisses, Future[2];
} GENERAL_LOOKASIDE, NPAGED_LOOKASIDE_LIST, *PNPAGED_LOOKASIDE_LIST, PAGED_LOOKASIDE_LIST,
  *PPAGED_LOOKASIDE_LIST;
struct _LOOKASIDE_LIST_EX;
typedef PVOID (NTAPI *PALLOCATE_FUNCTION_EX)(POOL_TYPE PoolType, SIZE_T NumberOfBytes, ULONG Tag,
                                             struct _LOOKASIDE_LIST_EX *Lookaside);
typedef VOID (NTAPI *PFREE_FUNCTION_EX)(PVOID Buffer, struct _LOOKASIDE_LIST_EX *Lookaside);
typedef struct _GENERAL_LOOKASIDE_POOL {  /* GENERAL_LOOKASIDE's fields, not cache-aligned */
    SLIST_HEADER ListHead;
    USHORT Depth, MaximumDepth;
    ULONG TotalAllocates, AllocateMisses, TotalFrees, FreeMisses;
    POOL_TYPE Type;
    ULONG Tag, Size;
    PALLOCATE_FUNCTION_EX AllocateEx;
    PFREE_FUNCTION_EX FreeEx;
    LIST_ENTRY ListEntry;
    ULONG LastTotalAllocates, LastAllocateMisses, Future[2];
} GENERAL_LOOKASIDE_POOL;
typedef struct _LOOKASIDE_LIST_EX { GENERAL_LOOKASIDE_POOL L; } LOOKASIDE_LIST_EX,
  *PLOOKASIDE_LIST_EX;

/* --- imports from ntoskrnl.exe --- */
NTSYSAPI PVOID NTAPI ExAllocatePoolWithTag(POOL_TYPE PoolType, SIZE_T NumberOfBytes, ULONG Tag);
NTSYSAPI PVOID NTAPI ExAllocatePool(POOL_TYPE PoolType, SIZE_T NumberOfBytes);
NTSYSAPI VOID NTAPI ExFreePoolWithTag(PVOID P, ULONG Tag);
NTSYSAPI VOID NTAPI ExFreePool(PVOID P);
NTSYSAPI PVOID NTAPI FsRtlAllocatePoolWithTag(POOL_TYPE PoolType, ULONG NumberOfBytes, ULONG Tag);
NTSYSAPI VOID NTAPI ExRaiseStatus(NTSTATUS Status);
NTSYSAPI VOID NTAPI ProbeForRead(const volatile VOID *Address, SIZE_T Length, ULONG Alignment);
NTSYSAPI VOID NTAPI ProbeForWrite(volatile VOID *Address, SIZE_T Length, ULONG Alignment);
NTSYSAPI ULONG __cdecl DbgPrint(PCSTR Format, ...);
NTSYSAPI ULONG __cdecl DbgPrintEx(ULONG ComponentId, ULONG Level, PCSTR Format, ...);
NTSYSAPI VOID NTAPI KeBugCheckEx(ULONG BugCheckCode, ULONG_PTR P1, ULONG_PTR P2, ULONG_PTR P3,
                                 ULONG_PTR P4);
NTSYSAPI VOID NTAPI KeInitializeSpinLock(PKSPIN_LOCK SpinLock);
NTSYSAPI KIRQL NTAPI KeAcquireSpinLockRaiseToDpc(PKSPIN_LOCK SpinLock);
NTSYSAPI VOID NTAPI KeReleaseSpinLock(PKSPIN_LOCK SpinLock, KIRQL NewIrql);
NTSYSAPI VOID NTAPI ExInitializeNPagedLookasideList(PNPAGED_LOOKASIDE_LIST Lookaside,
        PALLOCATE_FUNCTION Allocate, PFREE_FUNCTION Free, ULONG Flags, SIZE_T Size, ULONG Tag,
        USHORT Depth);
NTSYSAPI VOID NTAPI ExDeleteNPagedLookasideList(PNPAGED_LOOKASIDE_LIST Lookaside);
NTSYSAPI NTSTATUS NTAPI ExInitializeLookasideListEx(PLOOKASIDE_LIST_EX Lookaside,
        PALLOCATE_FUNCTION_EX Allocate, PFREE_FUNCTION_EX Free, POOL_TYPE PoolType, ULONG Flags,
        SIZE_T Size, ULONG Tag, USHORT Depth);
NTSYSAPI VOID NTAPI ExDeleteLookasideListEx(PLOOKASIDE_LIST_EX Lookaside);
NTSYSAPI VOID NTAPI ExFlushLookasideListEx(PLOOKASIDE_LIST_EX Lookaside);
NTSYSAPI PSLIST_ENTRY NTAPI ExpInterlockedPopEntrySList(PSLIST_HEADER ListHead);
NTSYSAPI PSLIST_ENTRY NTAPI ExpInterlockedPushEntrySList(PSLIST_HEADER ListHead,
                                                         PSLIST_ENTRY ListEntry);
NTSYSAPI VOID NTAPI RtlZeroMemory(PVOID Destination, SIZE_T Length);
NTSYSAPI SIZE_T NTAPI RtlCompareMemory(const VOID *Source1, const VOID *Source2, SIZE_T Length);
NTSYSAPI PVOID __cdecl memcpy(PVOID Destination, const VOID *Source, SIZE_T Count);
NTSYSAPI PVOID __cdecl memset(PVOID Destination, INT Value, SIZE_T Count);
NTSYSAPI SIZE_T __cdecl strlen(PCSTR String);
NTSYSAPI INT __cdecl _snprintf(char *Buffer, SIZE_T Count, PCSTR Format, ...);
#define KeAcquireSpinLock(SpinLock, OldIrql) (*(OldIrql) = KeAcquireSpinLockRaiseToDpc(SpinLock))

/* --- imports from NDIS.SYS --- */
typedef struct _NDIS_MINIPORT_CHARACTERISTICS {  /* NDIS 5.1: the version comes first */
    UCHAR MajorNdisVersion, MinorNdisVersion;
    USHORT Filler;
    UINT Reserved;
    PVOID Handlers[24];
} NDIS_MINIPORT_CHARACTERISTICS, *PNDIS_MINIPORT_CHARACTERISTICS;
NDISAPI VOID NTAPI NdisMInitializeWrapper(PNDIS_HANDLE NdisWrapperHandle, PVOID SystemSpecific1,
                                          PVOID SystemSpecific2, PVOID SystemSpecific3);
NDISAPI NDIS_STATUS NTAPI NdisMRegisterMiniport(NDIS_HANDLE NdisWrapperHandle,
        PNDIS_MINIPORT_CHARACTERISTICS MiniportCharacteristics, UINT CharacteristicsLength);
NDISAPI NDIS_STATUS NTAPI NdisAllocateMemoryWithTag(PVOID *VirtualAddress, UINT Length, ULONG Tag);
NDISAPI VOID NTAPI NdisFreeMemory(PVOID VirtualAddress, UINT Length, UINT MemoryFlags);
NDISAPI VOID NTAPI NdisZeroMemory(PVOID Destination, UINT Length);
NDISAPI VOID NTAPI NdisMoveMemory(PVOID Destination, const VOID *Source, UINT Length);

/* --- what wdm.h inlines on x64 --- */
FORCEINLINE KIRQL KeGetCurrentIrql(void) {
    ULONG64 irql;
    __asm__ volatile("mov %%cr8, %0" : "=r"(irql));
    return (KIRQL)irql;
}
FORCEINLINE VOID KeLowerIrql(KIRQL NewIrql) {
    ULONG64 irql = NewIrql;
    __asm__ volatile("mov %0, %%cr8" : : "r"(irql) : "memory");
}
FORCEINLINE KIRQL KfRaiseIrql(KIRQL NewIrql) {
    KIRQL old = KeGetCurrentIrql();
    KeLowerIrql(NewIrql);  /* a mov to cr8, as wdm.h writes it */
    return old;
}
#define KeRaiseIrql(NewIrql, OldIrql) (*(OldIrql) = KfRaiseIrql(NewIrql))

FORCEINLINE USHORT ExQueryDepthSList(PSLIST_HEADER ListHead) {
    return (USHORT)(ListHead->Alignment & 0xffff);
}
FORCEINLINE PVOID ExAllocateFromNPagedLookasideList(PNPAGED_LOOKASIDE_LIST Lookaside) {
    PVOID Entry;
    Lookaside->TotalAllocates += 1;
    Entry = ExpInterlockedPopEntrySList(&Lookaside->ListHead);
    if (Entry == NULL) {
        Lookaside->AllocateMisses += 1;
        Entry = (Lookaside->Allocate)(Lookaside->Type, Lookaside->Size, Lookaside->Tag);
    }
    return Entry;
}
FORCEINLINE VOID ExFreeToNPagedLookasideList(PNPAGED_LOOKASIDE_LIST Lookaside, PVOID Entry) {
    Lookaside->TotalFrees += 1;
    if (ExQueryDepthSList(&Lookaside->ListHead) >= Lookaside->Depth) {
        Lookaside->FreeMisses += 1;
        (Lookaside->Free)(Entry);
    } else {
        ExpInterlockedPushEntrySList(&Lookaside->ListHead, (PSLIST_ENTRY)Entry);
    }
}
FORCEINLINE PVOID ExAllocateFromLookasideListEx(PLOOKASIDE_LIST_EX Lookaside) {
    PVOID Entry;
    Lookaside->L.TotalAllocates += 1;
    Entry = ExpInterlockedPopEntrySList(&Lookaside->L.ListHead);
    if (Entry == NULL) {
        Lookaside->L.AllocateMisses += 1;
        Entry = (Lookaside->L.AllocateEx)(Lookaside->L.Type, Lookaside->L.Size, Lookaside->L.Tag,
                                          Lookaside);
    }
    return Entry;
}
FORCEINLINE VOID ExFreeToLookasideListEx(PLOOKASIDE_LIST_EX Lookaside, PVOID Entry) {
    Lookaside->L.TotalFrees += 1;
    if (ExQueryDepthSList(&Lookaside->L.ListHead) >= Lookaside->L.Depth) {
        Lookaside->L.FreeMisses += 1;
        (Lookaside->L.FreeEx)(Entry, Lookaside);
    } else {
        ExpInterlockedPushEntrySList(&Lookaside->L.ListHead, (PSLIST_ENTRY)Entry);
    }
}

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath);
#endif
