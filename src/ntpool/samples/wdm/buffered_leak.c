/* buffered_leak.sys: a METHOD_BUFFERED IOCTL that answers with a 64-byte statistics record
 * but fills only its first 16 bytes, and reports all 64 in IoStatus.Information. The I/O
 * manager copies Information bytes of the SystemBuffer back to the caller, and a
 * SystemBuffer comes from pool uninitialized: 48 bytes of old pool go to user mode (the bug
 * class Bochspwn Reloaded found in Windows' own drivers). IOCTL_STATS_ZEROED is the fixed
 * answer: the record is zeroed before it is filled. */
#include "wdm_lite.h"

#define STATS_TYPE 40001
#define IOCTL_STATS CTL_CODE(STATS_TYPE, 0x800, METHOD_BUFFERED, FILE_ANY_ACCESS)
#define IOCTL_STATS_ZEROED CTL_CODE(STATS_TYPE, 0x801, METHOD_BUFFERED, FILE_ANY_ACCESS)

typedef struct _STATS {
    ULONG Version;
    ULONG Requests;
    ULONG64 BytesMoved;
    UCHAR Reserved[48];  /* BUG (IOCTL_STATS): never written */
} STATS, *PSTATS;

static ULONG Requests;

static NTSTATUS NTAPI StatsCreateClose(PDEVICE_OBJECT DeviceObject, PIRP Irp) {
    (void)DeviceObject;
    Irp->IoStatus.Status = STATUS_SUCCESS;
    Irp->IoStatus.Information = 0;
    IoCompleteRequest(Irp, IO_NO_INCREMENT);
    return STATUS_SUCCESS;
}

static NTSTATUS NTAPI StatsDeviceControl(PDEVICE_OBJECT DeviceObject, PIRP Irp) {
    PIO_STACK_LOCATION irpSp = IoGetCurrentIrpStackLocation(Irp);
    ULONG code = irpSp->Parameters.DeviceIoControl.IoControlCode;
    PSTATS stats = Irp->AssociatedIrp.SystemBuffer;
    NTSTATUS status = STATUS_SUCCESS;
    (void)DeviceObject;
    Irp->IoStatus.Information = 0;
    if ((code != IOCTL_STATS && code != IOCTL_STATS_ZEROED)) {
        status = STATUS_INVALID_DEVICE_REQUEST;
    } else if (irpSp->Parameters.DeviceIoControl.OutputBufferLength < sizeof(STATS)) {
        status = STATUS_BUFFER_TOO_SMALL;
    } else {
        if (code == IOCTL_STATS_ZEROED)
            RtlZeroMemory(stats, sizeof(STATS));
        stats->Version = 1;
        stats->Requests = ++Requests;
        stats->BytesMoved = (ULONG64)Requests * 512;
        Irp->IoStatus.Information = sizeof(STATS);  /* all 64 bytes go back to the caller */
    }
    Irp->IoStatus.Status = status;
    IoCompleteRequest(Irp, IO_NO_INCREMENT);
    return status;
}

static VOID NTAPI StatsUnload(PDRIVER_OBJECT DriverObject) {
    if (DriverObject->DeviceObject != NULL)
        IoDeleteDevice(DriverObject->DeviceObject);
}

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath) {
    UNICODE_STRING name;
    PDEVICE_OBJECT device = NULL;
    NTSTATUS status;
    (void)RegistryPath;
    RtlInitUnicodeString(&name, L"\\Device\\Stats");
    status = IoCreateDevice(DriverObject, 0, &name, FILE_DEVICE_UNKNOWN,
                            FILE_DEVICE_SECURE_OPEN, FALSE, &device);
    if (!NT_SUCCESS(status))
        return status;
    DriverObject->MajorFunction[IRP_MJ_CREATE] = (PVOID)StatsCreateClose;
    DriverObject->MajorFunction[IRP_MJ_CLOSE] = (PVOID)StatsCreateClose;
    DriverObject->MajorFunction[IRP_MJ_DEVICE_CONTROL] = (PVOID)StatsDeviceControl;
    DriverObject->DriverUnload = StatsUnload;
    return STATUS_SUCCESS;
}
