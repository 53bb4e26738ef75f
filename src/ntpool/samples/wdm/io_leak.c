/* io_leak.sys: a driver with two I/O bugs a Windows developer meets, each behind an IOCTL:
 * 0x800 describes its own buffer with an MDL and forgets to free the MDL ("Mdl "), 0x801
 * allocates an IRP to send down and forgets it ("Irp "). Both leaks outlive the driver:
 * pool tracking names them at unload, by tag and by the line that allocated them. */
#include "wdm_lite.h"

#define IOCTL_LEAK_MDL CTL_CODE(FILE_DEVICE_UNKNOWN, 0x800, METHOD_BUFFERED, FILE_ANY_ACCESS)
#define IOCTL_LEAK_IRP CTL_CODE(FILE_DEVICE_UNKNOWN, 0x801, METHOD_BUFFERED, FILE_ANY_ACCESS)
#define BUFFER_TAG 'fBkL'  /* shows "LkBf" */

static PDEVICE_OBJECT Device;
static PVOID Buffer;

static NTSTATUS NTAPI LeakComplete(PDEVICE_OBJECT DeviceObject, PIRP Irp) {
    (void)DeviceObject;
    Irp->IoStatus.Status = STATUS_SUCCESS;
    Irp->IoStatus.Information = 0;
    IoCompleteRequest(Irp, IO_NO_INCREMENT);
    return STATUS_SUCCESS;
}

NTSTATUS NTAPI LeakDeviceControl(PDEVICE_OBJECT DeviceObject, PIRP Irp) {
    PIO_STACK_LOCATION irpSp = IoGetCurrentIrpStackLocation(Irp);
    NTSTATUS status = STATUS_SUCCESS;
    PMDL mdl;
    PIRP irp;
    switch (irpSp->Parameters.DeviceIoControl.IoControlCode) {
    case IOCTL_LEAK_MDL:
        mdl = IoAllocateMdl(Buffer, 256, FALSE, FALSE, NULL);
        if (mdl == NULL) {
            status = STATUS_INSUFFICIENT_RESOURCES;
            break;
        }
        MmBuildMdlForNonPagedPool(mdl);
        DbgPrint("io_leak: MDL %p describes %p\n", mdl, MmGetSystemAddressForMdlSafe(mdl, 16));
        break;  /* BUG: IoFreeMdl(mdl) is missing */
    case IOCTL_LEAK_IRP:
        irp = IoAllocateIrp(DeviceObject->StackSize + 1, FALSE);
        if (irp == NULL) {
            status = STATUS_INSUFFICIENT_RESOURCES;
            break;
        }
        DbgPrint("io_leak: IRP %p with %d stack locations\n", irp, irp->StackCount);
        break;  /* BUG: the IRP is never sent and never freed */
    default:
        status = STATUS_INVALID_DEVICE_REQUEST;
    }
    Irp->IoStatus.Status = status;
    Irp->IoStatus.Information = 0;
    IoCompleteRequest(Irp, IO_NO_INCREMENT);
    return status;
}

static VOID NTAPI LeakUnload(PDRIVER_OBJECT DriverObject) {
    UNICODE_STRING link;
    (void)DriverObject;
    RtlInitUnicodeString(&link, L"\\DosDevices\\IoLeak");
    IoDeleteSymbolicLink(&link);
    IoDeleteDevice(Device);
    ExFreePoolWithTag(Buffer, BUFFER_TAG);
}

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath) {
    UNICODE_STRING name, link;
    NTSTATUS status;
    (void)RegistryPath;
    Buffer = ExAllocatePoolWithTag(NonPagedPool, 256, BUFFER_TAG);
    if (Buffer == NULL)
        return STATUS_INSUFFICIENT_RESOURCES;
    RtlInitUnicodeString(&name, L"\\Device\\IoLeak");
    status = IoCreateDevice(DriverObject, 0, &name, FILE_DEVICE_UNKNOWN, 0, FALSE, &Device);
    if (!NT_SUCCESS(status)) {
        ExFreePoolWithTag(Buffer, BUFFER_TAG);
        return status;
    }
    RtlInitUnicodeString(&link, L"\\DosDevices\\IoLeak");
    IoCreateSymbolicLink(&link, &name);
    Device->Flags |= DO_BUFFERED_IO;
    Device->Flags &= ~DO_DEVICE_INITIALIZING;
    DriverObject->MajorFunction[IRP_MJ_CREATE] = (PVOID)LeakComplete;
    DriverObject->MajorFunction[IRP_MJ_CLOSE] = (PVOID)LeakComplete;
    DriverObject->MajorFunction[IRP_MJ_CLEANUP] = (PVOID)LeakComplete;
    DriverObject->MajorFunction[IRP_MJ_DEVICE_CONTROL] = (PVOID)LeakDeviceControl;
    DriverObject->DriverUnload = LeakUnload;
    return STATUS_SUCCESS;
}
