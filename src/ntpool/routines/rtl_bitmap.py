"""The run-time library's bitmaps (wdm.h): RTL_BITMAP and the routines that set, clear,
test, count and search its bits.

The RTL_BITMAP is the caller's, in the machine's memory (x64, 16 bytes: SizeOfBitMap, a
ULONG, then Buffer, a PULONG at +8), and so are the bits: each routine reads the header and
then the bytes its bits are in through ``k.read`` / ``k.write``, so a bitmap over freed or
unmapped pool faults as a driver's own access would, and one whose SizeOfBitMap is larger
than its buffer reads and writes past it, as Windows' free build does (it only ASSERTs that
an index is in range). Bit n is bit n % 8 of byte n / 8 (the ULONGs are little-endian).

The searches follow the documentation and NT's bitmap code for what is visible to a
driver: a hint at or past the end searches from 0; a search that finds no run between the
hint and the end searches again from bit 0, for a run that ends before HintIndex +
NumberToFind; NumberToFind 0 answers the hint rounded down to a byte (the "zero-length"
special case); 0xFFFFFFFF means no run.
"""

from __future__ import annotations


from ..packing import x64_struct
from .registry import register_type, routine

register_type("RTL_BITMAP", 16)
register_type("PRTL_BITMAP", 8, pointer=True, pointee="RTL_BITMAP")

RTL_BITMAP = x64_struct("<I4xQ")  # SizeOfBitMap, Buffer
NO_INDEX = 0xFFFFFFFF
_LAST_HEADER_OFFSET = 0x1000 - RTL_BITMAP.size  # a header at a page offset past it crosses the page
ULONG_MASK = 0xFFFFFFFF


# The searches look first at this many bits from where they start (``_run_near``): a run
# is usually found near the hint, and a few QWORDs cost much less than the whole map.
NEAR_BITS = 128


def _ulong(name: str, value) -> int:
    if type(value) is int:  # the usual argument, at once
        return value & ULONG_MASK
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    return value & ULONG_MASK


def _lowest_run(ones: int, count: int) -> int:
    """The lowest index at which ``count`` (at least 1) consecutive set bits of ``ones``
    begin; -1 if there is none."""
    # Bit i of ``runs`` is set while bits i .. i + have - 1 of ``ones`` all are: each step
    # ANDs in the value shifted by at most ``have``, so ``have`` doubles up to ``count``
    # (log2(count) steps of integer operations, not one per bit).
    runs = ones
    have = 1
    while have < count and runs:
        step = min(have, count - have)
        runs &= runs >> step
        have += step
    return (runs & -runs).bit_length() - 1


