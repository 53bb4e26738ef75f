/* fsfilter.sys: the file-system filter sample, compiled (the C twin of
 * ntpool/samples/fs_filter.py). FsRtlAllocatePoolWithTag never returns NULL; when pool is
 * exhausted it raises STATUS_INSUFFICIENT_RESOURCES, and the documentation tells the driver
 * to wrap it in __try/__except, as here (real x64 SEH). A failed open is failed cleanly:
 * nothing half-built is left behind. */
#include "ntddk_lite.h"

#define INSTANCE_TAG 'ItlF'        /* shows "FltI": one per attached volume, nonpaged */
#define STREAM_CONTEXT_TAG 'StlF'  /* shows "FltS": one per open file, paged */
#define NAME_TAG 'NtlF'            /* shows "FltN": the file's name, paged */
#define INSTANCE_BYTES 256

typedef struct _STREAM_CONTEXT {
    LIST_ENTRY Link;  /* the open files, oldest first */
    PWSTR Name;
    ULONG Length;
    UCHAR Reserved[172];
} STREAM_CONTEXT, *PSTREAM_CONTEXT;  /* 200 bytes */

static PVOID Instance;
static LIST_ENTRY OpenFiles;
static ULONG OpenCount;
static ULONG FailedOpens;

static int IsResourceShortage(NTSTATUS code) {
    return code == STATUS_INSUFFICIENT_RESOURCES ? EXCEPTION_EXECUTE_HANDLER
                                                 : EXCEPTION_CONTINUE_SEARCH;
}

/* IRP_MJ_CREATE: attach a stream context holding the name (Length bytes of UTF-16). */
__declspec(dllexport) NTSTATUS OpenFile(PCWSTR Name, ULONG Length) {
    PSTREAM_CONTEXT context = NULL;
    PWSTR buffer;
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
    context->Link.Flink = &OpenFiles;  /* InsertTailList */
    context->Link.Blink = OpenFiles.Blink;
    OpenFiles.Blink->Flink = &context->Link;
    OpenFiles.Blink = &context->Link;
    OpenCount += 1;
    return STATUS_SUCCESS;
}

/* IRP_MJ_CLEANUP: free the stream context of the oldest open file. */
__declspec(dllexport) VOID CloseFile(void) {
    PLIST_ENTRY entry = OpenFiles.Flink;
    PSTREAM_CONTEXT context;
    if (entry == &OpenFiles)
        return;
    OpenFiles.Flink = entry->Flink;  /* RemoveHeadList */
    entry->Flink->Blink = &OpenFiles;
    OpenCount -= 1;
    context = (PSTREAM_CONTEXT)entry;
    ExFreePoolWithTag(context->Name, NAME_TAG);
    ExFreePoolWithTag(context, STREAM_CONTEXT_TAG);
}

__declspec(dllexport) ULONG OpenFileCount(void) { return OpenCount; }

__declspec(dllexport) ULONG FailedOpenCount(void) { return FailedOpens; }

static VOID NTAPI Unload(PDRIVER_OBJECT DriverObject) {
    while (OpenCount)
        CloseFile();
    ExFreePoolWithTag(Instance, INSTANCE_TAG);
    DbgPrint("fsfilter: unloaded, %lu opens failed cleanly\n", FailedOpens);
}

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath) {
    OpenFiles.Flink = OpenFiles.Blink = &OpenFiles;
    __try {
        Instance = FsRtlAllocatePoolWithTag(NonPagedPool, INSTANCE_BYTES, INSTANCE_TAG);
    } __except (EXCEPTION_EXECUTE_HANDLER) {
        return GetExceptionCode();
    }
    RtlZeroMemory(Instance, INSTANCE_BYTES);
    DriverObject->DriverUnload = Unload;
    DbgPrint("fsfilter: loaded from %wZ\n", RegistryPath);
    return STATUS_SUCCESS;
}
