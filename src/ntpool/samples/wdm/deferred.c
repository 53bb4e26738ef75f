/* deferred.sys: deferred work as WDM drivers write it. DriverEntry makes a device, queues an
 * I/O work item and waits for the event the work item sets (the work item runs at
 * PASSIVE_LEVEL while DriverEntry waits), then takes an in-stack queued spin lock, queues a
 * DPC under it (at DISPATCH_LEVEL: the DPC waits) and releases the lock (the DPC runs then),
 * and frees everything it allocated. Each step prints a line, so the order of effects can be
 * read from the debug output. Export LeaveWorkItem makes DriverUnload queue an executive
 * work item (in pool, tag "Late") whose routine is in the image: it runs after the image is
 * gone (bug check 0xCE), the classic unload bug. Export QueueAtDispatch queues a DPC between
 * wdm.h's inline KeRaiseIrql and KeLowerIrql. */
#include "wdm_lite.h"

#define CONTEXT_TAG 'cfeD'  /* shows "Defc" */

typedef struct _DEFERRED_CONTEXT {
    KEVENT Done;
    KDPC Dpc;
    KSPIN_LOCK Lock;
    KSPIN_LOCK ListLock;  /* the list's: ExInterlocked* take it themselves */
    LIST_ENTRY Records;
    LIST_ENTRY Record;
    ULONG Steps;
} DEFERRED_CONTEXT, *PDEFERRED_CONTEXT;

static PDEVICE_OBJECT Device;
#define LATE_TAG 'etaL'  /* shows "Late" */
static BOOLEAN LeaveLateItem;

static VOID NTAPI WorkRoutine(PDEVICE_OBJECT DeviceObject, PVOID Context) {
    PDEFERRED_CONTEXT context = Context;
    DbgPrint("deferred: work item runs at IRQL %u for device %s\n", (ULONG)KeGetCurrentIrql(),
             DeviceObject == Device ? "ours" : "another");
    context->Steps++;
    KeSetEvent(&context->Done, 0, FALSE);
}

static VOID NTAPI DpcRoutine(PKDPC Dpc, PVOID DeferredContext, PVOID Argument1, PVOID Argument2) {
    PDEFERRED_CONTEXT context = DeferredContext;
    KLOCK_QUEUE_HANDLE handle;
    (void)Dpc;
    DbgPrint("deferred: DPC runs at IRQL %u with %p %p\n", (ULONG)KeGetCurrentIrql(), Argument1,
             Argument2);
    KeAcquireInStackQueuedSpinLockAtDpcLevel(&context->Lock, &handle);
    ExInterlockedInsertTailList(&context->Records, &context->Record, &context->ListLock);
    KeReleaseInStackQueuedSpinLockFromDpcLevel(&handle);
    context->Steps++;
}

static VOID NTAPI LateRoutine(PVOID Parameter) {
    DbgPrint("deferred: the late work item runs\n");
    ExFreePoolWithTag(Parameter, LATE_TAG);
}

static VOID NTAPI DeferredUnload(PDRIVER_OBJECT DriverObject) {
    (void)DriverObject;
    PWORK_QUEUE_ITEM late;
    if (LeaveLateItem) {
        late = ExAllocatePoolWithTag(NonPagedPool, sizeof(*late), LATE_TAG);
        if (late != NULL) {
            ExInitializeWorkItem(late, LateRoutine, late);
            ExQueueWorkItem(late, DelayedWorkQueue);
        }
    }
    IoDeleteDevice(Device);
}

static NTSTATUS NTAPI DeferredCreateClose(PDEVICE_OBJECT DeviceObject, PIRP Irp) {
    (void)DeviceObject;
    Irp->IoStatus.Status = STATUS_SUCCESS;
    Irp->IoStatus.Information = 0;
    IoCompleteRequest(Irp, IO_NO_INCREMENT);
    return STATUS_SUCCESS;
}

