/* leak.sys: keeps three allocations past its unload (pool tracking: 0xC4, 0x62). */
#include "ntddk_lite.h"

static PVOID Kept[3];

static VOID NTAPI Unload(PDRIVER_OBJECT DriverObject) {
    ExFreePoolWithTag(Kept[0], 'kaeL');  /* BUG: Kept[1] and Kept[2] are forgotten */
}

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath) {
    int i;
    for (i = 0; i < 3; i++)
        Kept[i] = ExAllocatePoolWithTag(PagedPool, 200, 'kaeL');
    DriverObject->DriverUnload = Unload;
    return STATUS_SUCCESS;
}
