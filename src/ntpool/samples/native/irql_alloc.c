/* irql_alloc.sys: raises IRQL to DISPATCH_LEVEL (KeRaiseIrql, a mov to CR8 inlined from
 * wdm.h) and allocates paged pool there (0xC2, 0x08). */
#include "ntddk_lite.h"

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath) {
    KIRQL old;
    PVOID p;
    KeRaiseIrql(DISPATCH_LEVEL, &old);
    p = ExAllocatePoolWithTag(PagedPool, 64, 'lqrI');  /* BUG: paged pool at DISPATCH_LEVEL */
    KeLowerIrql(old);
    if (p)
        ExFreePoolWithTag(p, 'lqrI');
    return STATUS_SUCCESS;
}
