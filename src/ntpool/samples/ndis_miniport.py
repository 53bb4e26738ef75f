"""A sample NDIS 5.x miniport: receive buffers from NdisAllocateMemoryWithTag.

NdisAllocateMemoryWithTag is an NDIS 5.x routine, so the miniport registers as NDIS 5.1
(NdisMInitializeWrapper, NdisMRegisterMiniport); an NDIS 6.x driver would be refused it and
must use NdisAllocateMemoryWithTagPriority. The miniport allocates its receive buffers once, in DriverEntry (as MiniportInitializeEx
would), and reuses them for every frame; each send takes a small context that is freed
when the send completes. Tags are written as a C driver writes them, reversed: 'xRmN'
shows as ``NmRx`` in poolmon and the debugger.
"""

from ntpool import NdisStatus, NtStatus
from ntpool.routines.ndis import NDIS_MINIPORT_CHARACTERISTICS

RECEIVE_BUFFER_TAG = "xRmN"  # shows "NmRx"
SEND_CONTEXT_TAG = "xTmN"  # shows "NmTx"
RECEIVE_BUFFER_BYTES = 1536  # an Ethernet frame, rounded up
SEND_CONTEXT_BYTES = 72


class NdisMiniport:
    name = "ndisminiport.sys"

    def __init__(self, receive_buffers: int = 64):
        self.receive_buffer_count = receive_buffers
        self.free_buffers: list[int] = []
        self.indicated: list[int] = []  # buffers the protocol still holds
        self.sends: list[int] = []
        self.dropped = 0

    def DriverEntry(self, k, RegistryPath) -> int:
        wrapper = k.NdisMInitializeWrapper(self, RegistryPath)
        status = k.NdisMRegisterMiniport(wrapper, NDIS_MINIPORT_CHARACTERISTICS(5, 1))
        if status != NdisStatus.NDIS_STATUS_SUCCESS:
            return status
        for _ in range(self.receive_buffer_count):
            status, buffer = k.NdisAllocateMemoryWithTag(RECEIVE_BUFFER_BYTES, RECEIVE_BUFFER_TAG)
            if status != NdisStatus.NDIS_STATUS_SUCCESS:
                self._free_receive_buffers(k)
                return NdisStatus.NDIS_STATUS_RESOURCES
            self.free_buffers.append(buffer)
        return NtStatus.STATUS_SUCCESS

    def indicate_receive(self, k, frame: bytes) -> int | None:
        """A frame arrived: copy it into a free receive buffer and indicate it up."""
        if not self.free_buffers:
            self.dropped += 1  # no buffer: the frame is dropped, as hardware would
            return None
        buffer = self.free_buffers.pop()
        k.write(buffer, frame[:RECEIVE_BUFFER_BYTES])
        self.indicated.append(buffer)
        return buffer

    def return_buffer(self, k) -> None:
        """The protocol is done with the oldest indicated buffer (MiniportReturnNetBufferLists)."""
        if self.indicated:
            self.free_buffers.append(self.indicated.pop(0))

    def send(self, k, frame: bytes) -> bool:
        status, context = k.NdisAllocateMemoryWithTag(SEND_CONTEXT_BYTES, SEND_CONTEXT_TAG)
        if status != NdisStatus.NDIS_STATUS_SUCCESS:
            return False  # NDIS_STATUS_RESOURCES back to the protocol; nothing leaked
        k.write(context, len(frame).to_bytes(8, "little"))
        self.sends.append(context)
        return True

    @property
    def sends_in_flight(self) -> int:
        return len(self.sends)

    def send_complete(self, k) -> None:
        if self.sends:
            k.NdisFreeMemory(self.sends.pop(0), SEND_CONTEXT_BYTES, 0)

    def DriverUnload(self, k) -> None:
        while self.sends:
            self.send_complete(k)
        self.free_buffers.extend(self.indicated)
        self.indicated.clear()
        self._free_receive_buffers(k)

    def _free_receive_buffers(self, k) -> None:
        for buffer in self.free_buffers:
            k.NdisFreeMemory(buffer, RECEIVE_BUFFER_BYTES, 0)
        self.free_buffers.clear()
