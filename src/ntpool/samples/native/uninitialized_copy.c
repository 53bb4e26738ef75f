/* uninitialized_copy.sys: pool memory comes back uninitialized, and this driver copies a
 * 64-byte allocation to a user-mode buffer after writing only its first 16 bytes: 48 bytes
 * of whatever the pool held before go out to user mode (an information disclosure, the
 * bug class Bochspwn Reloaded found in Windows). Driver Verifier's uninitialized-memory
 * option in ntpool sees the driver's own stores and catches the copy. */
#include "ntddk_lite.h"

#define REPLY_TAG 'ylpR'  /* shows "Rply" */
#define REPLY_BYTES 64

typedef struct _REPLY {
    ULONG Version;
    ULONG Flags;
    ULONG64 Sequence;
    UCHAR Reserved[REPLY_BYTES - 16];  /* BUG: never written */
} REPLY, *PREPLY;

static ULONG64 Sequence;

/* Fill a reply and copy all of it to the caller's buffer (a METHOD_NEITHER output). */
__declspec(dllexport) NTSTATUS QueryReply(PVOID UserBuffer) {
    PREPLY reply = ExAllocatePoolWithTag(NonPagedPool, sizeof(REPLY), REPLY_TAG);
    if (reply == NULL)
        return STATUS_INSUFFICIENT_RESOURCES;
    reply->Version = 1;
    reply->Flags = 0;
    reply->Sequence = ++Sequence;
    memcpy(UserBuffer, reply, sizeof(REPLY));  /* 48 bytes never written go out */
    ExFreePoolWithTag(reply, REPLY_TAG);
    return STATUS_SUCCESS;
}

/* The fixed version: the whole reply is written first. */
__declspec(dllexport) NTSTATUS QueryReplyZeroed(PVOID UserBuffer) {
    PREPLY reply = ExAllocatePoolWithTag(NonPagedPool, sizeof(REPLY), REPLY_TAG);
    ULONG i;
    if (reply == NULL)
        return STATUS_INSUFFICIENT_RESOURCES;
    for (i = 0; i < sizeof(reply->Reserved); i++)
        ((volatile UCHAR *)reply->Reserved)[i] = 0;  /* stores by the driver's own code */
    reply->Version = 1;
    reply->Flags = 0;
    reply->Sequence = ++Sequence;
    memcpy(UserBuffer, reply, sizeof(REPLY));
    ExFreePoolWithTag(reply, REPLY_TAG);
    return STATUS_SUCCESS;
}

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath) {
    return STATUS_SUCCESS;
}
