"""Counted strings (UNICODE_STRING, ANSI_STRING) and the C runtime's string routines that
ntoskrnl exports, working on strings in simulated memory.

The routines that allocate (``RtlUnicodeStringToAnsiString`` and friends with
AllocateDestinationString TRUE) take paged pool with tag "Strg", as ntoskrnl's
RtlpAllocateStringRoutine does, charged to the calling driver: a string it forgets to
free with RtlFreeUnicodeString / RtlFreeAnsiString is its leak, under "Strg".

The variadic C runtime routines (``_snwprintf``, ``_snprintf``, ...) are the native
bridge's (``ntpool.native.runtime``): their arguments are read as the x64 convention passes them.
"""

from __future__ import annotations

import functools
from array import array
from codecs import utf_16_le_decode

from ..constants import NtStatus, PoolType
from ..packing import x64_struct
from . import layouts as L
from .registry import register_type, routine

STATUS_BUFFER_TOO_SMALL = 0xC0000023
STATUS_BUFFER_OVERFLOW = 0x80000005
STATUS_NAME_TOO_LONG = 0xC0000106
STATUS_INVALID_PARAMETER = 0xC000000D
MAX_USTRING = 0xFFFE
# A UNICODE_STRING's Length, MaximumLength, (4 bytes of padding), Buffer, in one read.
_UNICODE_STRING = x64_struct("<HH4xQ")
assert (L.UNICODE_STRING.Length, L.UNICODE_STRING.MaximumLength, L.UNICODE_STRING.Buffer) == (0, 2, 8)


def _one_to_one(convert) -> array:
    """A WCHAR -> WCHAR case table, one to one as Windows' NLS tables map: ``convert``
    (str.upper, str.lower) of the character where that gives one BMP character (Unicode's
    simple case mapping), else the character itself (ß, whose full uppercase is "SS", stays
    ß, as Windows leaves it). Windows' own table (l_intl.nls) is not public (README
    departures)."""
    table = array("H", range(0x10000))
    for unit in range(0x10000):
        converted = convert(chr(unit))
        if len(converted) == 1 and ord(converted) < 0x10000:
            table[unit] = ord(converted)
    return table


@functools.cache
def upcase_table() -> array:
    return _one_to_one(str.upper)


@functools.cache
def downcase_table() -> array:
    return _one_to_one(str.lower)


def _units(data: bytes, case_insensitive) -> array | list:
    """The WCHARs of ``data`` (whole ones), upcased one by one when ``case_insensitive``."""
    units = array("H", data[:len(data) & ~1])  # the host is little-endian (ntpool.packing)
    if case_insensitive:
        table = upcase_table()
        return [table[unit] for unit in units]
    return units


def compare_wchars(a: bytes, b: bytes, case_insensitive) -> int:
    """RtlCompareUnicodeString's answer for two strings of WCHARs: the difference of the
    first two that differ (upcased when ``case_insensitive``), else of their lengths in
    WCHARs. WCHAR by WCHAR, as Windows compares: a surrogate is one unit like any other."""
    if a == b:
        return 0
    units_a, units_b = _units(a, case_insensitive), _units(b, case_insensitive)
    for x, y in zip(units_a, units_b):
        if x != y:
            return x - y
    return len(units_a) - len(units_b)

for _name in ("PCSZ", "PCWCH", "PWCH", "PCCH", "PCH", "wchar_t", "size_t", "int"):
    register_type(_name, 8 if _name.startswith("P") or _name == "size_t" else
                  2 if _name == "wchar_t" else 4,
                  signed=_name == "int", pointer=_name.startswith("P"))



