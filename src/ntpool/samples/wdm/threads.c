/* threads.sys: worker threads as WDM drivers run them. DriverEntry creates two system threads
 * and waits for the event the second one sets (they run while it waits): the first returns
 * from its start routine, the second ends with PsTerminateSystemThread. DriverUnload does
 * what drivers do before they unload: for each thread, ObReferenceObjectByHandle of its
 * handle, ZwClose of the handle, KeWaitForSingleObject on the thread object (signalled when
 * it ended), ObDereferenceObject. Export LeaveThread makes DriverUnload create one more
 * thread and return without waiting for it: it starts after the image is gone (0xCE).
 * Export TerminateCaller calls PsTerminateSystemThread from a thread that is not one of
 * those PsCreateSystemThread made. */
#include "wdm_lite.h"

typedef struct _WORKER {
    KEVENT Done;
    ULONG Number;
    BOOLEAN Terminate;
} WORKER, *PWORKER;

static WORKER Workers[3];
static HANDLE Handles[2];
static BOOLEAN LeaveThread;
static PETHREAD Creator;

static VOID NTAPI Worker(PVOID Context) {
    PWORKER worker = Context;
    DbgPrint("threads: worker %u runs at IRQL %u, a system thread: %u, not the creator: %u\n",
             worker->Number, (ULONG)KeGetCurrentIrql(), (ULONG)PsIsSystemThread(PsGetCurrentThread()),
             (ULONG)(PsGetCurrentThread() != Creator));
    KeSetEvent(&worker->Done, 0, FALSE);
    if (worker->Terminate)
        PsTerminateSystemThread(STATUS_SUCCESS);
    DbgPrint("threads: worker %u returns\n", worker->Number);
}

__declspec(dllexport) VOID LeaveThreadRunning(VOID) {
    LeaveThread = TRUE;
}

__declspec(dllexport) NTSTATUS TerminateCaller(VOID) {
    return PsTerminateSystemThread(STATUS_SUCCESS);
}

static VOID NTAPI ThreadsUnload(PDRIVER_OBJECT DriverObject) {
    ULONG i;
    HANDLE late;
    (void)DriverObject;
    for (i = 0; i < 2; i++) {
        PVOID thread;
        NTSTATUS status = ObReferenceObjectByHandle(Handles[i], SYNCHRONIZE, PsThreadType, KernelMode,
                                                    &thread, NULL);
        DbgPrint("threads: reference %u: %08X\n", i, status);
        if (!NT_SUCCESS(status))
            continue;
        ZwClose(Handles[i]);
        status = KeWaitForSingleObject(thread, Executive, KernelMode, FALSE, NULL);
        DbgPrint("threads: thread %u waited: %08X\n", i, status);
        ObDereferenceObject(thread);
    }
    if (LeaveThread) {
        Workers[2].Number = 2;
        KeInitializeEvent(&Workers[2].Done, NotificationEvent, FALSE);
        if (NT_SUCCESS(PsCreateSystemThread(&late, 0x1FFFFF, NULL, NULL, NULL, Worker, &Workers[2])))
            ZwClose(late);
    }
}

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath) {
    CLIENT_ID id;
    NTSTATUS status;
    ULONG i;
    (void)RegistryPath;
    Creator = PsGetCurrentThread();
    for (i = 0; i < 2; i++) {
        Workers[i].Number = i;
        Workers[i].Terminate = i == 1;
        KeInitializeEvent(&Workers[i].Done, NotificationEvent, FALSE);
        status = PsCreateSystemThread(&Handles[i], 0x1FFFFF, NULL, NULL, &id, Worker, &Workers[i]);
        if (!NT_SUCCESS(status))
            return status;
        DbgPrint("threads: created thread %u of process %u\n", (ULONG)(ULONG_PTR)id.UniqueThread,
                 (ULONG)(ULONG_PTR)id.UniqueProcess);
    }
    DbgPrint("threads: waiting\n");
    status = KeWaitForSingleObject(&Workers[1].Done, Executive, KernelMode, FALSE, NULL);
    DbgPrint("threads: wait returned %08X\n", status);
    DriverObject->DriverUnload = ThreadsUnload;
    return STATUS_SUCCESS;
}
