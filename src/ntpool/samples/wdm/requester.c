/* requester.sys: a driver that sends requests of its own to another driver's device, as
 * class and filter drivers do. Export Ask opens \Device\SIOCTL (ioctl.sys must be loaded)
 * with IoGetDeviceObjectPointer and, for the buffered and both direct transfer methods,
 * builds an IRP with IoBuildDeviceIoControlRequest (its event and IO_STATUS_BLOCK on the
 * stack), sends it with IoCallDriver, waits if it is pending and prints the answer; the I/O
 * manager frees each IRP, its system buffer and its MDL when the request completes. Then it
 * builds an asynchronous IRP_MJ_WRITE with IoBuildAsynchronousFsdRequest whose completion
 * routine frees it, and dereferences the file object. */
#include "wdm_lite.h"

#define SIOCTL_TYPE 40000
#define IOCTL_IN_DIRECT CTL_CODE(SIOCTL_TYPE, 0x900, METHOD_IN_DIRECT, FILE_ANY_ACCESS)
#define IOCTL_OUT_DIRECT CTL_CODE(SIOCTL_TYPE, 0x901, METHOD_OUT_DIRECT, FILE_ANY_ACCESS)
#define IOCTL_BUFFERED CTL_CODE(SIOCTL_TYPE, 0x903, METHOD_BUFFERED, FILE_ANY_ACCESS)
#define REQUEST_TAG 'qeRR'  /* shows "RReq" */

static ULONG Freed;

static NTSTATUS NTAPI FreeAsync(PDEVICE_OBJECT DeviceObject, PIRP Irp, PVOID Context) {
    (void)DeviceObject; (void)Context;
    DbgPrint("requester: write completed %08X, freeing it\n", Irp->IoStatus.Status);
    IoFreeIrp(Irp);
    Freed++;
    return STATUS_MORE_PROCESSING_REQUIRED;
}

__declspec(dllexport) NTSTATUS Ask(VOID) {
    static const ULONG codes[] = {IOCTL_BUFFERED, IOCTL_IN_DIRECT, IOCTL_OUT_DIRECT};
    UNICODE_STRING name;
    PFILE_OBJECT file;
    PDEVICE_OBJECT device;
    PCHAR output;
    NTSTATUS status;
    ULONG i;
    PIRP irp;
    IO_STATUS_BLOCK iosb;
    RtlInitUnicodeString(&name, L"\\Device\\SIOCTL");
    status = IoGetDeviceObjectPointer(&name, FILE_ALL_ACCESS, &file, &device);
    if (!NT_SUCCESS(status))
        return status;
    output = ExAllocatePoolWithTag(NonPagedPool, 64, REQUEST_TAG);
    if (output == NULL) {
        ObDereferenceObject(file);
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    for (i = 0; i < 3; i++) {
        KEVENT done;
        memset(output, 0, 64);
        KeInitializeEvent(&done, NotificationEvent, FALSE);
        irp = IoBuildDeviceIoControlRequest(codes[i], device, "From the requester", 19, output, 40, FALSE,
                                            &done, &iosb);
        if (irp == NULL)
            continue;
        status = IoCallDriver(device, irp);
        if (status == STATUS_PENDING) {
            KeWaitForSingleObject(&done, Executive, KernelMode, FALSE, NULL);
            status = iosb.Status;
        }
        DbgPrint("requester: method %u: %08X, %u bytes: %s\n", codes[i] & 3, status,
                 (ULONG)iosb.Information, output);
    }
    irp = IoBuildAsynchronousFsdRequest(IRP_MJ_WRITE, device, output, 8, NULL, &iosb);
    if (irp != NULL) {
        IoSetCompletionRoutine(irp, FreeAsync, NULL, TRUE, TRUE, TRUE);
        status = IoCallDriver(device, irp);
        DbgPrint("requester: write sent: %08X, freed %u\n", status, Freed);
    }
    ExFreePoolWithTag(output, REQUEST_TAG);
    ObDereferenceObject(file);
    return STATUS_SUCCESS;
}

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath) {
    (void)DriverObject; (void)RegistryPath;
    return STATUS_SUCCESS;
}
