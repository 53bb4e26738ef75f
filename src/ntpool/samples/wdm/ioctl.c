/* ioctl.sys: a mirror of the WDK's IOCTL sample (general/ioctl, sioctl.sys). One device,
 * \Device\SIOCTL with the link \DosDevices\IoctlTest, and four IOCTLs, one per transfer
 * method. Each prints what the caller sent and answers with the same string, taken from
 * where the I/O manager put each buffer: the SystemBuffer (METHOD_BUFFERED), an MDL for the
 * output (METHOD_IN_DIRECT / METHOD_OUT_DIRECT), or the caller's own user-mode pointers,
 * probed and locked inside __try (METHOD_NEITHER). */
#include "wdm_lite.h"

#define SIOCTL_TYPE 40000
#define IOCTL_SIOCTL_METHOD_IN_DIRECT CTL_CODE(SIOCTL_TYPE, 0x900, METHOD_IN_DIRECT, FILE_ANY_ACCESS)
#define IOCTL_SIOCTL_METHOD_OUT_DIRECT CTL_CODE(SIOCTL_TYPE, 0x901, METHOD_OUT_DIRECT, FILE_ANY_ACCESS)
#define IOCTL_SIOCTL_METHOD_NEITHER CTL_CODE(SIOCTL_TYPE, 0x902, METHOD_NEITHER, FILE_ANY_ACCESS)
#define IOCTL_SIOCTL_METHOD_BUFFERED CTL_CODE(SIOCTL_TYPE, 0x903, METHOD_BUFFERED, FILE_ANY_ACCESS)

static const char Answer[] = "This String is from Device Driver !!!";

static VOID PrintChars(const char *data, SIZE_T count) {
    char line[80];
    SIZE_T n = count < sizeof(line) - 1 ? count : sizeof(line) - 1;
    memcpy(line, data, n);
    line[n] = 0;
    DbgPrint("\t\tData: %s\n", line);
}

static NTSTATUS NTAPI SioctlCreateClose(PDEVICE_OBJECT DeviceObject, PIRP Irp) {
    (void)DeviceObject;
    Irp->IoStatus.Status = STATUS_SUCCESS;
    Irp->IoStatus.Information = 0;
    IoCompleteRequest(Irp, IO_NO_INCREMENT);
    return STATUS_SUCCESS;
}