class BitmapRoutines:
    # --- the header, and bytes of the bits -----------------------------------------------------

    # The usual call reads the header and the bits' bytes where they are in the machine's
    # memory (each on one present page: ``read``'s own work, without the call) and changes
    # bits there. Anything else, and every call while someone listens for memory writes (the
    # tests' other machine), goes through ``read`` and ``write``, which fault, name a wrong
    # argument or publish as a driver's own access would.

    def _bitmap(self, header: int) -> tuple[int, int]:
        """(SizeOfBitMap, Buffer) from the caller's RTL_BITMAP."""
        try:
            base = self._tlb.get(header >> 12)
        except TypeError:  # not an address: ``read`` names it
            base = None
        if base is not None and header & 0xFFF <= _LAST_HEADER_OFFSET and not self._writes_published:
            return RTL_BITMAP.unpack_from(self._mem, base + (header & 0xFFF))
        return RTL_BITMAP.unpack(self.read(header, RTL_BITMAP.size))

    def _bits(self, buffer: int, first: int, count: int) -> tuple[int, int]:
        """The bytes holding bits [first, first + count) as one int, bit 0 the first byte's
        bit 0, and the index of that byte's first bit."""
        start_byte = first >> 3
        address = buffer + start_byte
        length = ((first + count + 7) >> 3) - start_byte
        base = self._tlb.get(address >> 12)
        if base is not None and (address & 0xFFF) + length <= 0x1000 and not self._writes_published:
            at = base + (address & 0xFFF)
            data = self._mem[at:at + length]
        else:
            data = self.read(address, length)
        return int.from_bytes(data, "little"), start_byte << 3

    def _usual_bits(self, header, first: int, count: int) -> tuple[int, int] | None:
        """Where the usual call reads and writes bits [first, first + count) itself: the
        physical address and length of the bytes holding them when the RTL_BITMAP and
        those bytes are each on one present page; None otherwise, for the way through
        ``read`` and ``write``, which fault or publish as a driver's own access would.
        Used only while nobody listens for memory writes: a machine with a listener (the
        tests' other machine) takes the way through ``read`` and ``write`` every time."""
        tlb = self._tlb
        try:
            base = tlb.get(header >> 12)
        except TypeError:  # not an address: ``read`` names it
            return None
        if base is None or header & 0xFFF > _LAST_HEADER_OFFSET:
            return None
        _, buffer = RTL_BITMAP.unpack_from(self._mem, base + (header & 0xFFF))
        address = buffer + (first >> 3)
        length = ((first + count + 7) >> 3) - (first >> 3)
        base = tlb.get(address >> 12)
        if base is None or (address & 0xFFF) + length > 0x1000:
            return None
        return base + (address & 0xFFF), length

    def _change_bits(self, header: int, first: int, count: int, value: bool) -> None:
        if not count:
            return
        usual = None if self._writes_published else self._usual_bits(header, first, count)
        if usual is not None:  # in place, the bytes of the way below
            at, length = usual
            shift = (at & 7) * 8 + (first & 7)
            if shift + count <= 64:  # within one QWORD of memory: changed there
                words = self._words
                mask = ((1 << count) - 1) << shift
                words[at >> 3] = words[at >> 3] | mask if value else words[at >> 3] & ~mask
                return
            bits = int.from_bytes(self._mem[at:at + length], "little")
            mask = ((1 << count) - 1) << (first & 7)
            self._mem[at:at + length] = (bits | mask if value else bits & ~mask).to_bytes(length, "little")
            return
        _, buffer = self._bitmap(header)
        bits, base = self._bits(buffer, first, count)
        mask = ((1 << count) - 1) << (first - base)
        bits = bits | mask if value else bits & ~mask
        self.write(buffer + (base >> 3), bits.to_bytes((first + count + 7 >> 3) - (base >> 3), "little"))

    def _bit_text(self, buffer: int, first: int, count: int) -> str:
        """Bits [first, first + count) as a str of "0" and "1", the first bit first."""
        bits, base = self._bits(buffer, first, count)
        width = (first + count + 7 & ~7) - base
        return format(bits, f"0{width}b")[::-1][first - base:first - base + count]

    def _run_in(self, buffer: int, count: int, low: int, high: int, want_set: bool) -> int:
        """The first index of ``count`` bits all ``want_set`` inside [low, high]; NO_INDEX
        if there is none."""
        if high < low or high - low + 1 < count:
            return NO_INDEX
        if count <= NEAR_BITS // 2 and not self._writes_published:
            near = self._run_near(buffer, count, low, high, want_set)
            if near is not None:
                return near
        found = self._bit_text(buffer, low, high - low + 1).find(("1" if want_set else "0") * count)
        return NO_INDEX if found < 0 else low + found

    def _run_near(self, buffer: int, count: int, low: int, high: int, want_set: bool) -> int | None:
        """``_run_in``'s answer from the NEAR_BITS bits at ``low`` (the first run there is
        the first of the range: an earlier one would be there too), None when those bits
        do not decide it (no run in them, and the range goes on past them). Like every
        inline path it is taken only while nobody listens for memory writes: a machine
        with a listener (the tests' other machine) always takes the way through the text."""
        end = min(high, low + NEAR_BITS - 1)
        width = end - low + 1
        bits, base = self._bits(buffer, low, width)
        window = bits >> (low - base) & ((1 << width) - 1)
        found = _lowest_run(window if want_set else window ^ ((1 << width) - 1), count)
        if found >= 0:
            return low + found
        return NO_INDEX if end == high else None

    def _usual_run(self, header, count: int, hint: int, want_set: bool) -> tuple | None:
        """The usual search, inline: a run of 1 to NEAR_BITS / 2 bits found among the
        NEAR_BITS bits from where ``_find_run`` starts, the RTL_BITMAP and those bits' bytes
        each on one present page, nobody listening for memory writes. (found, the physical
        address and length of the bytes read, their bits as an int, the index of their
        first bit): ``_find_run``'s answer, and what the ...AndSet / ...AndClear routines
        change in place. None for anything else (no run there, a fault to take, a listener,
        an argument to name): ``_find_run``'s way, which reads all again."""
        if not 0 < count <= NEAR_BITS // 2 or self._writes_published:
            return None
        tlb = self._tlb
        try:
            page = tlb.get(header >> 12)
        except TypeError:  # not an address: ``read`` names it
            return None
        if page is None or header & 0xFFF > _LAST_HEADER_OFFSET:
            return None
        size, buffer = RTL_BITMAP.unpack_from(self._mem, page + (header & 0xFFF))
        start = hint if hint < size else 0
        width = min(size - start, NEAR_BITS)  # _run_near's window: [start, end]
        if width < count:
            return None
        address = buffer + (start >> 3)
        length = ((start + width + 7) >> 3) - (start >> 3)
        page = tlb.get(address >> 12)
        if page is None or (address & 0xFFF) + length > 0x1000:
            return None
        at = page + (address & 0xFFF)
        bits = int.from_bytes(self._mem[at:at + length], "little")
        window = bits >> (start & 7) & ((1 << width) - 1)
        found = _lowest_run(window if want_set else window ^ ((1 << width) - 1), count)
        if found < 0:
            return None
        return start + found, at, length, bits, start & ~7

    def _find_run(self, header: int, count: int, hint: int, want_set: bool) -> int:
        usual = self._usual_run(header, count, hint, want_set)
        if usual is not None:
            return usual[0]
        size, buffer = self._bitmap(header)
        start = hint if hint < size else 0
        if count == 0:
            return start & ~7
        if count > size:
            return NO_INDEX
        found = self._run_in(buffer, count, start, size - 1, want_set)
        if found == NO_INDEX and start:
            found = self._run_in(buffer, count, 0, min(hint + count, size) - 1, want_set)
        return found

    def _count_set(self, header: int) -> tuple[int, int]:
        size, buffer = self._bitmap(header)
        if not size:
            return 0, 0
        bits, _ = self._bits(buffer, 0, size)
        return size, (bits & ((1 << size) - 1)).bit_count()

    # --- the routines ------------------------------------------------------------------------

    # The WDK says _Out_ PRTL_BITMAP: the header is the caller's structure, which the routine
    # fills, so it is an in-parameter here (the registry's _Out_ is a value returned).
    @routine("VOID RtlInitializeBitMap(PRTL_BITMAP BitMapHeader, _In_opt_ PULONG BitMapBuffer, "
             "_In_opt_ ULONG SizeOfBitMap)")
    def RtlInitializeBitMap(self, BitMapHeader, BitMapBuffer, SizeOfBitMap) -> None:
        """Write the header (the bits are not touched)."""
        if isinstance(BitMapBuffer, bool) or not isinstance(BitMapBuffer, int):
            raise TypeError(f"BitMapBuffer must be an int address, got {type(BitMapBuffer).__name__}")
        if not 0 <= BitMapBuffer < 1 << 64:
            raise ValueError(f"BitMapBuffer {BitMapBuffer:#x} is no 64-bit address")
        self.write(BitMapHeader, RTL_BITMAP.pack(_ulong("SizeOfBitMap", SizeOfBitMap), BitMapBuffer))

    @routine("VOID RtlClearAllBits(_In_ PRTL_BITMAP BitMapHeader)")
    def RtlClearAllBits(self, BitMapHeader) -> None:
        size, buffer = self._bitmap(BitMapHeader)
        self.write(buffer, bytes((size + 31) // 32 * 4))  # whole ULONGs

    @routine("VOID RtlSetAllBits(_In_ PRTL_BITMAP BitMapHeader)")
    def RtlSetAllBits(self, BitMapHeader) -> None:
        size, buffer = self._bitmap(BitMapHeader)
        self.write(buffer, b"\xff" * ((size + 31) // 32 * 4))

    @routine("VOID RtlClearBits(_In_ PRTL_BITMAP BitMapHeader, _In_ ULONG StartingIndex, "
             "_In_ ULONG NumberToClear)")
    def RtlClearBits(self, BitMapHeader, StartingIndex, NumberToClear) -> None:
        self._change_bits(BitMapHeader, StartingIndex & ULONG_MASK if type(StartingIndex) is int
                          else _ulong("StartingIndex", StartingIndex),
                          NumberToClear & ULONG_MASK if type(NumberToClear) is int
                          else _ulong("NumberToClear", NumberToClear), False)

    @routine("VOID RtlSetBits(_In_ PRTL_BITMAP BitMapHeader, _In_ ULONG StartingIndex, "
             "_In_ ULONG NumberToSet)")
    def RtlSetBits(self, BitMapHeader, StartingIndex, NumberToSet) -> None:
        self._change_bits(BitMapHeader, StartingIndex & ULONG_MASK if type(StartingIndex) is int
                          else _ulong("StartingIndex", StartingIndex),
                          NumberToSet & ULONG_MASK if type(NumberToSet) is int
                          else _ulong("NumberToSet", NumberToSet), True)

    @routine("VOID RtlClearBit(_In_ PRTL_BITMAP BitMapHeader, _In_ ULONG BitNumber)")
    def RtlClearBit(self, BitMapHeader, BitNumber) -> None:
        self._change_bits(BitMapHeader, _ulong("BitNumber", BitNumber), 1, False)

    @routine("VOID RtlSetBit(_In_ PRTL_BITMAP BitMapHeader, _In_ ULONG BitNumber)")
    def RtlSetBit(self, BitMapHeader, BitNumber) -> None:
        self._change_bits(BitMapHeader, _ulong("BitNumber", BitNumber), 1, True)

    @routine("BOOLEAN RtlTestBit(_In_ PRTL_BITMAP BitMapHeader, _In_ ULONG BitNumber)")
    def RtlTestBit(self, BitMapHeader, BitNumber) -> int:
        number = _ulong("BitNumber", BitNumber)
        usual = None if self._writes_published else self._usual_bits(BitMapHeader, number, 1)
        if usual is not None:
            return self._mem[usual[0]] >> (number & 7) & 1
        _, buffer = self._bitmap(BitMapHeader)
        return self.read(buffer + (number >> 3), 1)[0] >> (number & 7) & 1

    def _all_bits(self, header: int, first: int, length: int, want_set: bool) -> int:
        size, buffer = self._bitmap(header)
        if length == 0 or first + length > size:
            return 0
        bits, base = self._bits(buffer, first, length)
        run = bits >> (first - base) & ((1 << length) - 1)
        return int(run == ((1 << length) - 1 if want_set else 0))

    @routine("BOOLEAN RtlAreBitsClear(_In_ PRTL_BITMAP BitMapHeader, _In_ ULONG StartingIndex, "
             "_In_ ULONG Length)")
    def RtlAreBitsClear(self, BitMapHeader, StartingIndex, Length) -> int:
        """TRUE if every bit of the range is clear; FALSE for an empty range or one that does
        not end inside the bitmap."""
        return self._all_bits(BitMapHeader, _ulong("StartingIndex", StartingIndex),
                              _ulong("Length", Length), False)

    @routine("BOOLEAN RtlAreBitsSet(_In_ PRTL_BITMAP BitMapHeader, _In_ ULONG StartingIndex, "
             "_In_ ULONG Length)")
    def RtlAreBitsSet(self, BitMapHeader, StartingIndex, Length) -> int:
        return self._all_bits(BitMapHeader, _ulong("StartingIndex", StartingIndex),
                              _ulong("Length", Length), True)

    @routine("ULONG RtlFindClearBits(_In_ PRTL_BITMAP BitMapHeader, _In_ ULONG NumberToFind, "
             "_In_ ULONG HintIndex)")
    def RtlFindClearBits(self, BitMapHeader, NumberToFind, HintIndex) -> int:
        return self._find_run(BitMapHeader, _ulong("NumberToFind", NumberToFind),
                              _ulong("HintIndex", HintIndex), False)

    @routine("ULONG RtlFindSetBits(_In_ PRTL_BITMAP BitMapHeader, _In_ ULONG NumberToFind, "
             "_In_ ULONG HintIndex)")
    def RtlFindSetBits(self, BitMapHeader, NumberToFind, HintIndex) -> int:
        return self._find_run(BitMapHeader, _ulong("NumberToFind", NumberToFind),
                              _ulong("HintIndex", HintIndex), True)

    @routine("ULONG RtlFindClearBitsAndSet(_In_ PRTL_BITMAP BitMapHeader, _In_ ULONG NumberToFind, "
             "_In_ ULONG HintIndex)")
    def RtlFindClearBitsAndSet(self, BitMapHeader, NumberToFind, HintIndex) -> int:
        # _ulong's usual case inline (an int), as in the other routines a driver calls often
        count = NumberToFind & ULONG_MASK if type(NumberToFind) is int else \
            _ulong("NumberToFind", NumberToFind)
        hint = HintIndex & ULONG_MASK if type(HintIndex) is int else _ulong("HintIndex", HintIndex)
        usual = self._usual_run(BitMapHeader, count, hint, False)
        if usual is not None:  # the run's bits changed in the bytes the search read
            found, at, length, bits, first_bit = usual
            run = ((1 << count) - 1) << (found - first_bit)
            self._mem[at:at + length] = (bits | run).to_bytes(length, "little")
            return found
        found = self._find_run(BitMapHeader, count, hint, False)
        if found != NO_INDEX:
            self._change_bits(BitMapHeader, found, count, True)
        return found

    @routine("ULONG RtlFindSetBitsAndClear(_In_ PRTL_BITMAP BitMapHeader, _In_ ULONG NumberToFind, "
             "_In_ ULONG HintIndex)")
    def RtlFindSetBitsAndClear(self, BitMapHeader, NumberToFind, HintIndex) -> int:
        # _ulong's usual case inline (an int), as in the other routines a driver calls often
        count = NumberToFind & ULONG_MASK if type(NumberToFind) is int else \
            _ulong("NumberToFind", NumberToFind)
        hint = HintIndex & ULONG_MASK if type(HintIndex) is int else _ulong("HintIndex", HintIndex)
        usual = self._usual_run(BitMapHeader, count, hint, True)
        if usual is not None:  # the run's bits changed in the bytes the search read
            found, at, length, bits, first_bit = usual
            run = ((1 << count) - 1) << (found - first_bit)
            self._mem[at:at + length] = (bits & ~run).to_bytes(length, "little")
            return found
        found = self._find_run(BitMapHeader, count, hint, True)
        if found != NO_INDEX:
            self._change_bits(BitMapHeader, found, count, False)
        return found

    @routine("ULONG RtlNumberOfSetBits(_In_ PRTL_BITMAP BitMapHeader)")
    def RtlNumberOfSetBits(self, BitMapHeader) -> int:
        return self._count_set(BitMapHeader)[1]

    @routine("ULONG RtlNumberOfClearBits(_In_ PRTL_BITMAP BitMapHeader)")
    def RtlNumberOfClearBits(self, BitMapHeader) -> int:
        size, set_bits = self._count_set(BitMapHeader)
        return size - set_bits

    @routine("ULONG RtlFindFirstRunClear(_In_ PRTL_BITMAP BitMapHeader, _Out_ PULONG StartingIndex)")
    def RtlFindFirstRunClear(self, BitMapHeader) -> tuple[int, int]:
        """(the length of the first run of clear bits, its first index); (0, SizeOfBitMap)
        when every bit is set (the index is then meaningless, as documented)."""
        return self._first_run(BitMapHeader, 0)

    @routine("ULONG RtlFindNextForwardRunClear(_In_ PRTL_BITMAP BitMapHeader, _In_ ULONG FromIndex, "
             "_Out_ PULONG StartingRunIndex)")
    def RtlFindNextForwardRunClear(self, BitMapHeader, FromIndex) -> tuple[int, int]:
        """(the length of the first run of clear bits at or after FromIndex, its index)."""
        return self._first_run(BitMapHeader, _ulong("FromIndex", FromIndex))

    def _first_run(self, header: int, start: int) -> tuple[int, int]:
        size, buffer = self._bitmap(header)
        if start >= size:
            return 0, size
        text = self._bit_text(buffer, start, size - start)
        first = text.find("0")
        if first < 0:
            return 0, size
        end = text.find("1", first)
        return (size - start if end < 0 else end) - first, start + first
