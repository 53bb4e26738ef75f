/* use_after_free.sys: writes into an allocation after freeing it. */
#include "ntddk_lite.h"

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath) {
    volatile ULONG *p = ExAllocatePoolWithTag(NonPagedPool, 64, 'fAsU');
    if (p == NULL)
        return STATUS_INSUFFICIENT_RESOURCES;
    ExFreePoolWithTag((PVOID)p, 'fAsU');
    p[0] = 1;  /* BUG: the memory is freed */
    return STATUS_SUCCESS;
}
