/* sysinfo.sys: what drivers ask about the system they run on, as they ask it (tests/
 * test_sysinfo_native.py drives the exports): the pool tag table poolmon reads, sized with
 * a first ZwQuerySystemInformation and read with a second into pool; the loaded modules;
 * the Windows version; the processors, and work pinned to one processor with the system
 * affinity; the current thread and the caller's previous mode. */
#include "wdm_lite.h"

#define QUERY_TAG 'qSyS'

static VOID NTAPI SysinfoUnload(PDRIVER_OBJECT DriverObject) { (void)DriverObject; }

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath) {
    (void)RegistryPath;
    DriverObject->DriverUnload = SysinfoUnload;
    return STATUS_SUCCESS;
}

/* The buffer a class needs, in pool: asked for its size, then read, growing it while the
 * table grows (the buffer's own allocation may add a tag). NULL if it never fits. */
static PVOID QueryInPool(SYSTEM_INFORMATION_CLASS Class, ULONG *Length) {
    ULONG needed = 0;
    int attempt;
    NTSTATUS status = ZwQuerySystemInformation(Class, NULL, 0, &needed);
    for (attempt = 0; attempt < 4 && status == STATUS_INFO_LENGTH_MISMATCH; attempt++) {
        ULONG size = needed + 2 * sizeof(SYSTEM_POOLTAG);
        PVOID buffer = ExAllocatePoolWithTag(PagedPool, size, QUERY_TAG);
        if (buffer == NULL)
            return NULL;
        status = ZwQuerySystemInformation(Class, buffer, size, &needed);
        if (NT_SUCCESS(status)) {
            *Length = needed;
            return buffer;
        }
        ExFreePoolWithTag(buffer, QUERY_TAG);
    }
    return NULL;
}

/* A tag's NonPagedUsed - or PagedUsed with Paged - as poolmon shows it; ~0 if the query failed,
 * 0 for a tag not in the table. */
__declspec(dllexport) ULONG64 TagBytesInUse(ULONG Tag, BOOLEAN Paged) {
    ULONG length = 0, i;
    ULONG64 bytes = 0;
    PSYSTEM_POOLTAG_INFORMATION info = QueryInPool(SystemPoolTagInformation, &length);
    if (info == NULL)
        return ~0ULL;
    for (i = 0; i < info->Count; i++)
        if (info->TagInfo[i].TagUlong == Tag)
            bytes = Paged ? info->TagInfo[i].PagedUsed : info->TagInfo[i].NonPagedUsed;
    ExFreePoolWithTag(info, QUERY_TAG);
    return bytes;
}

static volatile ULONG Queries;

/* The pool tag table copied into Out (at most OutLength bytes); the status of the query.
 * Counted after the call, so the call is no tail jump: a bug check names this line. */
__declspec(dllexport) NTSTATUS CopyPoolTags(PVOID Out, ULONG OutLength, PULONG ReturnLength) {
    NTSTATUS status = ZwQuerySystemInformation(SystemPoolTagInformation, Out, OutLength, ReturnLength);
    Queries += 1;
    return status;
}

/* The status of a query of any class into a caller's buffer. */
__declspec(dllexport) NTSTATUS Query(ULONG Class, PVOID Out, ULONG OutLength, PULONG ReturnLength) {
    NTSTATUS status = ZwQuerySystemInformation((SYSTEM_INFORMATION_CLASS)Class, Out, OutLength,
                                               ReturnLength);
    Queries += 1;
    return status;
}

/* Where a module is loaded, found by its file name (as a driver finds ntoskrnl's base). */
__declspec(dllexport) PVOID ModuleBase(const char *FileName) {
    ULONG length = 0, i;
    PVOID base = NULL;
    PRTL_PROCESS_MODULES modules = QueryInPool(SystemModuleInformation, &length);
    if (modules == NULL)
        return NULL;
    for (i = 0; i < modules->NumberOfModules && base == NULL; i++) {
        const UCHAR *name = modules->Modules[i].FullPathName + modules->Modules[i].OffsetToFileName;
        ULONG k = 0;
        while (FileName[k] != 0 && name[k] == (UCHAR)FileName[k])
            k++;
        if (FileName[k] == 0 && name[k] == 0)
            base = modules->Modules[i].ImageBase;
    }
    ExFreePoolWithTag(modules, QUERY_TAG);
    return base;
}

