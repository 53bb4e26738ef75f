/* wrong_tag.sys: frees with a tag that is not the allocation's (0xC2, 0x0A). */
#include "ntddk_lite.h"

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath) {
    PVOID p = ExAllocatePoolWithTag(NonPagedPool, 64, 'gaTW');
    if (p == NULL)
        return STATUS_INSUFFICIENT_RESOURCES;
    ExFreePoolWithTag(p, 'gaTX');  /* BUG: allocated as 'WTag' */
    return STATUS_SUCCESS;
}
