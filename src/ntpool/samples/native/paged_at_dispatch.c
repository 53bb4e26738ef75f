/* paged_at_dispatch.sys: touches paged pool while holding a spin lock. It works until the
 * page is out; Driver Verifier's force IRQL checking trims pageable memory whenever the
 * driver raises IRQL, so the touch faults at once (0xD1). */
#include "ntddk_lite.h"

static KSPIN_LOCK Lock;

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath) {
    volatile ULONG *table = ExAllocatePoolWithTag(PagedPool, 256, 'psiD');
    KIRQL old;
    if (table == NULL)
        return STATUS_INSUFFICIENT_RESOURCES;
    table[0] = 1;
    KeInitializeSpinLock(&Lock);
    KeAcquireSpinLock(&Lock, &old);
    table[1] = 2;  /* BUG: paged memory at DISPATCH_LEVEL */
    KeReleaseSpinLock(&Lock, old);
    ExFreePoolWithTag((PVOID)table, 'psiD');
    return STATUS_SUCCESS;
}
