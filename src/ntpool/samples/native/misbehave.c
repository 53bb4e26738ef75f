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

static VOID NTAPI Unload(PDRIVER_OBJECT DriverObject) { (void)DriverObject; }

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath) {
    (void)RegistryPath;
    DriverObject->DriverUnload = Unload;
    return STATUS_SUCCESS;
}
