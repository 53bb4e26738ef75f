/* notify.sys: a monitoring driver's notify routines and callbacks, as security and
 * profiling drivers register them. It is linked with /integritycheck, as it must be for
 * PsSetCreateProcessNotifyRoutineEx and ObRegisterCallbacks. DriverEntry registers a process
 * notify routine in both forms (a second registration of one is refused), a thread notify
 * routine, an image notify routine, a registry callback at altitude 385200 (a second one at
 * the same altitude collides) and process handle callbacks; each reports what it sees. The
 * Ex process routine refuses processes named "blocked.exe"; the registry callback refuses
 * writes of a value named "Locked". DriverUnload removes them all, unless export
 * LeaveProcessNotify was called: then the process notify routine stays registered and the
 * next process created runs it where the image was (bug check 0xCE). */
#include "wdm_lite.h"

static ULONG Processes, Images, Writes;
static LARGE_INTEGER Cookie;
static PVOID ObHandle;
static BOOLEAN LeaveNotify;

static VOID NTAPI ProcessNotify(HANDLE ParentId, HANDLE ProcessId, BOOLEAN Create) {
    Processes++;
    DbgPrint("notify: process %u created by %u (%u)\n", (ULONG)(ULONG_PTR)ProcessId,
             (ULONG)(ULONG_PTR)ParentId, (ULONG)Create);
}

static BOOLEAN NamedAs(const UNICODE_STRING *name, const WCHAR *text) {
    USHORT i;
    for (i = 0; i < name->Length / sizeof(WCHAR); i++)
        if (text[i] == 0 || name->Buffer[i] != text[i])
            return FALSE;
    return text[i] == 0;
}

static VOID NTAPI ProcessNotifyEx(PEPROCESS Process, HANDLE ProcessId, PPS_CREATE_NOTIFY_INFO CreateInfo) {
    (void)Process;
    if (CreateInfo == NULL)
        return;
    if (NamedAs(CreateInfo->ImageFileName, L"blocked.exe")) {
        DbgPrint("notify: refusing process %u\n", (ULONG)(ULONG_PTR)ProcessId);
        CreateInfo->CreationStatus = STATUS_ACCESS_DENIED;
    }
}

static VOID NTAPI ThreadNotify(HANDLE ProcessId, HANDLE ThreadId, BOOLEAN Create) {
    DbgPrint("notify: thread %u of %u (%u)\n", (ULONG)(ULONG_PTR)ThreadId,
             (ULONG)(ULONG_PTR)ProcessId, (ULONG)Create);
}

static VOID NTAPI ImageNotify(PUNICODE_STRING FullImageName, HANDLE ProcessId, PIMAGE_INFO ImageInfo) {
    Images++;
    DbgPrint("notify: image %wZ in process %u, system %u, %u bytes\n", FullImageName,
             (ULONG)(ULONG_PTR)ProcessId, (ImageInfo->Properties >> 8) & 1, (ULONG)ImageInfo->ImageSize);
}

static NTSTATUS NTAPI RegistryCallback(PVOID Context, PVOID Argument1, PVOID Argument2) {
    REG_NOTIFY_CLASS kind = (REG_NOTIFY_CLASS)(ULONG_PTR)Argument1;
    (void)Context;
    if (kind == RegNtPreSetValueKey) {
        PREG_SET_VALUE_KEY_INFORMATION info = Argument2;
        DbgPrint("notify: set value %wZ (%u bytes)\n", info->ValueName, info->DataSize);
        if (NamedAs(info->ValueName, L"Locked"))
            return STATUS_ACCESS_DENIED;
    } else if (kind == RegNtPostSetValueKey) {
        PREG_POST_OPERATION_INFORMATION info = Argument2;
        Writes++;
        DbgPrint("notify: value set, status %08X\n", info->Status);
    }
    return STATUS_SUCCESS;
}

static OB_PREOP_CALLBACK_STATUS NTAPI HandlePre(PVOID RegistrationContext, PVOID OperationInformation) {
    (void)RegistrationContext; (void)OperationInformation;
    return 0;  /* OB_PREOP_SUCCESS */
}

__declspec(dllexport) VOID LeaveProcessNotify(VOID) {
    LeaveNotify = TRUE;
}

__declspec(dllexport) ULONG Counts(VOID) {
    return Processes << 16 | Images << 8 | Writes;
}

static VOID NTAPI NotifyUnload(PDRIVER_OBJECT DriverObject) {
    (void)DriverObject;
    if (!LeaveNotify)
        PsSetCreateProcessNotifyRoutine(ProcessNotify, TRUE);
    PsSetCreateProcessNotifyRoutineEx(ProcessNotifyEx, TRUE);
    PsRemoveCreateThreadNotifyRoutine(ThreadNotify);
    PsRemoveLoadImageNotifyRoutine(ImageNotify);
    CmUnRegisterCallback(Cookie);
    ObUnRegisterCallbacks(ObHandle);
    DbgPrint("notify: removed; removing again: %08X\n", PsRemoveLoadImageNotifyRoutine(ImageNotify));
}

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath) {
    UNICODE_STRING altitude;
    LARGE_INTEGER second;
    OB_OPERATION_REGISTRATION operation;
    OB_CALLBACK_REGISTRATION registration;
    NTSTATUS status;
    (void)RegistryPath;
    status = PsSetCreateProcessNotifyRoutine(ProcessNotify, FALSE);
    if (!NT_SUCCESS(status))
        return status;
    DbgPrint("notify: registering it again: %08X\n", PsSetCreateProcessNotifyRoutine(ProcessNotify, FALSE));
    DbgPrint("notify: Ex routine: %08X\n", PsSetCreateProcessNotifyRoutineEx(ProcessNotifyEx, FALSE));
    DbgPrint("notify: thread routine: %08X\n", PsSetCreateThreadNotifyRoutine(ThreadNotify));
    DbgPrint("notify: image routine: %08X\n", PsSetLoadImageNotifyRoutine(ImageNotify));
    RtlInitUnicodeString(&altitude, L"385200");
    status = CmRegisterCallbackEx(RegistryCallback, &altitude, DriverObject, NULL, &Cookie, NULL);
    DbgPrint("notify: registry callback: %08X, cookie %u\n", status, Cookie.LowPart);
    DbgPrint("notify: same altitude: %08X\n",
             CmRegisterCallbackEx(RegistryCallback, &altitude, DriverObject, NULL, &second, NULL));
    operation.ObjectType = &PsProcessType;
    operation.Operations = OB_OPERATION_HANDLE_CREATE | OB_OPERATION_HANDLE_DUPLICATE;
    operation.PreOperation = HandlePre;
    operation.PostOperation = NULL;
    registration.Version = OB_FLT_REGISTRATION_VERSION;
    registration.OperationRegistrationCount = 1;
    RtlInitUnicodeString(&registration.Altitude, L"321000");
    registration.RegistrationContext = NULL;
    registration.OperationRegistration = &operation;
    DbgPrint("notify: object callbacks: %08X\n", ObRegisterCallbacks(&registration, &ObHandle));
    DriverObject->DriverUnload = NotifyUnload;
    return STATUS_SUCCESS;
}
