/* bench.sys: the native loop `ntpool bench` times, ExAllocatePoolWithTag +
 * ExFreePoolWithTag pairs from machine code. */
#include "ntddk_lite.h"

__declspec(dllexport) ULONG AllocateAndFree(ULONG Count, SIZE_T Bytes) {
    ULONG i, failures = 0;
    for (i = 0; i < Count; i++) {
        PVOID p = ExAllocatePoolWithTag(NonPagedPool, Bytes, 'hcnB');
        if (p == NULL) {
            failures++;
            continue;
        }
        ExFreePoolWithTag(p, 'hcnB');
    }
    return failures;
}

/* The same loop with nothing to call: what the CPU costs alone. */
__declspec(dllexport) ULONG64 Spin(ULONG Count) {
    volatile ULONG64 sum = 0;
    ULONG i;
    for (i = 0; i < Count; i++)
        sum += i;
    return sum;
}

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath) {
    return STATUS_SUCCESS;
}
