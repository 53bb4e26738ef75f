"""IRPs a driver builds for a request of its own to another device: IoBuildDeviceIoControlRequest,
IoBuildSynchronousFsdRequest, IoBuildAsynchronousFsdRequest, and IoGetRelatedDeviceObject.

Each IRP comes from IoAllocateIrp's path (an "Irp " sized for the target's StackSize) with
its next stack location set up, RequestorMode KernelMode and the current thread, and its
buffers as the I/O manager sets them for the transfer (WDK, ReactOS io/iomgr/irp.c):
METHOD_BUFFERED (and DO_BUFFERED_IO): a SystemBuffer of nonpaged pool ("Io  ", the larger
of the two lengths) holding the input, IRP_BUFFERED_IO | IRP_DEALLOCATE_BUFFER, and
IRP_INPUT_OPERATION with UserBuffer when there is output to copy back; METHOD_IN_DIRECT /
METHOD_OUT_DIRECT (and DO_DIRECT_IO): the input buffered, the output described by an MDL
locked for the access the transfer needs (a buffer that cannot be locked: NULL, nothing
left allocated); METHOD_NEITHER: Type3InputBuffer and UserBuffer as given.

When the IRP completes (IofCompleteRequest with no completion routine stopping it), the I/O
manager's side runs (IopCompleteRequest): the buffered output copied to UserBuffer
(IoStatus.Information bytes, unless the status is an error), the SystemBuffer freed, the
MDLs unlocked and freed, IoStatus written to the caller's IO_STATUS_BLOCK, its event set,
and the IRP freed. A driver's completion routine that returns
STATUS_MORE_PROCESSING_REQUIRED keeps the IRP (an asynchronous one it must free itself).
"""

from __future__ import annotations

from ..constants import DISPATCH_LEVEL, PASSIVE_LEVEL, PoolType
from ..errors import NtStatusError
from . import layouts as L
from .registry import routine

METHOD_BUFFERED, METHOD_IN_DIRECT, METHOD_OUT_DIRECT, METHOD_NEITHER = 0, 1, 2, 3
IRP_MJ_READ = 0x03
IRP_MJ_WRITE = 0x04
IRP_MJ_DEVICE_CONTROL = 0x0E
IRP_MJ_INTERNAL_DEVICE_CONTROL = 0x0F
KERNEL_MODE = 0
IO_READ_ACCESS, IO_WRITE_ACCESS = 0, 1
IO_STATUS_BLOCK_INFORMATION = 0x08


