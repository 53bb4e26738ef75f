"""What a driver asks about the system it runs on: ZwQuerySystemInformation (basic, module,
pool tag and big pool information), the version of Windows (RtlGetVersion, PsGetVersion),
the processors and the current thread's affinity, the current thread and previous mode.

The answers are the machine's: ``k.windows``'s numbers, ``k.processors``, the loaded images
(ntoskrnl first), the tag tracker poolmon reads (``k.pool.tracker``) and the pools' big
allocations. A list that does not fit the caller's buffer is answered as Windows does
(ExGetPoolTagInfo and its siblings): the entries that fit are written, Count says how many
there are, and the status is STATUS_INFO_LENGTH_MISMATCH with the length needed in
ReturnLength; a buffer that holds less than Count writes nothing. A buffer the caller cannot
write faults as the driver's own write would (0x50).

One thread of control runs every driver: it has an ETHREAD of its own (the System process's
thread, Windows 7 x64 layout, with the fields these routines read) and is a system thread;
its PreviousMode is UserMode while a driver handles a request from user mode, else KernelMode.
"""

from __future__ import annotations

import struct
from contextlib import contextmanager

from ..packing import x64_struct
from ..constants import APC_LEVEL, DISPATCH_LEVEL, PAGE_SIZE, KERNEL_IMAGE_BYTES, NtStatus
from ..drivers import LDR_DLL_BASE
from ..machine.user_space import MM_HIGHEST_USER_ADDRESS
from .registry import register_type, routine

STATUS_INVALID_INFO_CLASS = 0xC0000003
STATUS_INFO_LENGTH_MISMATCH = 0xC0000004
STATUS_INVALID_PARAMETER = 0xC000000D

# SYSTEM_INFORMATION_CLASS values ntpool answers.
SystemBasicInformation = 0
SystemModuleInformation = 11
SystemPoolTagInformation = 22
SystemBigPoolInformation = 66

# SYSTEM_BASIC_INFORMATION (x64, 0x40 bytes): Reserved, TimerResolution, PageSize,
# NumberOfPhysicalPages, LowestPhysicalPageNumber, HighestPhysicalPageNumber,
# AllocationGranularity (ULONGs), MinimumUserModeAddress, MaximumUserModeAddress,
# ActiveProcessorsAffinityMask (ULONG_PTRs), NumberOfProcessors (CCHAR).
SYSTEM_BASIC_INFORMATION = x64_struct("<7I4xQQQb7x")
TIMER_RESOLUTION = 156250  # the clock's default interval, 15.625 ms in 100 ns units
ALLOCATION_GRANULARITY = 0x10000
MINIMUM_USER_MODE_ADDRESS = 0x10000  # MM_LOWEST_USER_ADDRESS
# RTL_PROCESS_MODULES: NumberOfModules, then (at 8) RTL_PROCESS_MODULE_INFORMATION entries of
# 0x128 bytes: Section, MappedBase, ImageBase, ImageSize, Flags, LoadOrderIndex,
# InitOrderIndex, LoadCount, OffsetToFileName, FullPathName[256].
RTL_PROCESS_MODULE_INFORMATION = x64_struct("<QQQIIHHHH256s")
# SYSTEM_POOLTAG_INFORMATION: Count, then (at 8) SYSTEM_POOLTAG entries of 0x28 bytes:
# TagUlong, PagedAllocs, PagedFrees, PagedUsed (SIZE_T), NonPagedAllocs, NonPagedFrees,
# NonPagedUsed (SIZE_T).
SYSTEM_POOLTAG = x64_struct("<III4xQIIQ")
# SYSTEM_BIGPOOL_INFORMATION: Count, then (at 8) SYSTEM_BIGPOOL_ENTRY entries of 0x18 bytes:
# VirtualAddress (bit 0: NonPaged), SizeInBytes, TagUlong.
SYSTEM_BIGPOOL_ENTRY = x64_struct("<QQI4x")
LIST_HEADER_BYTES = 8  # FIELD_OFFSET of the entries: the ULONG count, aligned for them
LDR_IMAGE_FLAGS = 0  # ntpool's loaded-module entries keep no loader flags
NTOSKRNL_PATH = "\\SystemRoot\\system32\\ntoskrnl.exe"
DRIVERS_PATH = "\\SystemRoot\\system32\\drivers\\"

