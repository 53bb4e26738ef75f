/* double_free.sys: frees the same allocation twice (0xC2, 0x07). The allocation is larger
 * than the lookaside lists take, and a neighbour keeps it from coalescing, so the second
 * free finds its header marked free. */
#include "ntddk_lite.h"

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath) {
    PVOID p = ExAllocatePoolWithTag(NonPagedPool, 1000, 'eerF');
    PVOID neighbour = ExAllocatePoolWithTag(NonPagedPool, 1000, 'eerF');
    if (p == NULL || neighbour == NULL)
        return STATUS_INSUFFICIENT_RESOURCES;
    ExFreePoolWithTag(p, 'eerF');
    ExFreePoolWithTag(p, 'eerF');  /* BUG: already freed */
    ExFreePoolWithTag(neighbour, 'eerF');
    return STATUS_SUCCESS;
}
