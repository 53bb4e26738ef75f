/* fsfilter.sys: the file-system filter sample, compiled. FsRtlAllocatePoolWithTag never
 * returns NULL; when pool is exhausted it raises STATUS_INSUFFICIENT_RESOURCES, and the
 * documentation tells the driver to wrap it in __try/__except, as here (real x64 SEH). */
#include "ntddk_lite.h"

#define INSTANCE_TAG 'ItlF'        /* shows "FltI" */
#define STREAM_CONTEXT_TAG 'StlF'  /* shows "FltS" */
#define NAME_TAG 'NtlF'            /* shows "FltN" */
#define MAX_OPEN 4096

typedef struct _STREAM_CONTEXT {
    PWSTR Name;
    ULONG Length;
    UCHAR Reserved[188];
} STREAM_CONTEXT, *PSTREAM_CONTEXT;

static PVOID Instance;
static PSTREAM_CONTEXT Open[MAX_OPEN];
static ULONG OpenCount;
static ULONG FailedOpens;

static int IsResourceShortage(NTSTATUS code) {
    return code == STATUS_INSUFFICIENT_RESOURCES ? EXCEPTION_EXECUTE_HANDLER
                                                 : EXCEPTION_CONTINUE_SEARCH;
}

/* IRP_MJ_CREATE: attach a stream context holding the name. */
__declspec(dllexport) NTSTATUS OpenFile(PCWSTR Name, ULONG Length) {
    PSTREAM_CONTEXT context = NULL;
    PWSTR buffer;
    if (OpenCount >= MAX_OPEN)
        return STATUS_INSUFFICIENT_RESOURCES;
    __try {
        context = FsRtlAllocatePoolWithTag(PagedPool, sizeof(STREAM_CONTEXT), STREAM_CONTEXT_TAG);
        buffer = FsRtlAllocatePoolWithTag(PagedPool, Length + sizeof(WCHAR), NAME_TAG);
    } __except (IsResourceShortage(GetExceptionCode())) {
        if (context != NULL)
            ExFreePoolWithTag(context, STREAM_CONTEXT_TAG);  /* undo the half-built open */
        FailedOpens += 1;
        return GetExceptionCode();
    }
    memcpy(buffer, Name, Length);
    buffer[Length / sizeof(WCHAR)] = 0;
    context->Name = buffer;
    context->Length = Length;
    Open[OpenCount++] = context;
    return STATUS_SUCCESS;
}

/* IRP_MJ_CLEANUP: free the oldest open file's context. */
__declspec(dllexport) VOID CloseFile(void) {
    PSTREAM_CONTEXT context;
    ULONG i;
    if (OpenCount == 0)
        return;
    context = Open[0];
    for (i = 1; i < OpenCount; i++)
        Open[i - 1] = Open[i];
    OpenCount -= 1;
    ExFreePoolWithTag(context->Name, NAME_TAG);
    ExFreePoolWithTag(context, STREAM_CONTEXT_TAG);
}

__declspec(dllexport) ULONG FailedOpenCount(void) { return FailedOpens; }

static VOID NTAPI Unload(PDRIVER_OBJECT DriverObject) {
    while (OpenCount)
        CloseFile();
    ExFreePoolWithTag(Instance, INSTANCE_TAG);
    DbgPrint("fsfilter: unloaded, %lu opens failed cleanly\n", FailedOpens);
}

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath) {
    __try {
        Instance = FsRtlAllocatePoolWithTag(NonPagedPool, 256, INSTANCE_TAG);
    } __except (EXCEPTION_EXECUTE_HANDLER) {
        return GetExceptionCode();
    }
    RtlZeroMemory(Instance, 256);
    DriverObject->DriverUnload = Unload;
    DbgPrint("fsfilter: loaded from %wZ\n", RegistryPath);
    return STATUS_SUCCESS;
}
