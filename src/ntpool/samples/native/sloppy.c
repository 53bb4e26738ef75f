/* sloppy.sys: the sample driver with two real bugs, compiled (the C twin of
 * ntpool/samples/sloppy.py).
 * 1. A leak: a cancelled request returns early without freeing its context (SlRq).
 * 2. An overrun: the name buffer has no room for the terminating NUL (SlNm). When the name
 *    fills its chunk exactly, the NUL lands on the next chunk's POOL_HEADER, and the free
 *    that follows is BAD_POOL_HEADER 0x19/0x20. */
#include "ntddk_lite.h"

#define REQUEST_TAG 'qRlS'  /* shows "SlRq" */
#define NAME_TAG 'mNlS'     /* shows "SlNm" */
#define REQUEST_BYTES 480
#define STATUS_CANCELLED ((NTSTATUS)0xC0000120L)

static ULONG Handled;
static PVOID LastNameBuffer;  /* the last name buffer (freed by now), for the debugger */

__declspec(dllexport) NTSTATUS HandleRequest(PCWSTR Name, ULONG Length, BOOLEAN Cancelled) {
    PVOID *request;
    PWSTR buffer;
    request = ExAllocatePoolWithTag(NonPagedPool, REQUEST_BYTES, REQUEST_TAG);
    if (request == NULL)
        return STATUS_INSUFFICIENT_RESOURCES;
    if (Cancelled)
        return STATUS_CANCELLED;  /* BUG: `request` is never freed on this path */
    buffer = ExAllocatePoolWithTag(NonPagedPool, Length, NAME_TAG);
    if (buffer == NULL) {
        ExFreePoolWithTag(request, REQUEST_TAG);
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    memcpy(buffer, Name, Length);
    buffer[Length / sizeof(WCHAR)] = 0;  /* BUG: two bytes past the end of the allocation */
    request[0] = buffer;
    LastNameBuffer = buffer;
    Handled += 1;
    ExFreePoolWithTag(buffer, NAME_TAG);
    ExFreePoolWithTag(request, REQUEST_TAG);
    return STATUS_SUCCESS;
}

__declspec(dllexport) PVOID LastName(void) { return LastNameBuffer; }

__declspec(dllexport) ULONG HandledCount(void) { return Handled; }

static VOID NTAPI Unload(PDRIVER_OBJECT DriverObject) {
    /* nothing tracked, so the leaked requests stay behind */
}

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath) {
    DriverObject->DriverUnload = Unload;
    return STATUS_SUCCESS;
}
