"""The run-time library's memory routines (wdm.h), and the copy out to user mode.

They work on virtual addresses through the machine (``k.read`` / ``k.write``), so an
unmapped or paged-out byte faults as a driver's own access would. Copies publish
``MemoryCopied`` when a layer listens for copies (uninitialized-memory tracking carries its
shadow along), and ``copy_to_user``, or a copy whose destination is a user-mode address,
publishes ``CopiedToUser``.
"""

from ..hooks import CopiedToUser, MemoryCopied
from ..machine.user_space import MM_HIGHEST_USER_ADDRESS
from .registry import routine


def checked_length(length) -> int:
    if isinstance(length, bool) or not isinstance(length, int) or length < 0:
        raise ValueError(f"Length must be a non-negative int, got {length!r}")
    return length


class RtlRoutines:
    @routine("VOID RtlZeroMemory(_Out_writes_bytes_all_(Length) PVOID Destination, "
             "_In_ SIZE_T Length)")
    def RtlZeroMemory(self, Destination: int, Length: int) -> None:
        self.write(Destination, bytes(checked_length(Length)))

    @routine("VOID RtlFillMemory(_Out_writes_bytes_all_(Length) PVOID Destination, "
             "_In_ SIZE_T Length, _In_ UCHAR Fill)")
    def RtlFillMemory(self, Destination: int, Length: int, Fill: int) -> None:
        if not isinstance(Fill, int) or not 0 <= Fill <= 0xFF:
            raise ValueError(f"Fill must be a byte value 0..255, got {Fill!r}")
        self.write(Destination, bytes([Fill]) * checked_length(Length))

    @routine("VOID RtlCopyMemory(_Out_writes_bytes_all_(Length) PVOID Destination, "
             "_In_reads_bytes_(Length) const VOID *Source, _In_ SIZE_T Length)")
    def RtlCopyMemory(self, Destination: int, Source: int, Length: int) -> None:
        data = self.read(Source, checked_length(Length))
        if Destination <= MM_HIGHEST_USER_ADDRESS and Length:
            # A copy into a user-mode buffer (a driver's memcpy to Irp->UserBuffer, a
            # METHOD_NEITHER output): what copy_to_user is for Python drivers.
            to_user = self.hooks.listening(CopiedToUser)
            if to_user:
                event = CopiedToUser(Source, Length)
                for listener in to_user:
                    listener(event)
        copied = self.hooks.listening(MemoryCopied)
        if not copied:
            self.write(Destination, data)
            return
        type(self).write(self, Destination, data)  # one event for the copy: MemoryCopied
        event = MemoryCopied(Destination, Source, Length)
        for listener in copied:
            listener(event)

    # Reading the whole source first makes overlap safe: one function serves both.
    RtlMoveMemory = routine("VOID RtlMoveMemory(_Out_writes_bytes_all_(Length) PVOID Destination, "
                            "_In_reads_bytes_(Length) const VOID *Source, _In_ SIZE_T Length)"
                            )(RtlCopyMemory)

    @routine("SIZE_T RtlCompareMemory(_In_ const VOID *Source1, _In_ const VOID *Source2, "
             "_In_ SIZE_T Length)")
    def RtlCompareMemory(self, Source1: int, Source2: int, Length: int) -> int:
        a = self.read(Source1, checked_length(Length))
        b = self.read(Source2, Length)
        for index, (x, y) in enumerate(zip(a, b)):
            if x != y:
                return index
        return Length

    def copy_to_user(self, UserBuffer: bytearray, Source: int, Length: int) -> None:
        """Copy pool bytes out to a user-mode buffer (a Python bytearray stands for it)."""
        if not isinstance(UserBuffer, bytearray):
            raise TypeError(f"UserBuffer must be a bytearray, not {type(UserBuffer).__name__}")
        Length = checked_length(Length)
        if Length > len(UserBuffer):
            raise ValueError(f"Length {Length} is larger than the user buffer ({len(UserBuffer)} bytes)")
        data = self.read(Source, Length)
        self.hooks.publish(CopiedToUser(Source, Length))
        UserBuffer[:Length] = data
