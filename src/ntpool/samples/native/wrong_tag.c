/* wrong_tag.sys: frees a protected allocation with a tag that is not its own (0xC2, 0x0A).
   Windows 7 compares tags on free only for protected tags (bit 31, PROTECTED_POOL). */
#include "ntddk_lite.h"

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath) {
    PVOID p = ExAllocatePoolWithTag(NonPagedPool, 64, 'gaTW' | 0x80000000u);
    if (p == NULL)
        return STATUS_INSUFFICIENT_RESOURCES;
    ExFreePoolWithTag(p, 'gaTX');  /* BUG: allocated as 'WTag' */
    return STATUS_SUCCESS;
}