/* major << 48 | minor << 32 | build, from RtlGetVersion; the service pack major in *ServicePack. */
__declspec(dllexport) ULONG64 Version(USHORT *ServicePack) {
    RTL_OSVERSIONINFOEXW info;
    memset(&info, 0, sizeof(info));
    info.dwOSVersionInfoSize = sizeof(info);
    if (!NT_SUCCESS(RtlGetVersion(&info)))
        return 0;
    *ServicePack = info.wServicePackMajor;
    return (ULONG64)info.dwMajorVersion << 48 | (ULONG64)info.dwMinorVersion << 32 | info.dwBuildNumber;
}

/* The same numbers from PsGetVersion, and the service pack string's first character. */
__declspec(dllexport) ULONG64 PsVersion(WCHAR *FirstCsdCharacter) {
    ULONG major = 0, minor = 0, build = 0;
    UNICODE_STRING csd;
    PsGetVersion(&major, &minor, &build, &csd);
    *FirstCsdCharacter = csd.Length ? csd.Buffer[0] : 0;
    return (ULONG64)major << 48 | (ULONG64)minor << 32 | build;
}

/* The documented way to ask "this version or later": 1 if Windows is at least
 * Major.Minor with service pack ServicePack, 0 if not; the status otherwise. */
__declspec(dllexport) NTSTATUS IsAtLeast(ULONG Major, ULONG Minor, USHORT ServicePack) {
    RTL_OSVERSIONINFOEXW wanted;
    ULONGLONG conditions = 0;
    NTSTATUS status;
    memset(&wanted, 0, sizeof(wanted));
    wanted.dwOSVersionInfoSize = sizeof(wanted);
    wanted.dwMajorVersion = Major;
    wanted.dwMinorVersion = Minor;
    wanted.wServicePackMajor = ServicePack;
    conditions = VerSetConditionMask(conditions, VER_MAJORVERSION, VER_GREATER_EQUAL);
    conditions = VerSetConditionMask(conditions, VER_MINORVERSION, VER_GREATER_EQUAL);
    conditions = VerSetConditionMask(conditions, VER_SERVICEPACKMAJOR, VER_GREATER_EQUAL);
    status = RtlVerifyVersionInfo(&wanted, VER_MAJORVERSION | VER_MINORVERSION | VER_SERVICEPACKMAJOR,
                                  conditions);
    if (status == STATUS_SUCCESS)
        return 1;
    return status == STATUS_REVISION_MISMATCH ? 0 : status;
}

__declspec(dllexport) ULONG ActiveProcessors(PKAFFINITY Mask) { return KeQueryActiveProcessorCount(Mask); }

__declspec(dllexport) ULONG ProcessorsInGroup(USHORT Group) {
    return KeQueryActiveProcessorCountEx(Group) * 1000 + KeQueryMaximumProcessorCountEx(Group);
}

/* Per-processor work as drivers did it before KeGenericCallDpc: pinned to each processor in
 * turn, an allocation there (from that processor's lookaside lists), the affinity reverted.
 * Out[n] = the processor the thread ran on for processor n; the processor it ends on. */
__declspec(dllexport) ULONG OnEachProcessor(PULONG Out) {
    KAFFINITY active;
    ULONG count = KeQueryActiveProcessorCount(&active), n;
    PROCESSOR_NUMBER number;
    for (n = 0; n < count; n++) {
        KAFFINITY previous = KeSetSystemAffinityThreadEx((KAFFINITY)1 << n);
        PVOID block = ExAllocatePoolWithTag(NonPagedPool, 0x40, QUERY_TAG);
        Out[n] = KeGetCurrentProcessorNumberEx(&number);
        if (number.Number != Out[n] || number.Group != 0)
            Out[n] = 0xFFFFFFFF;
        if (block != NULL)
            ExFreePoolWithTag(block, QUERY_TAG);
        KeRevertToUserAffinityThreadEx(previous);
    }
    return KeGetCurrentProcessorNumberEx(NULL);
}

/* bit 0: the current thread is a system thread; bit 1: the previous mode is KernelMode;
 * bit 2: the thread is not NULL. */
__declspec(dllexport) ULONG ThreadFacts(VOID) {
    PETHREAD thread = PsGetCurrentThread();
    return (PsIsSystemThread(thread) ? 1u : 0u) | (ExGetPreviousMode() == KernelMode ? 2u : 0u) |
           (thread != NULL ? 4u : 0u);
}
