/* misbehave.sys: a driver's worst habits, each behind an export, each ending as Windows
 * ends it (tests/test_native_hostile.py). */
#include "ntddk_lite.h"

/* A store through a wild pointer: an unmapped kernel address is PAGE_FAULT_IN_NONPAGED_AREA
 * (0x50), a user-mode one an access violation (unhandled: 0x1E). */
__declspec(dllexport) VOID WildWrite(ULONG64 address) { *(volatile ULONG *)address = 0x11223344; }

/* The same at DISPATCH_LEVEL: DRIVER_IRQL_NOT_LESS_OR_EQUAL (0xD1). */
__declspec(dllexport) VOID WildWriteAtDispatch(ULONG64 address) {
    KIRQL old;
    KeRaiseIrql(DISPATCH_LEVEL, &old);
    *(volatile ULONG *)address = 0x11223344;
    KeLowerIrql(old);
}

/* A call through a function pointer that holds NULL, or anything else. */
typedef VOID (*ROUTINE)(void);
__declspec(dllexport) VOID CallPointer(ULONG64 address) { ((ROUTINE)address)(); }

/* An out-pointer to memory nothing maps: NDIS writes the allocation's address through it. */
__declspec(dllexport) NDIS_STATUS AllocateInto(ULONG64 out) {
    volatile NDIS_STATUS status = NdisAllocateMemoryWithTag((PVOID *)out, 64, 'vsiM');
    return status;  /* not a tail call: the exception's frame is this function's */
}

/* The same inside __try: the access violation the routine raises reaches the handler. */
__declspec(dllexport) NTSTATUS CaughtAllocateInto(ULONG64 out) {
    __try {
        NdisAllocateMemoryWithTag((PVOID *)out, 64, 'vsiM');
        return STATUS_SUCCESS;
    } __except (EXCEPTION_EXECUTE_HANDLER) {
        return GetExceptionCode();
    }
}

/* An in-pointer to memory nothing maps: the routine reads the string there. */
NTSYSAPI VOID NTAPI RtlInitUnicodeString(PUNICODE_STRING DestinationString,
                                         const unsigned short *SourceString);
__declspec(dllexport) USHORT MeasureString(ULONG64 source) {
    UNICODE_STRING string;
    RtlInitUnicodeString(&string, (const unsigned short *)source);
    return string.Length;
}

/* An endless loop at DISPATCH_LEVEL: Windows 8 and later's DPC watchdog stops it. */
__declspec(dllexport) VOID SpinAtDispatch(void) {
    KIRQL old;
    KeRaiseIrql(DISPATCH_LEVEL, &old);
    for (;;) __asm__ volatile("");
}

/* Arguments the routines refuse from Python (a ValueError naming them), as a C caller passes
 * them: each ends as Windows ends it (README, "Arguments a routine refuses"). */

/* A POOL_TYPE with bits Windows gives no meaning: ignored, as WRK's ExAllocatePoolWithTag
 * ignores them (the pool is chosen by PoolType & BASE_POOL_TYPE_MASK). */
__declspec(dllexport) PVOID AllocateOfType(ULONG PoolType) {
    return ExAllocatePoolWithTag((POOL_TYPE)PoolType, 64, 'vsiM');
}

/* An EX_POOL_PRIORITY that is none of the values: checked as LowPoolPriority. */
typedef int EX_POOL_PRIORITY;
NTSYSAPI PVOID NTAPI ExAllocatePoolWithTagPriority(POOL_TYPE PoolType, SIZE_T NumberOfBytes,
                                                   ULONG Tag, EX_POOL_PRIORITY Priority);
__declspec(dllexport) PVOID AllocateWithPriority(ULONG Priority) {
    return ExAllocatePoolWithTagPriority(NonPagedPool, 64, 'vsiM', (EX_POOL_PRIORITY)Priority);
}

/* ExAllocatePool3 with one POOL_EXTENDED_PARAMETER, a priority, read from the driver's memory. */
typedef struct _POOL_EXTENDED_PARAMETER {
    ULONG64 Header;  /* Type:8 (1: priority), Optional:1, Reserved:55 */
    ULONG64 Value;   /* the union: here the EX_POOL_PRIORITY */
} POOL_EXTENDED_PARAMETER;
NTSYSAPI PVOID NTAPI ExAllocatePool3(ULONG64 Flags, SIZE_T NumberOfBytes, ULONG Tag,
                                     const POOL_EXTENDED_PARAMETER *ExtendedParameters,
                                     ULONG ExtendedParametersCount);
__declspec(dllexport) PVOID AllocateWithParameter(ULONG Priority) {
    POOL_EXTENDED_PARAMETER parameter = {1, Priority};
    return ExAllocatePool3(0x40 /* POOL_FLAG_NON_PAGED */, 64, 'vsiM', &parameter, 1);
}

/* memset of more bytes than memory holds: it runs until the first page nothing maps. */
__declspec(dllexport) VOID FillEverything(PVOID Destination) {
    memset(Destination, 0x5A, ~(SIZE_T)0 >> 1);
}

