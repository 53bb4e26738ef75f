/* event.sys: a mirror of the WDK's event sample (general/event). An application asks to be
 * told when a time has passed, one of two ways (IOCTL_REGISTER_EVENT, METHOD_BUFFERED):
 * EVENT_BASED passes an event handle, which the driver references and signals from a timer
 * DPC; IRP_BASED leaves the IRP pending, and the DPC completes it. Closing the handle
 * (IRP_MJ_CLEANUP) cancels what is still queued, as the sample does. */
#include "wdm_lite.h"

#define IOCTL_REGISTER_EVENT CTL_CODE(FILE_DEVICE_UNKNOWN, 0x800, METHOD_BUFFERED, FILE_ANY_ACCESS)
#define IRP_BASED 0
#define EVENT_BASED 1
#define CONTEXT_TAG 'tvEN'  /* shows "NEvt" */
#define EVENT_MODIFY_STATE 0x0002

typedef struct _REGISTER_EVENT {
    ULONG Type;
    HANDLE hEvent;
    LARGE_INTEGER DueTime;  /* negative: relative, in 100 ns units */
} REGISTER_EVENT, *PREGISTER_EVENT;

typedef struct _NOTIFY_RECORD {
    ULONG Type;
    PKEVENT Event;
    PIRP PendingIrp;
    KDPC Dpc;
    KTIMER Timer;
    PVOID FileObject;
    BOOLEAN Queued;
} NOTIFY_RECORD, *PNOTIFY_RECORD;

#define MAX_RECORDS 16
static PNOTIFY_RECORD Records[MAX_RECORDS];
static PDEVICE_OBJECT Device;

static VOID NTAPI NotifyDpc(PKDPC Dpc, PVOID DeferredContext, PVOID Argument1, PVOID Argument2) {
    PNOTIFY_RECORD record = DeferredContext;
    ULONG i;
    (void)Dpc; (void)Argument1; (void)Argument2;
    if (record->Type == EVENT_BASED) {
        DbgPrint("event: timer fired, signalling the event\n");
        KeSetEvent(record->Event, 0, FALSE);
        ObDereferenceObject(record->Event);
    } else {
        DbgPrint("event: timer fired, completing the pending IRP\n");
        record->PendingIrp->IoStatus.Status = STATUS_SUCCESS;
        record->PendingIrp->IoStatus.Information = 0;
        IoCompleteRequest(record->PendingIrp, IO_NO_INCREMENT);
    }
    for (i = 0; i < MAX_RECORDS; i++)
        if (Records[i] == record)
            Records[i] = NULL;
    ExFreePoolWithTag(record, CONTEXT_TAG);
}

static NTSTATUS Complete(PIRP Irp, NTSTATUS status) {
    Irp->IoStatus.Status = status;
    Irp->IoStatus.Information = 0;
    IoCompleteRequest(Irp, IO_NO_INCREMENT);
    return status;
}

static NTSTATUS NTAPI EventCreateClose(PDEVICE_OBJECT DeviceObject, PIRP Irp) {
    (void)DeviceObject;
    return Complete(Irp, STATUS_SUCCESS);
}

static NTSTATUS NTAPI EventCleanup(PDEVICE_OBJECT DeviceObject, PIRP Irp) {
    PVOID file = IoGetCurrentIrpStackLocation(Irp)->FileObject;
    ULONG i;
    (void)DeviceObject;
    for (i = 0; i < MAX_RECORDS; i++) {
        PNOTIFY_RECORD record = Records[i];
        if (record == NULL || record->FileObject != file)
            continue;
        if (KeCancelTimer(&record->Timer)) {
            DbgPrint("event: cancelled a queued notification\n");
            if (record->Type == EVENT_BASED) {
                ObDereferenceObject(record->Event);
            } else {
                record->PendingIrp->IoStatus.Status = STATUS_CANCELLED;
                record->PendingIrp->IoStatus.Information = 0;
                IoCompleteRequest(record->PendingIrp, IO_NO_INCREMENT);
            }
            Records[i] = NULL;
            ExFreePoolWithTag(record, CONTEXT_TAG);
        }
    }
    return Complete(Irp, STATUS_SUCCESS);
}