# RTL_OSVERSIONINFOW (0x114 bytes) and RTL_OSVERSIONINFOEXW (0x11C): dwOSVersionInfoSize,
# dwMajorVersion, dwMinorVersion, dwBuildNumber, dwPlatformId, szCSDVersion[128]; then
# wServicePackMajor, wServicePackMinor, wSuiteMask, wProductType, wReserved.
RTL_OSVERSIONINFOW_SIZE = 0x114
RTL_OSVERSIONINFOEXW_SIZE = 0x11C
OSVERSIONINFO_NUMBERS = struct.Struct("<IIII")  # from dwMajorVersion
OSVERSIONINFOEX_TAIL = struct.Struct("<HHHBB")  # at 0x114
VER_PLATFORM_WIN32_NT = 2
VER_SUITE_SINGLEUSERTS = 0x100
VER_NT_WORKSTATION = 1

# RtlVerifyVersionInfo's TypeMask bits (VER_MINORVERSION 0x1 ... VER_PRODUCT_TYPE 0x80, by bit
# number) and ConditionMask: 3 bits a type, at 3 x the type's bit number (VerSetConditionMask).
VER_MINORVERSION_BIT, VER_MAJORVERSION_BIT, VER_BUILDNUMBER_BIT, VER_PLATFORMID_BIT, \
    VER_SERVICEPACKMINOR_BIT, VER_SERVICEPACKMAJOR_BIT, VER_SUITENAME_BIT, VER_PRODUCT_TYPE_BIT = range(8)
VER_ALL_TYPES = 0xFF
VER_NUM_BITS_PER_CONDITION_MASK = 3
VER_CONDITION_MASK = 7
VER_EQUAL, VER_GREATER, VER_GREATER_EQUAL, VER_LESS, VER_LESS_EQUAL, VER_AND, VER_OR = range(1, 8)
STATUS_REVISION_MISMATCH = 0xC0000059
ULONGLONG = (1 << 64) - 1

# Processor groups: x64 Windows 7 has at most 64 processors to a group; ntpool's machine
# is one group (group 0).
ALL_PROCESSOR_GROUPS = 0xFFFF

# ETHREAD (Windows 7 SP1 x64, 0x498 bytes; its KTHREAD Tcb 0x368): Tcb.Header.Type,
# Tcb.ApcState.Process, Tcb.PreviousMode, Tcb.Process, Cid, CrossThreadFlags.
ETHREAD_SIZE = 0x498
THREAD_OBJECT_TYPE = 6  # KOBJECTS ThreadObject
KTHREAD_APC_STATE_PROCESS = 0x70
KTHREAD_PREVIOUS_MODE = 0x1F6
KTHREAD_PROCESS = 0x210
ETHREAD_CID = 0x3B8
ETHREAD_CROSS_THREAD_FLAGS = 0x450
PS_CROSS_THREAD_FLAGS_SYSTEM = 0x10
KernelMode, UserMode = 0, 1
ULONG = 0xFFFFFFFF  # the counters are ULONGs: they wrap as Windows' do

register_type("SYSTEM_INFORMATION_CLASS", 4, signed=True)
register_type("PRTL_OSVERSIONINFOEXW", 8, pointer=True)
register_type("KAFFINITY", 8)
register_type("PKAFFINITY", 8, pointer=True, pointee="KAFFINITY")
register_type("PRTL_OSVERSIONINFOW", 8, pointer=True)
register_type("PROCESSOR_NUMBER", 4)  # USHORT Group, UCHAR Number, UCHAR Reserved
register_type("PPROCESSOR_NUMBER", 8, pointer=True, pointee="PROCESSOR_NUMBER")