/* An IRQL past HIGH_LEVEL through wdm.h's inline KeRaiseIrql: mov cr8 with reserved bits. */
__declspec(dllexport) VOID RaiseIrqlTo(ULONG Irql) {
    KIRQL old;
    KeRaiseIrql((KIRQL)Irql, &old);
    KeLowerIrql(old);
}

/* A spin lock at an address nothing maps (NULL): the acquire raises to DISPATCH_LEVEL first. */
__declspec(dllexport) VOID AcquireLockAt(ULONG64 Lock) {
    KIRQL old;
    KeAcquireSpinLock((PKSPIN_LOCK)Lock, &old);
    KeReleaseSpinLock((PKSPIN_LOCK)Lock, old);
}

/* A syscall of its own (not an import's): the system call entry is for user mode. */
__declspec(dllexport) VOID Syscall(void) { __asm__ volatile("syscall" ::: "rcx", "r11", "memory"); }

__declspec(dllexport) NTSTATUS CaughtSyscall(void) {
    __try {
        __asm__ volatile("syscall" ::: "rcx", "r11", "memory");
        return STATUS_SUCCESS;
    } __except (EXCEPTION_EXECUTE_HANDLER) {
        return GetExceptionCode();
    }
}

/* CR0.WP cleared, a rootkit's way to patch read-only memory: the processor then lets
 * ring 0 write read-only pages, and ntpool's CPU does the same. */
static const volatile UCHAR Constant = 0x11;  /* .rdata: read-only */

static ULONG64 ReadCr0(void) {
    ULONG64 cr0;
    __asm__ volatile("mov %%cr0, %0" : "=r"(cr0));
    return cr0;
}
static VOID WriteCr0(ULONG64 cr0) { __asm__ volatile("mov %0, %%cr0" : : "r"(cr0) : "memory"); }

__declspec(dllexport) UCHAR PatchConstant(UCHAR Value) {
    ULONG64 cr0 = ReadCr0();
    WriteCr0(cr0 & ~0x10000ULL);  /* WP off */
    *(volatile UCHAR *)&Constant = Value;
    WriteCr0(cr0);
    return Constant;
}

/* The same store with WP on: ATTEMPTED_WRITE_TO_READONLY_MEMORY (0xBE). */
__declspec(dllexport) VOID WriteConstant(UCHAR Value) { *(volatile UCHAR *)&Constant = Value; }

/* WP off, then a fault its __except handles, then the store: a fault changes no CR0 bit. */
__declspec(dllexport) UCHAR PatchConstantAfterFault(UCHAR Value, ULONG64 Unmapped) {
    ULONG64 cr0 = ReadCr0();
    WriteCr0(cr0 & ~0x10000ULL);
    __try {
        *(volatile ULONG *)Unmapped = 1;
    } __except (EXCEPTION_EXECUTE_HANDLER) {
    }
    *(volatile UCHAR *)&Constant = Value;
    WriteCr0(cr0);
    return Constant;
}

/* WP off and left off: the next store to read-only memory, in any call, goes through. */
__declspec(dllexport) VOID ClearWriteProtect(void) { WriteCr0(ReadCr0() & ~0x10000ULL); }

/* Any CR0 value: 64-bit code may not turn paging off (#GP, as any write the processor
 * refuses); CR3: a reload of the current one flushes the TLB, another page table is one
 * ntpool has not got. */
__declspec(dllexport) VOID SetCr0(ULONG64 Value) { WriteCr0(Value); }

__declspec(dllexport) VOID SetCr3(ULONG64 Value) {
    __asm__ volatile("mov %0, %%cr3" : : "r"(Value) : "memory");
}

__declspec(dllexport) ULONG64 ReloadCr3(void) {
    ULONG64 cr3;
    __asm__ volatile("mov %%cr3, %0" : "=r"(cr3));
    __asm__ volatile("mov %0, %%cr3" : : "r"(cr3) : "memory");
    return cr3;
}

/* Code written at run time: Length bytes copied into NonPagedPool (executable on Windows 7;
 * in ntpool, under special pool) by the driver's own stores, then called with Argument. The
 * loader never saw its mov crN: the CPU scans it when it first runs. */
typedef ULONG64 (*COPIED_CODE)(ULONG64 Argument);

__declspec(dllexport) ULONG64 RunCopiedCode(const UCHAR *Code, SIZE_T Length, ULONG64 Argument) {
    volatile UCHAR *copy = ExAllocatePoolWithTag(NonPagedPool, Length, 'edoC');
    ULONG64 result;
    SIZE_T i;
    if (!copy)
        return 0;
    for (i = 0; i < Length; i++)
        copy[i] = Code[i];
    result = ((COPIED_CODE)copy)(Argument);
    ExFreePoolWithTag((PVOID)copy, 'edoC');
    return result;
}

static VOID NTAPI Unload(PDRIVER_OBJECT DriverObject) { (void)DriverObject; }

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath) {
    (void)RegistryPath;
    DriverObject->DriverUnload = Unload;
    return STATUS_SUCCESS;
}
