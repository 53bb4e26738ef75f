/* lookaside_unload.sys: keeps a lookaside list in its image and unloads without deleting
 * it. The list stays linked on ExNPagedLookasideListHead; the next scan of the nonpaged
 * lists (ExAdjustLookasideDepth) reads where the image was: bug check 0xD4,
 * SYSTEM_SCAN_AT_RAISED_IRQL_CAUGHT_IMPROPER_DRIVER_UNLOAD. */
#include "ntddk_lite.h"

static NPAGED_LOOKASIDE_LIST List;

static VOID NTAPI Unload(PDRIVER_OBJECT DriverObject) {
    /* BUG: no ExDeleteNPagedLookasideList(&List) */
}

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath) {
    PVOID entry;
    ExInitializeNPagedLookasideList(&List, NULL, NULL, 0, 96, 'nUkL', 0);
    entry = ExAllocateFromNPagedLookasideList(&List);
    if (entry != NULL)
        ExFreeToNPagedLookasideList(&List, entry);
    DriverObject->DriverUnload = Unload;
    return STATUS_SUCCESS;
}
