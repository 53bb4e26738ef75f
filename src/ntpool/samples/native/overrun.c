/* overrun.sys: writes past the end of a 100-byte allocation, into its neighbour's
 * POOL_HEADER. Without Driver Verifier the pool's own header check finds it at the free
 * (0x19, 0x20); under special pool the store itself faults on the guard page (0xD6) and
 * names this line. */
#include "ntddk_lite.h"

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath) {
    PVOID neighbour = ExAllocatePoolWithTag(NonPagedPool, 100, 'nrvO');
    volatile UCHAR *p = ExAllocatePoolWithTag(NonPagedPool, 100, 'nrvO');
    int i;
    if (p == NULL || neighbour == NULL)
        return STATUS_INSUFFICIENT_RESOURCES;
    for (i = 0; i < 128; i++)
        p[i] = 0x41;  /* BUG: 28 bytes past the end */
    ExFreePoolWithTag((PVOID)p, 'nrvO');
    ExFreePoolWithTag(neighbour, 'nrvO');
    return STATUS_SUCCESS;
}
