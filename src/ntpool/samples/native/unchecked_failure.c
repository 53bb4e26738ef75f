/* unchecked_failure.sys: uses an allocation without checking it for NULL. Fine until the
 * allocation fails (Driver Verifier's low resources simulation): then the store is an
 * access violation (0x7E in DriverEntry, a system thread). */
#include "ntddk_lite.h"

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath) {
    ULONG *p = ExAllocatePoolWithTag(NonPagedPool, 64, 'kchU');
    p[4] = 1;  /* BUG: p may be NULL */
    ExFreePoolWithTag(p, 'kchU');
    return STATUS_SUCCESS;
}