class SystemInformationRoutines:
    def _init_sysinfo(self) -> None:
        # The current thread's affinity: 0 while it runs with its user affinity, else the
        # system affinity a driver set; where it ran before the first one (to go back to).
        self.system_affinity = 0
        self._user_affinity_processor = 0
        self.current_thread = self._make_system_thread()
        csd = self.windows_csd_version_text()
        self.csd_version_string = self.kernel_data.reserve(2 * len(csd) + 2, align=8)
        self.write(self.csd_version_string, csd.encode("utf-16-le") + b"\0\0")

    def _make_system_thread(self) -> int:
        thread = self.kernel_data.reserve(ETHREAD_SIZE, align=16)
        process = self.system_process.address
        self._put8(thread, THREAD_OBJECT_TYPE)
        self._put64(thread + KTHREAD_APC_STATE_PROCESS, process)
        self._put8(thread + KTHREAD_PREVIOUS_MODE, KernelMode)
        self._put64(thread + KTHREAD_PROCESS, process)
        self._put64(thread + ETHREAD_CID, self.system_process.pid)
        self._put64(thread + ETHREAD_CID + 8, self.system_process.pid + 4)  # the next client id
        self._put32(thread + ETHREAD_CROSS_THREAD_FLAGS, PS_CROSS_THREAD_FLAGS_SYSTEM)
        return thread

    def windows_csd_version_text(self) -> str:
        """CmCSDVersionString: "Service Pack 1" on Windows 7 SP1, empty since Windows 10."""
        pack = self.windows.csd_version >> 8
        return f"Service Pack {pack}" if pack else ""

    # --- ZwQuerySystemInformation -----------------------------------------------------------

    @routine("NTSTATUS ZwQuerySystemInformation(SYSTEM_INFORMATION_CLASS SystemInformationClass, "
             "PVOID SystemInformation, ULONG SystemInformationLength, _Out_opt_ PULONG ReturnLength)")
    def ZwQuerySystemInformation(self, SystemInformationClass, SystemInformation,
                                 SystemInformationLength) -> tuple[int, int]:
        """(status, ReturnLength) for the classes ntpool answers; STATUS_INVALID_INFO_CLASS
        for the others."""
        length = SystemInformationLength & 0xFFFFFFFF
        if SystemInformationClass == SystemBasicInformation:
            return self._basic_information(SystemInformation, length)
        if SystemInformationClass == SystemModuleInformation:
            entries = [RTL_PROCESS_MODULE_INFORMATION.pack(*row) for row in self._module_rows()]
            return self._write_list(SystemInformation, length, entries, RTL_PROCESS_MODULE_INFORMATION.size)
        if SystemInformationClass == SystemPoolTagInformation:
            entries = [SYSTEM_POOLTAG.pack(row.TagUlong, row.PagedAllocs & ULONG, row.PagedFrees & ULONG,
                                           row.PagedUsed, row.NonPagedAllocs & ULONG,
                                           row.NonPagedFrees & ULONG, row.NonPagedUsed)
                       for row in self.pool.tracker.snapshot()]
            return self._write_list(SystemInformation, length, entries, SYSTEM_POOLTAG.size)
        if SystemInformationClass == SystemBigPoolInformation:
            entries = [SYSTEM_BIGPOOL_ENTRY.pack(*row) for row in self.big_pool_entries()]
            return self._write_list(SystemInformation, length, entries, SYSTEM_BIGPOOL_ENTRY.size)
        return STATUS_INVALID_INFO_CLASS, 0

    # ntoskrnl exports the system service too; called from kernel mode it is the same query.
    NtQuerySystemInformation = routine(
        "NTSTATUS NtQuerySystemInformation(SYSTEM_INFORMATION_CLASS SystemInformationClass, "
        "PVOID SystemInformation, ULONG SystemInformationLength, _Out_opt_ PULONG ReturnLength)"
    )(ZwQuerySystemInformation)

    def _basic_information(self, buffer: int, length: int) -> tuple[int, int]:
        size = SYSTEM_BASIC_INFORMATION.size
        if length != size:  # this class takes exactly its structure
            return STATUS_INFO_LENGTH_MISMATCH, size
        frames = self.physical.frame_count
        self.write(buffer, SYSTEM_BASIC_INFORMATION.pack(
            0, TIMER_RESOLUTION, PAGE_SIZE, frames, 0, frames - 1, ALLOCATION_GRANULARITY,
            MINIMUM_USER_MODE_ADDRESS, MM_HIGHEST_USER_ADDRESS, self._active_mask(), self.processors))
        return NtStatus.STATUS_SUCCESS, size

    def _write_list(self, buffer: int, length: int, entries: list[bytes], entry_size: int) -> tuple[int, int]:
        needed = LIST_HEADER_BYTES + len(entries) * entry_size
        if length < 4:
            return STATUS_INFO_LENGTH_MISMATCH, needed
        fit = max(0, min(len(entries), (length - LIST_HEADER_BYTES) // entry_size))
        self.write(buffer, len(entries).to_bytes(4, "little"))
        if fit:
            self.write(buffer + LIST_HEADER_BYTES, b"".join(entries[:fit]))
        status = NtStatus.STATUS_SUCCESS if fit == len(entries) else STATUS_INFO_LENGTH_MISMATCH
        return status, needed

    def _module_rows(self) -> list[tuple]:
        """RTL_PROCESS_MODULE_INFORMATION rows: ntoskrnl, then the loaded drivers in load order."""
        images = [(NTOSKRNL_PATH, self.kernel_data.base, KERNEL_IMAGE_BYTES)]
        for loaded in self.drivers:
            base, _, size = struct.unpack("<QQQ", self.read(loaded.entry_va + LDR_DLL_BASE, 24))
            images.append((DRIVERS_PATH + loaded.name, base, size))
        rows = []
        for index, (path, base, size) in enumerate(images):
            encoded = path.encode("ascii", "replace")[:255]
            rows.append((0, 0, base, size & 0xFFFFFFFF, LDR_IMAGE_FLAGS, index, index, 1,
                         encoded.rfind(b"\\") + 1, encoded))
        return rows

    def big_pool_entries(self) -> list[tuple[int, int, int]]:
        """SYSTEM_BIGPOOL_ENTRY rows (VirtualAddress with bit 0 set for nonpaged pool,
        SizeInBytes, TagUlong) of every big allocation, by address."""
        rows = []
        seen = set()
        for pool in (self.nonpaged_pool, self.nonpaged_pool_nx, self.paged_pool):
            if pool is None or id(pool) in seen:
                continue
            seen.add(id(pool))
            nonpaged = 0 if pool is self.paged_pool else 1
            for va, (tag, pages) in pool.big_pages.items():
                rows.append((va | nonpaged, pages * PAGE_SIZE, tag & 0xFFFFFFFF))
        return sorted(rows)

    # --- the version of Windows ---------------------------------------------------------------

    @routine("NTSTATUS RtlGetVersion(PRTL_OSVERSIONINFOW lpVersionInformation)")
    def RtlGetVersion(self, lpVersionInformation) -> int:
        """Fill an RTL_OSVERSIONINFOW, or an RTL_OSVERSIONINFOEXW when its
        dwOSVersionInfoSize says so, with the machine's Windows."""
        info = lpVersionInformation
        size = self._get32(info)
        windows = self.windows
        self.write(info + 4, OSVERSIONINFO_NUMBERS.pack(windows.major, windows.minor, windows.build,
                                                        VER_PLATFORM_WIN32_NT))
        csd = self.windows_csd_version_text().encode("utf-16-le")
        self.write(info + 0x14, csd + bytes(256 - len(csd)))
        if size == RTL_OSVERSIONINFOEXW_SIZE:
            self.write(info + RTL_OSVERSIONINFOW_SIZE, OSVERSIONINFOEX_TAIL.pack(
                windows.csd_version >> 8, windows.csd_version & 0xFF, VER_SUITE_SINGLEUSERTS,
                VER_NT_WORKSTATION, 0))
        return NtStatus.STATUS_SUCCESS

    @routine("BOOLEAN PsGetVersion(_Out_opt_ PULONG MajorVersion, _Out_opt_ PULONG MinorVersion, "
             "_Out_opt_ PULONG BuildNumber, _Inout_opt_ PUNICODE_STRING CSDVersion)")
    def PsGetVersion(self, CSDVersion) -> tuple[int, int, int, int]:
        """(FALSE: a free build, major, minor, build); a CSDVersion UNICODE_STRING is made to
        describe the kernel's service pack string (CmCSDVersionString)."""
        windows = self.windows
        if CSDVersion:
            text_bytes = 2 * len(self.windows_csd_version_text())
            self._put_unicode_string(CSDVersion, text_bytes, text_bytes + 2, self.csd_version_string)
        return 0, windows.major, windows.minor, windows.build

    # --- RtlVerifyVersionInfo and VerSetConditionMask --------------------------------------------

    @routine("ULONGLONG VerSetConditionMask(ULONGLONG ConditionMask, ULONG TypeMask, UCHAR Condition)")
    def VerSetConditionMask(self, ConditionMask, TypeMask, Condition) -> int:
        """ConditionMask with ``Condition`` (VER_EQUAL...VER_OR) in the 3 bits of the most
        significant VER_* type in ``TypeMask``; unchanged for no type or condition 0."""
        condition = Condition & VER_CONDITION_MASK
        types = TypeMask & VER_ALL_TYPES
        if not types or not condition:
            return ConditionMask
        index = types.bit_length() - 1
        return (ConditionMask | condition << (VER_NUM_BITS_PER_CONDITION_MASK * index)) & ULONGLONG

    @routine("NTSTATUS RtlVerifyVersionInfo(PRTL_OSVERSIONINFOEXW VersionInfo, ULONG TypeMask, "
             "ULONGLONG ConditionMask)")
    def RtlVerifyVersionInfo(self, VersionInfo, TypeMask, ConditionMask) -> int:
        """STATUS_SUCCESS when the machine's Windows meets every requirement TypeMask names,
        STATUS_REVISION_MISMATCH when one fails, STATUS_INVALID_PARAMETER for no type or no
        condition. Major, minor and service pack numbers are compared as one version under
        the condition of the most significant one named (Microsoft's documentation)."""
        if not TypeMask & VER_ALL_TYPES or not ConditionMask:
            return STATUS_INVALID_PARAMETER
        wanted = self._version_fields(VersionInfo)
        have = self._machine_version_fields()

        def condition(bit: int) -> int:
            return ConditionMask >> (VER_NUM_BITS_PER_CONDITION_MASK * bit) & VER_CONDITION_MASK

        for bit in (VER_PRODUCT_TYPE_BIT, VER_PLATFORMID_BIT, VER_BUILDNUMBER_BIT):
            if TypeMask >> bit & 1 and not _compare(have[bit], wanted[bit], condition(bit)):
                return STATUS_REVISION_MISMATCH
        if TypeMask >> VER_SUITENAME_BIT & 1:
            suites, how = wanted[VER_SUITENAME_BIT], condition(VER_SUITENAME_BIT)
            mine = have[VER_SUITENAME_BIT]
            met = (mine & suites) == suites if how == VER_AND else bool(mine & suites) if how == VER_OR \
                else _compare(mine, suites, how)
            if not met:
                return STATUS_REVISION_MISMATCH
        # Major, minor, service pack major, minor: most significant first, one condition.
        ordered = [bit for bit in (VER_MAJORVERSION_BIT, VER_MINORVERSION_BIT,
                                   VER_SERVICEPACKMAJOR_BIT, VER_SERVICEPACKMINOR_BIT) if TypeMask >> bit & 1]
        if ordered:
            how = condition(ordered[0])
            mine = tuple(have[bit] for bit in ordered)
            theirs = tuple(wanted[bit] for bit in ordered)
            if not _compare(mine, theirs, how):
                return STATUS_REVISION_MISMATCH
        return NtStatus.STATUS_SUCCESS

    def _version_fields(self, info: int) -> dict[int, int]:
        major, minor, build, platform = OSVERSIONINFO_NUMBERS.unpack(self.read(info + 4, 16))
        sp_major, sp_minor, suite, product, _ = OSVERSIONINFOEX_TAIL.unpack(
            self.read(info + RTL_OSVERSIONINFOW_SIZE, OSVERSIONINFOEX_TAIL.size))
        return {VER_MINORVERSION_BIT: minor, VER_MAJORVERSION_BIT: major, VER_BUILDNUMBER_BIT: build,
                VER_PLATFORMID_BIT: platform, VER_SERVICEPACKMINOR_BIT: sp_minor,
                VER_SERVICEPACKMAJOR_BIT: sp_major, VER_SUITENAME_BIT: suite, VER_PRODUCT_TYPE_BIT: product}

    def _machine_version_fields(self) -> dict[int, int]:
        windows = self.windows
        return {VER_MINORVERSION_BIT: windows.minor, VER_MAJORVERSION_BIT: windows.major,
                VER_BUILDNUMBER_BIT: windows.build, VER_PLATFORMID_BIT: VER_PLATFORM_WIN32_NT,
                VER_SERVICEPACKMINOR_BIT: windows.csd_version & 0xFF,
                VER_SERVICEPACKMAJOR_BIT: windows.csd_version >> 8,
                VER_SUITENAME_BIT: VER_SUITE_SINGLEUSERTS, VER_PRODUCT_TYPE_BIT: VER_NT_WORKSTATION}

    # --- processors and affinity ----------------------------------------------------------------

    def _active_mask(self) -> int:
        return (1 << self.processors) - 1

    @routine("ULONG KeQueryActiveProcessorCount(_Out_opt_ PKAFFINITY ActiveProcessors)")
    def KeQueryActiveProcessorCount(self) -> tuple[int, int]:
        """(the number of processors, their KAFFINITY mask)."""
        return self.processors, self._active_mask()

    @routine("ULONG KeQueryActiveProcessorCountEx(USHORT GroupNumber)")
    def KeQueryActiveProcessorCountEx(self, GroupNumber) -> int:
        """The processors of group 0 or of ALL_PROCESSOR_GROUPS; 0 for any other group."""
        return self.processors if GroupNumber in (0, ALL_PROCESSOR_GROUPS) else 0

    @routine("ULONG KeQueryMaximumProcessorCount(VOID)")
    def KeQueryMaximumProcessorCount(self) -> int:
        return self.processors

    @routine("ULONG KeQueryMaximumProcessorCountEx(USHORT GroupNumber)")
    def KeQueryMaximumProcessorCountEx(self, GroupNumber) -> int:
        return self.processors if GroupNumber in (0, ALL_PROCESSOR_GROUPS) else 0

    @routine("ULONG KeGetCurrentProcessorNumberEx(_Out_opt_ PPROCESSOR_NUMBER ProcNumber)")
    def KeGetCurrentProcessorNumberEx(self) -> tuple[int, int]:
        """(the system-wide processor index, PROCESSOR_NUMBER: Group 0, Number, Reserved 0)."""
        return self.current_processor, self.current_processor << 16

    @routine("VOID KeSetSystemAffinityThread(KAFFINITY Affinity)")
    def KeSetSystemAffinityThread(self, Affinity) -> None:
        self.KeSetSystemAffinityThreadEx(Affinity)

    @routine("KAFFINITY KeSetSystemAffinityThreadEx(KAFFINITY Affinity)")
    def KeSetSystemAffinityThreadEx(self, Affinity) -> int:
        """Run the thread on the first processor of ``Affinity``; the previous system
        affinity (0: it ran with its user affinity). A mask naming a processor the machine
        lacks, or none, changes nothing (Microsoft's documentation)."""
        self._check_irql_at_most(DISPATCH_LEVEL, "KeSetSystemAffinityThreadEx")
        previous = self.system_affinity
        if self._valid_affinity(Affinity):
            if not previous:
                self._user_affinity_processor = self.current_processor
            self.system_affinity = Affinity
            self._run_within(Affinity)
        return previous

    @routine("VOID KeRevertToUserAffinityThread(VOID)")
    def KeRevertToUserAffinityThread(self) -> None:
        self.KeRevertToUserAffinityThreadEx(0)

    @routine("VOID KeRevertToUserAffinityThreadEx(KAFFINITY Affinity)")
    def KeRevertToUserAffinityThreadEx(self, Affinity) -> None:
        """0: back to the user affinity (the processor the thread ran on before its first
        system affinity); else the system affinity ``Affinity`` (what KeSetSystemAffinityThreadEx
        returned). Without a system affinity to revert, nothing changes."""
        self._check_irql_at_most(DISPATCH_LEVEL, "KeRevertToUserAffinityThreadEx")
        if not self.system_affinity:
            return
        if not Affinity:
            self.system_affinity = 0
            self._move_to(self._user_affinity_processor)
        elif self._valid_affinity(Affinity):
            self.system_affinity = Affinity
            self._run_within(Affinity)

    def _valid_affinity(self, affinity: int) -> bool:
        return isinstance(affinity, int) and affinity > 0 and not affinity & ~self._active_mask()

    def _run_within(self, affinity: int) -> None:
        if not affinity >> self.current_processor & 1:
            self._move_to((affinity & -affinity).bit_length() - 1)

    def _move_to(self, processor: int) -> None:
        """Switch processors at once below DISPATCH_LEVEL; at DISPATCH_LEVEL Windows defers
        the switch until the IRQL drops, and ntpool keeps the thread where it is (departures)."""
        if self.current_irql <= APC_LEVEL and processor != self.current_processor:
            self.set_current_processor(processor)

    # --- the current thread and its previous mode --------------------------------------------

    @routine("PKTHREAD KeGetCurrentThread(VOID)")
    def KeGetCurrentThread(self) -> int:
        return self.current_thread

    @routine("PETHREAD PsGetCurrentThread(VOID)")
    def PsGetCurrentThread(self) -> int:
        return self.current_thread

    @routine("KPROCESSOR_MODE ExGetPreviousMode(VOID)")
    def ExGetPreviousMode(self) -> int:
        """The current thread's PreviousMode: UserMode while a driver handles a request from
        user mode (``k.open`` without kernel_caller), else KernelMode."""
        return self.read(self.current_thread + KTHREAD_PREVIOUS_MODE, 1)[0]

    @contextmanager
    def previous_mode(self, mode: int):
        """The thread's PreviousMode set to ``mode`` for a request from that mode, then restored."""
        field = self.current_thread + KTHREAD_PREVIOUS_MODE
        before = self.read(field, 1)[0]
        self._put8(field, mode)
        try:
            yield
        finally:
            if not self.halted:
                self._put8(field, before)

    @routine("BOOLEAN PsIsSystemThread(PETHREAD Thread)")
    def PsIsSystemThread(self, Thread) -> int:
        """TRUE if the thread's CrossThreadFlags mark it a system thread."""
        return 1 if self._get32(Thread + ETHREAD_CROSS_THREAD_FLAGS) & PS_CROSS_THREAD_FLAGS_SYSTEM else 0


def _compare(mine, wanted, condition: int) -> bool:
    """The machine's value (or version tuple) against the wanted one under a VER_ condition;
    a condition that is none of them fails."""
    if condition == VER_EQUAL:
        return mine == wanted
    if condition == VER_GREATER:
        return mine > wanted
    if condition == VER_GREATER_EQUAL:
        return mine >= wanted
    if condition == VER_LESS:
        return mine < wanted
    if condition == VER_LESS_EQUAL:
        return mine <= wanted
    return False