static NTSTATUS NTAPI SioctlDeviceControl(PDEVICE_OBJECT DeviceObject, PIRP Irp) {
    PIO_STACK_LOCATION irpSp = IoGetCurrentIrpStackLocation(Irp);
    ULONG inBufLength = irpSp->Parameters.DeviceIoControl.InputBufferLength;
    ULONG outBufLength = irpSp->Parameters.DeviceIoControl.OutputBufferLength;
    NTSTATUS ntStatus = STATUS_SUCCESS;
    SIZE_T datalen = sizeof(Answer);
    char *inBuf, *outBuf, *buffer;
    PMDL mdl;
    (void)DeviceObject;

    if (!inBufLength || !outBufLength) {
        ntStatus = STATUS_INVALID_PARAMETER;
        goto End;
    }
    switch (irpSp->Parameters.DeviceIoControl.IoControlCode) {
    case IOCTL_SIOCTL_METHOD_BUFFERED:
        DbgPrint("Called IOCTL_SIOCTL_METHOD_BUFFERED\n");
        inBuf = Irp->AssociatedIrp.SystemBuffer;
        outBuf = Irp->AssociatedIrp.SystemBuffer;
        PrintChars(inBuf, inBufLength);
        memcpy(outBuf, Answer, outBufLength < datalen ? outBufLength : datalen);
        Irp->IoStatus.Information = outBufLength < datalen ? outBufLength : datalen;
        break;

    case IOCTL_SIOCTL_METHOD_NEITHER:
        DbgPrint("Called IOCTL_SIOCTL_METHOD_NEITHER\n");
        inBuf = irpSp->Parameters.DeviceIoControl.Type3InputBuffer;
        outBuf = Irp->UserBuffer;
        __try {
            ProbeForRead(inBuf, inBufLength, sizeof(UCHAR));
            PrintChars(inBuf, inBufLength);
        } __except (EXCEPTION_EXECUTE_HANDLER) {
            ntStatus = GetExceptionCode();
            DbgPrint("Exception while accessing inBuf 0X%08X in METHOD_NEITHER\n", ntStatus);
            break;
        }
        mdl = IoAllocateMdl(outBuf, outBufLength, FALSE, TRUE, NULL);
        if (!mdl) {
            ntStatus = STATUS_INSUFFICIENT_RESOURCES;
            break;
        }
        __try {
            MmProbeAndLockPages(mdl, UserMode, IoWriteAccess);
        } __except (EXCEPTION_EXECUTE_HANDLER) {
            ntStatus = GetExceptionCode();
            DbgPrint("Exception while locking outBuf 0X%08X in METHOD_NEITHER\n", ntStatus);
            IoFreeMdl(mdl);
            break;
        }
        buffer = MmGetSystemAddressForMdlSafe(mdl, NormalPagePriority);
        if (!buffer) {
            ntStatus = STATUS_INSUFFICIENT_RESOURCES;
            MmUnlockPages(mdl);
            IoFreeMdl(mdl);
            break;
        }
        memcpy(buffer, Answer, outBufLength < datalen ? outBufLength : datalen);
        MmUnlockPages(mdl);
        IoFreeMdl(mdl);
        Irp->IoStatus.Information = outBufLength < datalen ? outBufLength : datalen;
        break;

    case IOCTL_SIOCTL_METHOD_IN_DIRECT:
    case IOCTL_SIOCTL_METHOD_OUT_DIRECT:
        DbgPrint("Called IOCTL_SIOCTL_METHOD_%s_DIRECT\n",
                 irpSp->Parameters.DeviceIoControl.IoControlCode == IOCTL_SIOCTL_METHOD_IN_DIRECT
                     ? "IN" : "OUT");
        inBuf = Irp->AssociatedIrp.SystemBuffer;
        PrintChars(inBuf, inBufLength);
        buffer = MmGetSystemAddressForMdlSafe(Irp->MdlAddress, NormalPagePriority);
        if (!buffer) {
            ntStatus = STATUS_INSUFFICIENT_RESOURCES;
            break;
        }
        memcpy(buffer, Answer, outBufLength < datalen ? outBufLength : datalen);
        Irp->IoStatus.Information = MmGetMdlByteCount(Irp->MdlAddress) < datalen
            ? MmGetMdlByteCount(Irp->MdlAddress) : datalen;
        break;

    default:
        ntStatus = STATUS_INVALID_DEVICE_REQUEST;
        DbgPrint("ERROR: unrecognized IOCTL %x\n",
                 irpSp->Parameters.DeviceIoControl.IoControlCode);
        break;
    }
End:
    Irp->IoStatus.Status = ntStatus;
    IoCompleteRequest(Irp, IO_NO_INCREMENT);
    return ntStatus;
}

static VOID NTAPI SioctlUnloadDriver(PDRIVER_OBJECT DriverObject) {
    UNICODE_STRING link;
    RtlInitUnicodeString(&link, L"\\DosDevices\\IoctlTest");
    IoDeleteSymbolicLink(&link);
    if (DriverObject->DeviceObject != NULL)
        IoDeleteDevice(DriverObject->DeviceObject);
}

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath) {
    UNICODE_STRING ntName, win32Name;
    PDEVICE_OBJECT deviceObject = NULL;
    NTSTATUS status;
    (void)RegistryPath;

    RtlInitUnicodeString(&ntName, L"\\Device\\SIOCTL");
    status = IoCreateDevice(DriverObject, 0, &ntName, FILE_DEVICE_UNKNOWN,
                            FILE_DEVICE_SECURE_OPEN, FALSE, &deviceObject);
    if (!NT_SUCCESS(status)) {
        DbgPrint("Couldn't create the device object\n");
        return status;
    }
    DriverObject->MajorFunction[IRP_MJ_CREATE] = (PVOID)SioctlCreateClose;
    DriverObject->MajorFunction[IRP_MJ_CLOSE] = (PVOID)SioctlCreateClose;
    DriverObject->MajorFunction[IRP_MJ_DEVICE_CONTROL] = (PVOID)SioctlDeviceControl;
    DriverObject->DriverUnload = SioctlUnloadDriver;

    RtlInitUnicodeString(&win32Name, L"\\DosDevices\\IoctlTest");
    status = IoCreateSymbolicLink(&win32Name, &ntName);
    if (!NT_SUCCESS(status)) {
        DbgPrint("Couldn't create symbolic link\n");
        IoDeleteDevice(deviceObject);
    }
    return status;
}