static KDPC InlineDpc;
static ULONG InlineDpcRuns;

static VOID NTAPI CountDpc(PKDPC Dpc, PVOID DeferredContext, PVOID Argument1, PVOID Argument2) {
    (void)Dpc; (void)Argument1; (void)Argument2;
    *(PULONG)DeferredContext += 1;
}

/* wdm.h's inline KeRaiseIrql / KeLowerIrql (mov cr8): the DPC queued between them runs at
 * the lowering. Returns the runs seen before it (high 16 bits) and after (low 16). */
__declspec(dllexport) ULONG QueueAtDispatch(VOID) {
    KIRQL old;
    ULONG before;
    KeInitializeDpc(&InlineDpc, CountDpc, &InlineDpcRuns);
    KeRaiseIrql(DISPATCH_LEVEL, &old);
    KeInsertQueueDpc(&InlineDpc, NULL, NULL);
    before = InlineDpcRuns;
    KeLowerIrql(old);
    return before << 16 | InlineDpcRuns;
}

__declspec(dllexport) VOID LeaveWorkItem(VOID) {
    LeaveLateItem = TRUE;
}

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath) {
    UNICODE_STRING name;
    PDEFERRED_CONTEXT context;
    PIO_WORKITEM item;
    KLOCK_QUEUE_HANDLE handle;
    NTSTATUS status;
    (void)RegistryPath;
    RtlInitUnicodeString(&name, L"\\Device\\Deferred");
    status = IoCreateDevice(DriverObject, 0, &name, FILE_DEVICE_UNKNOWN, 0, FALSE, &Device);
    if (!NT_SUCCESS(status))
        return status;
    context = ExAllocatePoolWithTag(NonPagedPool, sizeof(*context), CONTEXT_TAG);
    item = IoAllocateWorkItem(Device);
    if (context == NULL || item == NULL) {
        if (context != NULL)
            ExFreePoolWithTag(context, CONTEXT_TAG);
        if (item != NULL)
            IoFreeWorkItem(item);
        IoDeleteDevice(Device);
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    memset(context, 0, sizeof(*context));
    KeInitializeEvent(&context->Done, NotificationEvent, FALSE);
    KeInitializeSpinLock(&context->Lock);
    KeInitializeSpinLock(&context->ListLock);
    context->Records.Flink = context->Records.Blink = &context->Records;

    IoQueueWorkItem(item, WorkRoutine, DelayedWorkQueue, context);
    DbgPrint("deferred: work item queued, waiting\n");
    status = KeWaitForSingleObject(&context->Done, Executive, KernelMode, FALSE, NULL);
    DbgPrint("deferred: wait returned %08X after %u step(s)\n", status, context->Steps);
    IoFreeWorkItem(item);

    KeInitializeDpc(&context->Dpc, DpcRoutine, context);
    KeAcquireInStackQueuedSpinLock(&context->Lock, &handle);
    DbgPrint("deferred: DPC queued: %u, at IRQL %u\n",
             (ULONG)KeInsertQueueDpc(&context->Dpc, (PVOID)0x11, (PVOID)0x22), (ULONG)KeGetCurrentIrql());
    KeReleaseInStackQueuedSpinLock(&handle);
    DbgPrint("deferred: lock released at IRQL %u after %u step(s), record %s\n",
             (ULONG)KeGetCurrentIrql(), context->Steps,
             context->Records.Flink == &context->Record ? "listed" : "missing");
    KeFlushQueuedDpcs();
    ExFreePoolWithTag(context, CONTEXT_TAG);
    DriverObject->MajorFunction[IRP_MJ_CREATE] = (PVOID)DeferredCreateClose;
    DriverObject->MajorFunction[IRP_MJ_CLOSE] = (PVOID)DeferredCreateClose;
    DriverObject->DriverUnload = DeferredUnload;
    return STATUS_SUCCESS;
}