class IrpBuilderRoutines:
    def _init_irp_builders(self) -> None:
        self.built_irps: set[int] = set()  # IRPs the I/O manager completes for their builder

    def _new_request_irp(self, device: int, major: int) -> tuple[int, int]:
        """(IRP, its next stack location) for ``device``'s stack, or (0, 0) with no pool."""
        irp = self.IoAllocateIrp(self.read(device + L.DEVICE_OBJECT.StackSize, 1)[0], 0)
        if not irp:
            return 0, 0
        self._put8(irp + L.IRP.RequestorMode, KERNEL_MODE)
        self._put64(irp + L.IRP.Thread, self.current_thread)
        stack = self.current_stack_location(irp) - L.IO_STACK_LOCATION.SIZE
        self._put8(stack + L.IO_STACK_LOCATION.MajorFunction, major)
        return irp, stack

    def _buffer_input(self, irp: int, length: int, source: int, copy: int, output: int) -> bool:
        """A SystemBuffer of ``length`` bytes with ``copy`` bytes of ``source`` in it."""
        if not length:
            return True
        buffer = self._io_allocate(PoolType.NonPagedPool, length, L.TAG_SYSTEM_BUFFER, False)
        if not buffer:
            return False
        self.write(buffer, bytes(length))
        if source and copy:
            self.write(buffer, self.read(source, copy))
        self._put64(irp + L.IRP.AssociatedIrp, buffer)
        flags = L.IRP_BUFFERED_IO | L.IRP_DEALLOCATE_BUFFER | (L.IRP_INPUT_OPERATION if output else 0)
        self._put32(irp + L.IRP.Flags, self._get32(irp + L.IRP.Flags) | flags)
        return True

    def _lock_for_transfer(self, irp: int, buffer: int, length: int, operation: int) -> bool:
        """Irp->MdlAddress: ``length`` bytes at ``buffer`` locked for ``operation`` (False
        when the pages cannot be locked or there is no pool)."""
        mdl = self.IoAllocateMdl(buffer, length, 0, 0, irp)
        if not mdl:
            return False
        try:
            self.MmProbeAndLockPages(mdl, KERNEL_MODE, operation)
        except NtStatusError:
            return False
        return True

    def _abandon_irp(self, irp: int) -> int:
        """Free what a half-built IRP holds, and the IRP: the builder returns NULL."""
        self._release_irp_buffers(irp)
        self.IoFreeIrp(irp)
        return 0

    def _release_irp_buffers(self, irp: int) -> None:
        flags = self._get32(irp + L.IRP.Flags)
        system = self._get64(irp + L.IRP.AssociatedIrp)
        if flags & L.IRP_DEALLOCATE_BUFFER and system:
            self.pool.free(system, None)
            self._put64(irp + L.IRP.AssociatedIrp, 0)
        mdl = self._get64(irp + L.IRP.MdlAddress)
        while mdl:
            following = self._get64(mdl + L.MDL.Next)
            if self._get16(mdl + L.MDL.MdlFlags) & L.MDL_PAGES_LOCKED:
                self.MmUnlockPages(mdl)
            self.IoFreeMdl(mdl)
            mdl = following
        self._put64(irp + L.IRP.MdlAddress, 0)

    @routine("PIRP IoBuildDeviceIoControlRequest(ULONG IoControlCode, PDEVICE_OBJECT DeviceObject, "
             "PVOID InputBuffer, ULONG InputBufferLength, PVOID OutputBuffer, ULONG OutputBufferLength, "
             "BOOLEAN InternalDeviceIoControl, PKEVENT Event, PIO_STATUS_BLOCK IoStatusBlock)")
    def IoBuildDeviceIoControlRequest(self, IoControlCode, DeviceObject, InputBuffer, InputBufferLength,
                                      OutputBuffer, OutputBufferLength, InternalDeviceIoControl, Event,
                                      IoStatusBlock) -> int:
        """An IRP_MJ_(INTERNAL_)DEVICE_CONTROL for DeviceObject's stack with its buffers set
        for the code's transfer method; completed, it sets *IoStatusBlock and Event and is
        freed by the I/O manager. NULL when pool runs out or the output cannot be locked."""
        self._check_irql_at_most(PASSIVE_LEVEL, "IoBuildDeviceIoControlRequest")
        major = IRP_MJ_INTERNAL_DEVICE_CONTROL if InternalDeviceIoControl & 0xFF else IRP_MJ_DEVICE_CONTROL
        irp, stack = self._new_request_irp(DeviceObject, major)
        if not irp:
            return 0
        code, in_length, out_length = IoControlCode & 0xFFFFFFFF, InputBufferLength & 0xFFFFFFFF, \
            OutputBufferLength & 0xFFFFFFFF
        self._put32(stack + L.IO_STACK_LOCATION.OutputBufferLength, out_length)
        self._put32(stack + L.IO_STACK_LOCATION.InputBufferLength, in_length)
        self._put32(stack + L.IO_STACK_LOCATION.IoControlCode, code)
        method = code & 3
        if method == METHOD_BUFFERED:
            if not self._buffer_input(irp, max(in_length, out_length), InputBuffer, in_length,
                                      OutputBuffer and out_length):
                return self._abandon_irp(irp)
            self._put64(irp + L.IRP.UserBuffer, OutputBuffer)
        elif method in (METHOD_IN_DIRECT, METHOD_OUT_DIRECT):
            if not self._buffer_input(irp, in_length, InputBuffer, in_length, 0):
                return self._abandon_irp(irp)
            if OutputBuffer and out_length and not self._lock_for_transfer(
                    irp, OutputBuffer, out_length, IO_READ_ACCESS if method == METHOD_IN_DIRECT else IO_WRITE_ACCESS):
                return self._abandon_irp(irp)
        else:
            self._put64(stack + L.IO_STACK_LOCATION.Type3InputBuffer, InputBuffer)
            self._put64(irp + L.IRP.UserBuffer, OutputBuffer)
        self._put64(irp + L.IRP.UserIosb, IoStatusBlock)
        self._put64(irp + L.IRP.UserEvent, Event)
        self.built_irps.add(irp)
        return irp

    @routine("PIRP IoBuildSynchronousFsdRequest(ULONG MajorFunction, PDEVICE_OBJECT DeviceObject, "
             "PVOID Buffer, ULONG Length, PLARGE_INTEGER StartingOffset, PKEVENT Event, "
             "PIO_STATUS_BLOCK IoStatusBlock)")
    def IoBuildSynchronousFsdRequest(self, MajorFunction, DeviceObject, Buffer, Length, StartingOffset,
                                     Event, IoStatusBlock) -> int:
        """A read, write, flush or shutdown IRP for DeviceObject's stack, its buffer as the
        device's DO_BUFFERED_IO / DO_DIRECT_IO flags ask; completed, it sets *IoStatusBlock
        and Event and is freed by the I/O manager."""
        self._check_irql_at_most(PASSIVE_LEVEL, "IoBuildSynchronousFsdRequest")
        irp = self._fsd_request(MajorFunction, DeviceObject, Buffer, Length, StartingOffset, IoStatusBlock)
        if irp:
            self._put64(irp + L.IRP.UserEvent, Event)
        return irp

    @routine("PIRP IoBuildAsynchronousFsdRequest(ULONG MajorFunction, PDEVICE_OBJECT DeviceObject, "
             "PVOID Buffer, ULONG Length, PLARGE_INTEGER StartingOffset, PIO_STATUS_BLOCK IoStatusBlock)")
    def IoBuildAsynchronousFsdRequest(self, MajorFunction, DeviceObject, Buffer, Length, StartingOffset,
                                      IoStatusBlock) -> int:
        """As IoBuildSynchronousFsdRequest with no event (DISPATCH_LEVEL allowed); its
        completion routine is to free it (IoFreeIrp, after unlocking and freeing its MDL) and
        return STATUS_MORE_PROCESSING_REQUIRED."""
        self._check_irql_at_most(DISPATCH_LEVEL, "IoBuildAsynchronousFsdRequest")
        return self._fsd_request(MajorFunction, DeviceObject, Buffer, Length, StartingOffset, IoStatusBlock)

    def _fsd_request(self, major, device, buffer, length, offset, iosb) -> int:
        major &= 0xFF
        irp, stack = self._new_request_irp(device, major)
        if not irp:
            return 0
        length &= 0xFFFFFFFF
        if major in (IRP_MJ_READ, IRP_MJ_WRITE):
            flags = self._get32(device + L.DEVICE_OBJECT.Flags)
            if flags & L.DO_BUFFERED_IO:
                if not self._buffer_input(irp, length, buffer if major == IRP_MJ_WRITE else 0, length,
                                          major == IRP_MJ_READ):
                    return self._abandon_irp(irp)
                self._put64(irp + L.IRP.UserBuffer, buffer)
            elif flags & L.DO_DIRECT_IO:
                if length and not self._lock_for_transfer(
                        irp, buffer, length, IO_WRITE_ACCESS if major == IRP_MJ_READ else IO_READ_ACCESS):
                    return self._abandon_irp(irp)
            else:
                self._put64(irp + L.IRP.UserBuffer, buffer)
            self._put32(stack + L.IO_STACK_LOCATION.Length, length)
            if offset:
                self._put64(stack + L.IO_STACK_LOCATION.ByteOffset, self._get64(offset))
        self._put64(irp + L.IRP.UserIosb, iosb)
        self.built_irps.add(irp)
        return irp

    def complete_built_irp(self, irp: int) -> None:
        """IopCompleteRequest for an IRP a driver built: buffered output to UserBuffer, the
        buffers and MDLs released, IoStatus to UserIosb, UserEvent set, the IRP freed."""
        self.built_irps.discard(irp)
        status = self._get32(irp + L.IRP.IoStatus_Status)
        information = self._get64(irp + L.IRP.IoStatus_Information)
        flags = self._get32(irp + L.IRP.Flags)
        system, user = self._get64(irp + L.IRP.AssociatedIrp), self._get64(irp + L.IRP.UserBuffer)
        if flags & L.IRP_BUFFERED_IO and flags & L.IRP_INPUT_OPERATION and system and user and \
                information and status < 0xC0000000:
            self.write(user, self.read(system, information))
        self._release_irp_buffers(irp)
        iosb = self._get64(irp + L.IRP.UserIosb)
        if iosb:
            self._put64(iosb, status)  # Status, and the union's upper half
            self._put64(iosb + IO_STATUS_BLOCK_INFORMATION, information)
        event = self._get64(irp + L.IRP.UserEvent)
        if event:
            self.KeSetEvent(event, 0, 0)
        self.IoFreeIrp(irp)

    @routine("PDEVICE_OBJECT IoGetRelatedDeviceObject(PFILE_OBJECT FileObject)")
    def IoGetRelatedDeviceObject(self, FileObject) -> int:
        """The device requests on the file go to: the top of the stack of its volume's
        device (Vpb->DeviceObject) or, with no volume, of its own device."""
        vpb = self._get64(FileObject + L.FILE_OBJECT.Vpb)
        device = self._get64(vpb + VPB_DEVICE_OBJECT) if vpb else 0
        if not device:
            device = self._get64(FileObject + L.FILE_OBJECT.DeviceObject)
        return self._top_of_stack(device)


VPB_DEVICE_OBJECT = 0x08  # VPB (x64): Type, Size, Flags, VolumeLabelLength, DeviceObject
