/* any_tag.sys: pool tags with bytes above 0x7F, as any ULONG is a tag to a retail kernel.
 * Keeps one allocation per routine so the tracker, dumps and the debugger show them. */
#include "ntddk_lite.h"

#define TAG_DEADBEEF 0xDEADBEEF   /* bit 31 set: a protected tag; no byte printable */
#define TAG_LATIN1 'f\xe9rP'      /* bytes 50 72 e9 66: "Pr" e-acute "f" in Latin-1 */
#define TAG_HIGH_BIG 0x00FF7F80   /* bytes 80 7f ff 00 */

static PVOID Kept[3];

static VOID NTAPI Unload(PDRIVER_OBJECT DriverObject) {
    ExFreePoolWithTag(Kept[0], TAG_DEADBEEF);
    ExFreePoolWithTag(Kept[1], TAG_LATIN1);
    ExFreePoolWithTag(Kept[2], TAG_HIGH_BIG);
}

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath) {
    PVOID scratch;
    Kept[0] = ExAllocatePoolWithTag(NonPagedPool, 64, TAG_DEADBEEF);
    Kept[1] = FsRtlAllocatePoolWithTag(PagedPool, 100, TAG_LATIN1);
    Kept[2] = ExAllocatePoolWithTag(NonPagedPool, 0x2000, TAG_HIGH_BIG);  /* a big allocation */
    /* NdisFreeMemory frees without a tag: fine for this tag, 0xC2/0x0A for a protected one
     * (bit 31 set, as in TAG_DEADBEEF). */
    if (NdisAllocateMemoryWithTag(&scratch, 48, TAG_LATIN1) == NDIS_STATUS_SUCCESS)
        NdisFreeMemory(scratch, 48, 0);
    if (!Kept[0] || !Kept[1] || !Kept[2])
        return STATUS_INSUFFICIENT_RESOURCES;
    DriverObject->DriverUnload = Unload;
    return STATUS_SUCCESS;
}
