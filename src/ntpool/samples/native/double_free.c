/* double_free.sys: frees the same allocation twice (0xC2, 0x07). */
#include "ntddk_lite.h"

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath) {
    PVOID p = ExAllocatePoolWithTag(NonPagedPool, 64, 'eerF');
    if (p == NULL)
        return STATUS_INSUFFICIENT_RESOURCES;
    ExFreePoolWithTag(p, 'eerF');
    ExFreePoolWithTag(p, 'eerF');  /* BUG: already freed */
    return STATUS_SUCCESS;
}
