/* faults.sys: CPU faults and exceptions, each behind an export. Caught ones return the
 * exception code from __except; uncaught ones are Windows' bug checks. */
#include "ntddk_lite.h"

static const char Constant[] = "read-only";

__declspec(dllexport) ULONG Divide(ULONG a, ULONG b) { return a / b; }
__declspec(dllexport) VOID WriteReadOnly(void) { *(volatile char *)Constant = 'X'; }
__declspec(dllexport) VOID Breakpoint(void) { __debugbreak(); }
__declspec(dllexport) ULONG ReadAddress(ULONG64 address) { return *(volatile ULONG *)address; }

__declspec(dllexport) NTSTATUS ProbeUserBuffer(ULONG64 address, SIZE_T length) {
    __try {
        ProbeForRead((PVOID)address, length, 4);
        return *(volatile ULONG *)address;
    } __except (EXCEPTION_EXECUTE_HANDLER) {
        return GetExceptionCode();
    }
}

__declspec(dllexport) NTSTATUS CaughtReadAddress(ULONG64 address) {
    __try {
        return *(volatile ULONG *)address;
    } __except (EXCEPTION_EXECUTE_HANDLER) {
        return GetExceptionCode();
    }
}

__declspec(dllexport) NTSTATUS CaughtDivide(ULONG a, ULONG b) {
    __try {
        return (NTSTATUS)(a / b);
    } __except (EXCEPTION_EXECUTE_HANDLER) {
        return GetExceptionCode();
    }
}

static ULONG FinallyRan;
static void RaiseInner(NTSTATUS status) {
    __try {
        ExRaiseStatus(status);
    } __finally {
        FinallyRan += 1;
    }
}
__declspec(dllexport) NTSTATUS CaughtRaise(NTSTATUS status) {
    __try {
        RaiseInner(status);
        return STATUS_SUCCESS;
    } __except (GetExceptionCode() == status ? EXCEPTION_EXECUTE_HANDLER
                                             : EXCEPTION_CONTINUE_SEARCH) {
        return GetExceptionCode();
    }
}
__declspec(dllexport) ULONG FinallyCount(void) { return FinallyRan; }
__declspec(dllexport) VOID Raise(NTSTATUS status) { ExRaiseStatus(status); }

__declspec(dllexport) KIRQL RaiseAndReport(KIRQL irql) {
    KIRQL old, now;
    KeRaiseIrql(irql, &old);
    now = KeGetCurrentIrql();
    KeLowerIrql(old);
    return now;
}

__declspec(dllexport) ULONG64 Lookaside(ULONG rounds) {
    static NPAGED_LOOKASIDE_LIST list;
    PVOID entries[8];
    ULONG r, i;
    ExInitializeNPagedLookasideList(&list, NULL, NULL, 0, 48, 'kooL', 0);
    for (r = 0; r < rounds; r++) {
        for (i = 0; i < 8; i++)
            entries[i] = ExAllocateFromNPagedLookasideList(&list);
        for (i = 0; i < 8; i++)
            ExFreeToNPagedLookasideList(&list, entries[i]);
    }
    r = list.TotalAllocates;
    i = list.AllocateMisses;
    ExDeleteNPagedLookasideList(&list);
    return ((ULONG64)r << 32) | i;
}

__declspec(dllexport) INT Format(char *buffer, SIZE_T size) {
    return _snprintf(buffer, size, "%s=%d %05x %ls %p", "n", -42, 0xbeef, L"wide",
                     (PVOID)0x1234);
}

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath) {
    return STATUS_SUCCESS;
}

/* A table of pointers: the image carries base relocations for it. */
static const char *const Messages[] = {"divide", "raise"};
__declspec(dllexport) PCSTR Message(ULONG i) { return Messages[i & 1]; }

/* Never returns: what a hung driver looks like. */
__declspec(dllexport) VOID Hang(void) { for (;;) __asm__ volatile(""); }

/* Recurses without end: a kernel stack overflow (0x7F, 8). */
__declspec(dllexport) ULONG Recurse(ULONG depth) {
    volatile UCHAR frame[512];
    frame[0] = (UCHAR)depth;
    if (depth == 0xFFFFFFFF)  /* never: every call recurses */
        return 0;
    return Recurse(depth + 1) + frame[0];
}

/* A lookaside list with the driver's own Allocate and Free: ExDeleteNPagedLookasideList
 * calls Free (machine code) from inside ntpool, a nested call. */
static ULONG CustomFrees;
static PVOID NTAPI CustomAllocate(POOL_TYPE type, SIZE_T size, ULONG tag) {
    return ExAllocatePoolWithTag(type, size, tag);
}
static VOID NTAPI CustomFree(PVOID buffer) {
    CustomFrees += 1;
    ExFreePool(buffer);
}
__declspec(dllexport) ULONG NestedFree(void) {
    static NPAGED_LOOKASIDE_LIST list;
    PVOID entries[3];
    ULONG i;
    ExInitializeNPagedLookasideList(&list, CustomAllocate, CustomFree, 0, 64, 'tseN', 0);
    for (i = 0; i < 3; i++)
        entries[i] = ExAllocateFromNPagedLookasideList(&list);
    for (i = 0; i < 3; i++)
        ExFreeToNPagedLookasideList(&list, entries[i]);
    ExDeleteNPagedLookasideList(&list);  /* calls CustomFree for each entry it holds */
    return CustomFrees;
}

/* The same with a LOOKASIDE_LIST_EX: AllocateEx and FreeEx are handed the list, which they
 * check; the result counts FreeEx calls that got it (the list holds 4, the rest go to FreeEx
 * at once; delete frees the 4 it holds). */
static ULONG CustomFreesEx;
static PVOID NTAPI CustomAllocateEx(POOL_TYPE type, SIZE_T size, ULONG tag,
                                    PLOOKASIDE_LIST_EX lookaside) {
    return lookaside->L.Tag == tag ? ExAllocatePoolWithTag(type, size, tag) : NULL;
}
static VOID NTAPI CustomFreeEx(PVOID buffer, PLOOKASIDE_LIST_EX lookaside) {
    if (lookaside->L.Tag == 'xEtN')
        CustomFreesEx += 1;
    ExFreePool(buffer);
}
__declspec(dllexport) ULONG NestedFreeEx(void) {
    static LOOKASIDE_LIST_EX list;
    PVOID entries[6];
    ULONG i;
    if (ExInitializeLookasideListEx(&list, CustomAllocateEx, CustomFreeEx, NonPagedPoolNx, 0, 64,
                                    'xEtN', 0) != 0)
        return 0xFFFFFFFF;
    for (i = 0; i < 6; i++)
        if ((entries[i] = ExAllocateFromLookasideListEx(&list)) == NULL)
            return 0xFFFFFFFE;
    for (i = 0; i < 6; i++)
        ExFreeToLookasideListEx(&list, entries[i]);
    ExFlushLookasideListEx(&list);  /* FreeEx for the 4 it holds */
    ExDeleteLookasideListEx(&list);
    return CustomFreesEx;
}
