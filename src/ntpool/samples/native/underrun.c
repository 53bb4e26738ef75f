/* underrun.sys: writes the 8 bytes before its allocation (special pool's underrun mode
 * puts the guard page there). */
#include "ntddk_lite.h"

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath) {
    volatile ULONG64 *p = ExAllocatePoolWithTag(NonPagedPool, 64, 'nrdU');
    if (p == NULL)
        return STATUS_INSUFFICIENT_RESOURCES;
    p[-1] = 0;  /* BUG: before the start */
    ExFreePoolWithTag((PVOID)p, 'nrdU');
    return STATUS_SUCCESS;
}