class StringRoutines:
    """Rtl*String routines and ntoskrnl's C runtime exports."""

    def _string_allocate(self, size: int) -> int:
        return self._io_allocate(PoolType.PagedPool, size, L.TAG_STRING)

    def unicode_string(self, text: str, tag: int | None = None) -> int:
        """A UNICODE_STRING (and its NUL-terminated buffer) in paged pool, for calling the
        routines from Python; free it with ``free_unicode_string``."""
        encoded = text.encode("utf-16-le")
        va = self._io_allocate(PoolType.PagedPool, L.UNICODE_STRING.SIZE + len(encoded) + 2,
                               tag or L.TAG_STRING)
        self.write(va + L.UNICODE_STRING.SIZE, encoded + b"\0\0")
        self._put_unicode_string(va, len(encoded), len(encoded) + 2, va + L.UNICODE_STRING.SIZE)
        return va

    def free_unicode_string(self, va: int) -> None:
        self.pool.free(va, None)

    def string_text(self, va: int) -> str:
        """The text of the UNICODE_STRING at ``va``."""
        return self._unicode_string(va)

    @routine("VOID RtlInitUnicodeString(PUNICODE_STRING DestinationString, PCWSTR SourceString)")
    def RtlInitUnicodeString(self, DestinationString, SourceString) -> None:
        # The usual call, inline: an even SourceString whose NUL is on its own present page,
        # an aligned destination on a present page, nobody listening for memory writes. The
        # length is ``_wide_z``'s (its text's length in UTF-16 units, as decoded), the
        # UNICODE_STRING its 16 bytes; anything else the way below.
        if type(SourceString) is int and SourceString > 0 and not SourceString & 1 and \
                type(DestinationString) is int and not DestinationString & 7 and \
                DestinationString & 0xFFF <= 0xFF0 and not self._writes_published:
            tlb = self._tlb
            source_base = tlb.get(SourceString >> 12)
            destination_base = tlb.get(DestinationString >> 12)
            if source_base is not None and destination_base is not None:
                mem = self._mem
                start = source_base + (SourceString & 0xFFF)
                end = source_base + 0x1000
                nul = mem.find(b"\0\0", start, end)
                while nul >= 0 and (nul - start) & 1:
                    nul = mem.find(b"\0\0", nul + 1, end)
                if nul >= 0:
                    text = utf_16_le_decode(mem[start:nul], "replace", True)[0]  # bytes.decode's
                    length = min(len(text) * 2, MAX_USTRING - 2)
                    word = (destination_base + (DestinationString & 0xFFF)) >> 3
                    self._words[word] = length | (length + 2) << 16
                    self._words[word + 1] = SourceString
                    return
        if not SourceString:
            self._put_unicode_string(DestinationString, 0, 0, 0)
            return
        length = min(len(self._wide_z(SourceString)) * 2, MAX_USTRING - 2)
        self._put_unicode_string(DestinationString, length, length + 2, SourceString)

    @routine("NTSTATUS RtlInitUnicodeStringEx(PUNICODE_STRING DestinationString, PCWSTR SourceString)")
    def RtlInitUnicodeStringEx(self, DestinationString, SourceString) -> int:
        if SourceString:
            length = len(self._wide_z(SourceString)) * 2
            if length > MAX_USTRING - 2:
                return STATUS_NAME_TOO_LONG
        self.RtlInitUnicodeString(DestinationString, SourceString)
        return NtStatus.STATUS_SUCCESS

    @routine("VOID RtlInitAnsiString(PANSI_STRING DestinationString, PCSZ SourceString)")
    def RtlInitAnsiString(self, DestinationString, SourceString) -> None:
        if not SourceString:
            self._put_unicode_string(DestinationString, 0, 0, 0)
            return
        length = min(len(self._ansi_z(SourceString)), MAX_USTRING - 1)
        self._put_unicode_string(DestinationString, length, length + 1, SourceString)

    @routine("VOID RtlInitString(PANSI_STRING DestinationString, PCSZ SourceString)")
    def RtlInitString(self, DestinationString, SourceString) -> None:
        self.RtlInitAnsiString(DestinationString, SourceString)

    def _string_fields(self, va: int) -> tuple[int, int, int]:
        """(Length, MaximumLength, Buffer) of the UNICODE_STRING at ``va``: in one read when its
        16 bytes lie in one page (the usual string), else field by field, each read faulting
        where Windows' read of that field would."""
        if type(va) is int and va & 0xFFF <= 0x1000 - _UNICODE_STRING.size:
            return _UNICODE_STRING.unpack(self.read(va, _UNICODE_STRING.size))
        return (self._get16(va + L.UNICODE_STRING.Length), self._get16(va + L.UNICODE_STRING.MaximumLength),
                self._get64(va + L.UNICODE_STRING.Buffer))

    def _wchars(self, length: int, buffer: int) -> bytes:
        """A counted string's bytes: the whole WCHARs of ``length`` bytes at ``buffer`` (none
        when either is 0)."""
        length &= ~1
        return self.read(buffer, length) if length and buffer else b""

    @routine("VOID RtlCopyUnicodeString(PUNICODE_STRING DestinationString, PCUNICODE_STRING SourceString)")
    def RtlCopyUnicodeString(self, DestinationString, SourceString) -> None:
        """Copy as much as fits; NUL-terminate when there is room."""
        if not SourceString:
            self._put16(DestinationString + L.UNICODE_STRING.Length, 0)
            return
        length, _, source = self._string_fields(SourceString)
        _, maximum, buffer = self._string_fields(DestinationString)
        count = min(length, maximum) & ~1
        terminated = count + 2 <= maximum
        if terminated and type(buffer) is int and (buffer & 0xFFF) + count + 2 <= 0x1000:
            # The copy and its NUL in one write: on one page, nothing between them can differ.
            self.write(buffer, self.read(source, count) + b"\0\0" if count else b"\0\0")
        else:
            if count:
                self.write(buffer, self.read(source, count))
            if terminated:
                self.write(buffer + count, b"\0\0")
        self._put16(DestinationString + L.UNICODE_STRING.Length, count)

    @routine("NTSTATUS RtlAppendUnicodeToString(PUNICODE_STRING Destination, PCWSTR Source)")
    def RtlAppendUnicodeToString(self, Destination, Source) -> int:
        if not Source:
            return NtStatus.STATUS_SUCCESS
        data = self._wide_z(Source).encode("utf-16-le")
        return self._append(Destination, data)

    @routine("NTSTATUS RtlAppendUnicodeStringToString(PUNICODE_STRING Destination, PCUNICODE_STRING Source)")
    def RtlAppendUnicodeStringToString(self, Destination, Source) -> int:
        length, _, buffer = self._string_fields(Source)
        return self._append(Destination, self.read(buffer, length) if length else b"")

    def _append(self, destination: int, data: bytes) -> int:
        length, maximum, buffer = self._string_fields(destination)
        if length + len(data) > maximum:
            return STATUS_BUFFER_TOO_SMALL
        if data:
            self.write(buffer + length, data)
        length += len(data)
        if length + 2 <= maximum:
            self.write(buffer + length, b"\0\0")
        self._put16(destination + L.UNICODE_STRING.Length, length)
        return NtStatus.STATUS_SUCCESS

    @routine("LONG RtlCompareUnicodeString(PCUNICODE_STRING String1, PCUNICODE_STRING String2, "
             "BOOLEAN CaseInSensitive)")
    def RtlCompareUnicodeString(self, String1, String2, CaseInSensitive) -> int:
        """The difference of the first WCHARs that differ (upcased when CaseInSensitive),
        else of the lengths in WCHARs (``compare_wchars``)."""
        length1, _, buffer1 = self._string_fields(String1)
        length2, _, buffer2 = self._string_fields(String2)
        return compare_wchars(self._wchars(length1, buffer1), self._wchars(length2, buffer2),
                              CaseInSensitive)

    @routine("BOOLEAN RtlEqualUnicodeString(PCUNICODE_STRING String1, PCUNICODE_STRING String2, "
             "BOOLEAN CaseInSensitive)")
    def RtlEqualUnicodeString(self, String1, String2, CaseInSensitive) -> int:
        """Strings of different Lengths are unequal before either buffer is read, as in
        Windows; else equal when every WCHAR is (upcased when CaseInSensitive)."""
        length1, _, buffer1 = self._string_fields(String1)
        length2, _, buffer2 = self._string_fields(String2)
        if length1 != length2:
            return 0
        return int(compare_wchars(self._wchars(length1, buffer1), self._wchars(length2, buffer2),
                                  CaseInSensitive) == 0)

    @routine("BOOLEAN RtlPrefixUnicodeString(PCUNICODE_STRING String1, PCUNICODE_STRING String2, "
             "BOOLEAN CaseInSensitive)")
    def RtlPrefixUnicodeString(self, String1, String2, CaseInSensitive) -> int:
        """Whether String1's WCHARs begin String2 (upcased when CaseInSensitive); a longer
        String1 does not, before either buffer is read, as in Windows."""
        length1, _, buffer1 = self._string_fields(String1)
        length2, _, buffer2 = self._string_fields(String2)
        if length1 > length2:
            return 0
        a = self._wchars(length1, buffer1)
        return int(compare_wchars(a, self._wchars(length2, buffer2)[:len(a)], CaseInSensitive) == 0)

    def _store_converted(self, destination: int, data: bytes, terminator: bytes, allocate: bool) -> int:
        if len(data) > MAX_USTRING - len(terminator):
            return STATUS_INVALID_PARAMETER
        if allocate:
            buffer = self._string_allocate(len(data) + len(terminator))
            if not buffer:
                return NtStatus.STATUS_NO_MEMORY
            self.write(buffer, data + terminator)
            self._put_unicode_string(destination, len(data), len(data) + len(terminator), buffer)
            return NtStatus.STATUS_SUCCESS
        _, maximum, buffer = self._string_fields(destination)
        if len(data) > maximum:
            count = maximum & ~(len(terminator) - 1)
            if count:
                self.write(buffer, data[:count])
            self._put16(destination + L.UNICODE_STRING.Length, count)
            return STATUS_BUFFER_OVERFLOW
        self.write(buffer, data + (terminator if len(data) + len(terminator) <= maximum else b""))
        self._put16(destination + L.UNICODE_STRING.Length, len(data))
        return NtStatus.STATUS_SUCCESS

    @routine("NTSTATUS RtlUnicodeStringToAnsiString(PANSI_STRING DestinationString, "
             "PCUNICODE_STRING SourceString, BOOLEAN AllocateDestinationString)")
    def RtlUnicodeStringToAnsiString(self, DestinationString, SourceString, AllocateDestinationString) -> int:
        """Characters outside the ANSI code page become '?'; with AllocateDestinationString
        the buffer is paged pool "Strg", freed by RtlFreeAnsiString."""
        text = self._unicode_string(SourceString)
        data = text.encode("cp1252", "replace")
        return self._store_converted(DestinationString, data, b"\0", bool(AllocateDestinationString))

    @routine("NTSTATUS RtlAnsiStringToUnicodeString(PUNICODE_STRING DestinationString, "
             "PCANSI_STRING SourceString, BOOLEAN AllocateDestinationString)")
    def RtlAnsiStringToUnicodeString(self, DestinationString, SourceString, AllocateDestinationString) -> int:
        length, _, buffer = self._string_fields(SourceString)
        text = self.read(buffer, length).decode("cp1252", "replace") if length else ""
        return self._store_converted(DestinationString, text.encode("utf-16-le"), b"\0\0",
                                     bool(AllocateDestinationString))

    @routine("NTSTATUS RtlUpcaseUnicodeString(PUNICODE_STRING DestinationString, "
             "PCUNICODE_STRING SourceString, BOOLEAN AllocateDestinationString)")
    def RtlUpcaseUnicodeString(self, DestinationString, SourceString, AllocateDestinationString) -> int:
        length, _, buffer = self._string_fields(SourceString)
        upcased = array("H", _units(self._wchars(length, buffer), True)).tobytes()
        return self._store_converted(DestinationString, upcased, b"", bool(AllocateDestinationString))

    @routine("VOID RtlFreeUnicodeString(PUNICODE_STRING UnicodeString)")
    def RtlFreeUnicodeString(self, UnicodeString) -> None:
        """Free a string an Rtl routine allocated (ExFreePool of its Buffer) and zero it."""
        buffer = self._get64(UnicodeString + L.UNICODE_STRING.Buffer)
        if buffer:
            self.pool.free(buffer, None)
        self._put_unicode_string(UnicodeString, 0, 0, 0)

    @routine("VOID RtlFreeAnsiString(PANSI_STRING AnsiString)")
    def RtlFreeAnsiString(self, AnsiString) -> None:
        self.RtlFreeUnicodeString(AnsiString)

    @routine("NTSTATUS RtlUnicodeStringToInteger(PCUNICODE_STRING String, ULONG Base, _Out_ PULONG Value)")
    def RtlUnicodeStringToInteger(self, String, Base) -> tuple[int, int]:
        text = self._unicode_string(String).strip()
        sign = 1
        if text[:1] in "+-" and text:
            sign = -1 if text[0] == "-" else 1
            text = text[1:]
        base = Base
        if not base:
            base = 10
            for prefix, value in (("0x", 16), ("0o", 8), ("0b", 2)):
                if text.lower().startswith(prefix):
                    base, text = value, text[2:]
        if base not in (2, 8, 10, 16):
            return STATUS_INVALID_PARAMETER, 0
        digits = ""
        for char in text:
            if char.lower() not in "0123456789abcdef"[:base]:
                break
            digits += char
        value = int(digits, base) if digits else 0
        return NtStatus.STATUS_SUCCESS, (sign * value) & 0xFFFFFFFF

    @routine("NTSTATUS RtlIntegerToUnicodeString(ULONG Value, ULONG Base, PUNICODE_STRING String)")
    def RtlIntegerToUnicodeString(self, Value, Base, String) -> int:
        base = Base or 10
        if base not in (2, 8, 10, 16):
            return STATUS_INVALID_PARAMETER
        text = {2: f"{Value:b}", 8: f"{Value:o}", 10: f"{Value}", 16: f"{Value:X}"}[base]
        _, maximum, buffer = self._string_fields(String)
        data = text.encode("utf-16-le")
        if len(data) > maximum:
            return STATUS_BUFFER_OVERFLOW
        self.write(buffer, data + (b"\0\0" if len(data) + 2 <= maximum else b""))
        self._put16(String + L.UNICODE_STRING.Length, len(data))
        return NtStatus.STATUS_SUCCESS

    # --- the C runtime ntoskrnl exports ------------------------------------------------------

    @routine("size_t wcslen(PCWSTR str)")
    def wcslen(self, str) -> int:
        return len(self._wide_z(str))

    @routine("size_t strlen(PCSTR str)")
    def strlen(self, str) -> int:
        return len(self._ansi_z(str))

    @routine("PWSTR wcschr(PCWSTR str, wchar_t c)")
    def wcschr(self, str, c) -> int:
        text = self._wide_z(str)
        c &= 0xFFFF
        if c == 0:
            return str + 2 * len(text)
        index = text.find(chr(c))
        return 0 if index < 0 else str + 2 * index

    @routine("PWSTR wcsrchr(PCWSTR str, wchar_t c)")
    def wcsrchr(self, str, c) -> int:
        text = self._wide_z(str)
        c &= 0xFFFF
        if c == 0:
            return str + 2 * len(text)
        index = text.rfind(chr(c))
        return 0 if index < 0 else str + 2 * index

    @routine("PSTR strchr(PCSTR str, int c)")
    def strchr(self, str, c) -> int:
        text = self._ansi_z(str)
        c &= 0xFF
        if c == 0:
            return str + len(text)
        index = text.find(bytes([c]))
        return 0 if index < 0 else str + index

    def _compare(self, a: str, b: str, count: int | None, fold: bool) -> int:
        if count is not None:
            a, b = a[:count], b[:count]
        if fold:
            a, b = a.lower(), b.lower()
        for x, y in zip(a, b):
            if x != y:
                return (ord(x) - ord(y)) & 0xFFFFFFFF
        return (len(a) - len(b)) & 0xFFFFFFFF

    @routine("int _wcsnicmp(PCWSTR string1, PCWSTR string2, size_t count)")
    def _wcsnicmp(self, string1, string2, count) -> int:
        return self._compare(self._wide_z(string1, count), self._wide_z(string2, count), count, True)

    @routine("int _wcsicmp(PCWSTR string1, PCWSTR string2)")
    def _wcsicmp(self, string1, string2) -> int:
        return self._compare(self._wide_z(string1), self._wide_z(string2), None, True)

    @routine("int wcscmp(PCWSTR string1, PCWSTR string2)")
    def wcscmp(self, string1, string2) -> int:
        return self._compare(self._wide_z(string1), self._wide_z(string2), None, False)

    @routine("int wcsncmp(PCWSTR string1, PCWSTR string2, size_t count)")
    def wcsncmp(self, string1, string2, count) -> int:
        return self._compare(self._wide_z(string1, count), self._wide_z(string2, count), count, False)

    @routine("int _stricmp(PCSTR string1, PCSTR string2)")
    def _stricmp(self, string1, string2) -> int:
        return self._compare(self._ansi_z(string1).decode("latin-1"),
                             self._ansi_z(string2).decode("latin-1"), None, True)

    @routine("int strcmp(PCSTR string1, PCSTR string2)")
    def strcmp(self, string1, string2) -> int:
        return self._compare(self._ansi_z(string1).decode("latin-1"),
                             self._ansi_z(string2).decode("latin-1"), None, False)

    @routine("int strncmp(PCSTR string1, PCSTR string2, size_t count)")
    def strncmp(self, string1, string2, count) -> int:
        return self._compare(self._ansi_z(string1, count).decode("latin-1"),
                             self._ansi_z(string2, count).decode("latin-1"), count, False)

    @routine("PWSTR wcscpy(PWSTR destination, PCWSTR source)")
    def wcscpy(self, destination, source) -> int:
        self.write(destination, self._wide_z(source).encode("utf-16-le") + b"\0\0")
        return destination

    @routine("PWSTR wcsncpy(PWSTR destination, PCWSTR source, size_t count)")
    def wcsncpy(self, destination, source, count) -> int:
        data = self._wide_z(source, count).encode("utf-16-le")[:2 * count]
        self.write(destination, data + bytes(2 * count - len(data)))
        return destination

    @routine("PWSTR wcscat(PWSTR destination, PCWSTR source)")
    def wcscat(self, destination, source) -> int:
        end = destination + 2 * len(self._wide_z(destination))
        self.write(end, self._wide_z(source).encode("utf-16-le") + b"\0\0")
        return destination

    @routine("PSTR strcpy(PSTR destination, PCSTR source)")
    def strcpy(self, destination, source) -> int:
        self.write(destination, self._ansi_z(source) + b"\0")
        return destination

    @routine("PSTR strncpy(PSTR destination, PCSTR source, size_t count)")
    def strncpy(self, destination, source, count) -> int:
        data = self._ansi_z(source, count)[:count]
        self.write(destination, data + bytes(count - len(data)))
        return destination

    @routine("PVOID memchr(PVOID buffer, int c, size_t count)")
    def memchr(self, buffer, c, count) -> int:
        index = self.read(buffer, count).find(bytes([c & 0xFF])) if count else -1
        return 0 if index < 0 else buffer + index

    @routine("int towupper(int c)")
    def towupper(self, c) -> int:
        return upcase_table()[c & 0xFFFF]

    @routine("int towlower(int c)")
    def towlower(self, c) -> int:
        return downcase_table()[c & 0xFFFF]