static NTSTATUS RegisterEvent(PIRP Irp, PIO_STACK_LOCATION irpSp) {
    PREGISTER_EVENT input = Irp->AssociatedIrp.SystemBuffer;
    PNOTIFY_RECORD record;
    NTSTATUS status;
    ULONG slot;
    if (irpSp->Parameters.DeviceIoControl.InputBufferLength < sizeof(REGISTER_EVENT))
        return Complete(Irp, STATUS_INVALID_PARAMETER);
    for (slot = 0; slot < MAX_RECORDS && Records[slot] != NULL; slot++)
        ;
    if (slot == MAX_RECORDS)
        return Complete(Irp, STATUS_DEVICE_BUSY);
    record = ExAllocatePoolWithTag(NonPagedPool, sizeof(NOTIFY_RECORD), CONTEXT_TAG);
    if (record == NULL)
        return Complete(Irp, STATUS_INSUFFICIENT_RESOURCES);
    memset(record, 0, sizeof(*record));
    record->Type = input->Type;
    record->FileObject = irpSp->FileObject;
    KeInitializeDpc(&record->Dpc, NotifyDpc, record);
    KeInitializeTimer(&record->Timer);
    if (input->Type == EVENT_BASED) {
        status = ObReferenceObjectByHandle(input->hEvent, EVENT_MODIFY_STATE, *ExEventObjectType,
                                           Irp->RequestorMode, (PVOID *)&record->Event, NULL);
        if (!NT_SUCCESS(status)) {
            DbgPrint("event: bad event handle (%08X)\n", status);
            ExFreePoolWithTag(record, CONTEXT_TAG);
            return Complete(Irp, status);
        }
        Records[slot] = record;
        KeSetTimer(&record->Timer, input->DueTime, &record->Dpc);
        DbgPrint("event: event-based notification queued\n");
        return Complete(Irp, STATUS_SUCCESS);
    }
    if (input->Type != IRP_BASED) {
        ExFreePoolWithTag(record, CONTEXT_TAG);
        return Complete(Irp, STATUS_INVALID_PARAMETER);
    }
    record->PendingIrp = Irp;
    Records[slot] = record;
    IoMarkIrpPending(Irp);
    KeSetTimer(&record->Timer, input->DueTime, &record->Dpc);
    DbgPrint("event: IRP-based notification queued, the IRP is pending\n");
    return STATUS_PENDING;
}

static NTSTATUS NTAPI EventDeviceControl(PDEVICE_OBJECT DeviceObject, PIRP Irp) {
    PIO_STACK_LOCATION irpSp = IoGetCurrentIrpStackLocation(Irp);
    (void)DeviceObject;
    if (irpSp->Parameters.DeviceIoControl.IoControlCode == IOCTL_REGISTER_EVENT)
        return RegisterEvent(Irp, irpSp);
    return Complete(Irp, STATUS_INVALID_DEVICE_REQUEST);
}

static VOID NTAPI EventUnload(PDRIVER_OBJECT DriverObject) {
    UNICODE_STRING link;
    (void)DriverObject;
    RtlInitUnicodeString(&link, L"\\DosDevices\\Event_Sample");
    IoDeleteSymbolicLink(&link);
    IoDeleteDevice(Device);
}

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath) {
    UNICODE_STRING name, link;
    NTSTATUS status;
    (void)RegistryPath;
    RtlInitUnicodeString(&name, L"\\Device\\Event_Sample");
    status = IoCreateDevice(DriverObject, 0, &name, FILE_DEVICE_UNKNOWN, FILE_DEVICE_SECURE_OPEN,
                            FALSE, &Device);
    if (!NT_SUCCESS(status))
        return status;
    RtlInitUnicodeString(&link, L"\\DosDevices\\Event_Sample");
    status = IoCreateSymbolicLink(&link, &name);
    if (!NT_SUCCESS(status)) {
        IoDeleteDevice(Device);
        return status;
    }
    Device->Flags |= DO_BUFFERED_IO;
    Device->Flags &= ~DO_DEVICE_INITIALIZING;
    DriverObject->MajorFunction[IRP_MJ_CREATE] = (PVOID)EventCreateClose;
    DriverObject->MajorFunction[IRP_MJ_CLOSE] = (PVOID)EventCreateClose;
    DriverObject->MajorFunction[IRP_MJ_CLEANUP] = (PVOID)EventCleanup;
    DriverObject->MajorFunction[IRP_MJ_DEVICE_CONTROL] = (PVOID)EventDeviceControl;
    DriverObject->DriverUnload = EventUnload;
    return STATUS_SUCCESS;
}
