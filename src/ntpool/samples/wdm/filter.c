/* filter.sys: a legacy (non-PnP) filter driver, in the shape of the WDK's legacy filter
 * samples: it finds the target device by name (IoGetDeviceObjectPointer), attaches a device
 * of its own on top of it (IoAttachDeviceToDeviceStack), passes every request down, and
 * watches device controls come back through a completion routine. Its unload detaches and
 * deletes what it made. Load it after ioctl.sys: it filters \Device\SIOCTL. */
#include "wdm_lite.h"

typedef struct _FILTER_EXTENSION {
    PDEVICE_OBJECT LowerDevice;
    PFILE_OBJECT TargetFile;
    ULONG Passed;
    ULONG Completed;
} FILTER_EXTENSION, *PFILTER_EXTENSION;

static PDEVICE_OBJECT FilterDevice;

static NTSTATUS NTAPI FilterPass(PDEVICE_OBJECT DeviceObject, PIRP Irp) {
    PFILTER_EXTENSION extension = DeviceObject->DeviceExtension;
    extension->Passed += 1;
    IoSkipCurrentIrpStackLocation(Irp);
    return IoCallDriver(extension->LowerDevice, Irp);
}

static NTSTATUS NTAPI FilterControlCompleted(PDEVICE_OBJECT DeviceObject, PIRP Irp, PVOID Context) {
    PFILTER_EXTENSION extension = Context;
    (void)DeviceObject;
    extension->Completed += 1;
    DbgPrint("filter: IOCTL completed with %08X, %u bytes\n", Irp->IoStatus.Status,
             (ULONG)Irp->IoStatus.Information);
    if (Irp->PendingReturned)
        IoMarkIrpPending(Irp);
    return STATUS_SUCCESS;  /* STATUS_CONTINUE_COMPLETION */
}

static NTSTATUS NTAPI FilterDeviceControl(PDEVICE_OBJECT DeviceObject, PIRP Irp) {
    PFILTER_EXTENSION extension = DeviceObject->DeviceExtension;
    extension->Passed += 1;
    IoCopyCurrentIrpStackLocationToNext(Irp);
    IoSetCompletionRoutine(Irp, FilterControlCompleted, extension, TRUE, TRUE, TRUE);
    return IoCallDriver(extension->LowerDevice, Irp);
}

static VOID NTAPI FilterUnload(PDRIVER_OBJECT DriverObject) {
    PFILTER_EXTENSION extension = FilterDevice->DeviceExtension;
    (void)DriverObject;
    DbgPrint("filter: %u requests passed, %u device controls completed\n", extension->Passed,
             extension->Completed);
    IoDetachDevice(extension->LowerDevice);
    ObDereferenceObject(extension->TargetFile);
    IoDeleteDevice(FilterDevice);
}

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath) {
    UNICODE_STRING targetName;
    PFILE_OBJECT file;
    PDEVICE_OBJECT target;
    PFILTER_EXTENSION extension;
    NTSTATUS status;
    ULONG i;
    (void)RegistryPath;

    RtlInitUnicodeString(&targetName, L"\\Device\\SIOCTL");
    status = IoGetDeviceObjectPointer(&targetName, 0x1F01FF, &file, &target);
    if (!NT_SUCCESS(status)) {
        DbgPrint("filter: no %wZ to filter (%08X)\n", &targetName, status);
        return status;
    }
    status = IoCreateDevice(DriverObject, sizeof(FILTER_EXTENSION), NULL, target->DeviceType,
                            target->Characteristics, FALSE, &FilterDevice);
    if (!NT_SUCCESS(status)) {
        ObDereferenceObject(file);
        return status;
    }
    extension = FilterDevice->DeviceExtension;
    extension->TargetFile = file;
    extension->LowerDevice = IoAttachDeviceToDeviceStack(FilterDevice, target);
    FilterDevice->Flags |= extension->LowerDevice->Flags & (DO_BUFFERED_IO | DO_DIRECT_IO);
    FilterDevice->Flags &= ~DO_DEVICE_INITIALIZING;
    for (i = 0; i <= IRP_MJ_MAXIMUM_FUNCTION; i++)
        DriverObject->MajorFunction[i] = (PVOID)FilterPass;
    DriverObject->MajorFunction[IRP_MJ_DEVICE_CONTROL] = (PVOID)FilterDeviceControl;
    DriverObject->DriverUnload = FilterUnload;
    DbgPrint("filter: attached to %wZ\n", &targetName);
    return STATUS_SUCCESS;
}
