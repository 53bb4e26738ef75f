"""Which Windows a machine runs: its build, and the allocator design that comes with it.

``Kernel(windows=...)`` takes "7" (Windows 7 SP1, build 7601: the classic pool), "10"
(Windows 10 2004, build 19041) or "11" (Windows 11 22H2, build 22621), or a build number
(int or str) from ``BUILDS``: 18362 and later run the kernel segment heap. What varies
between builds is recorded here and nowhere else: the big page table entry grew from 0x18
to 0x20 bytes (ProcessBilled added) in build 20348, and the segment signature lost its
constant in 26100 (segment-heap.md, sections 2 and 4).
"""

import zlib
from typing import NamedTuple


class WindowsVersion(NamedTuple):
    name: str  # "7", "10", "11"
    build: int  # NtBuildNumber
    major: int  # NtMajorVersion
    minor: int  # NtMinorVersion
    release: str  # what people call it

    @property
    def segment_heap(self) -> bool:
        """The kernel pool is the segment heap (Windows 10 19H1 and later)."""
        return self.build >= SEGMENT_HEAP_FIRST_BUILD

    @property
    def big_page_entry_size(self) -> int:
        """Bytes of one PoolBigPageTable entry: 0x18 before build 20348, 0x20 from it."""
        return 0x20 if self.build >= 20348 else 0x18

    @property
    def segment_signature_constant(self) -> int:
        """The constant XORed into a _HEAP_PAGE_SEGMENT Signature (none from 26100)."""
        return 0 if self.build >= 26100 else 0xA2E64EADA2E64EAD

    @property
    def nt_build_lab(self) -> str:
        """NtBuildLab, as the kernel image and the debugger show it."""
        return BUILD_LABS.get(self.build, f"{self.build}.1.amd64fre.ntpool.000000-0000")

    @property
    def csd_version(self) -> int:
        """CmNtCSDVersion: the service pack in bits 8..15 (Windows 7 SP1's 1; none since)."""
        return 0x0100 if self.build == 7601 else 0

    @property
    def time_date_stamp(self) -> int:
        """The kernel image's PE TimeDateStamp. Windows 7 SP1's ntoskrnl.exe was linked on 20
        November 2010; since Windows 10 the field is a hash of the build, not a time (builds
        are reproducible: Raymond Chen, The Old New Thing, January 2018), so ntpool's is
        the CRC-32 of the build's NtBuildLab."""
        if self.build == 7601:
            return WINDOWS7_TIME_DATE_STAMP
        return zlib.crc32(self.nt_build_lab.encode())

    def __str__(self) -> str:
        return f"Windows {self.name} (build {self.build}, {self.release})"


WINDOWS7_TIME_DATE_STAMP = 0x4CE7951A  # Windows 7 SP1's ntoskrnl.exe (20 November 2010)
SEGMENT_HEAP_FIRST_BUILD = 18362  # 19H1: the kernel pool moved to the segment heap

BUILDS = {
    7601: WindowsVersion("7", 7601, 6, 1, "7 SP1"),
    18362: WindowsVersion("10", 18362, 10, 0, "1903"),
    18363: WindowsVersion("10", 18363, 10, 0, "1909"),
    19041: WindowsVersion("10", 19041, 10, 0, "2004"),
    19045: WindowsVersion("10", 19045, 10, 0, "22H2"),
    20348: WindowsVersion("10", 20348, 10, 0, "Server 2022"),
    22000: WindowsVersion("11", 22000, 10, 0, "21H2"),
    22621: WindowsVersion("11", 22621, 10, 0, "22H2"),
    22631: WindowsVersion("11", 22631, 10, 0, "23H2"),
    26100: WindowsVersion("11", 26100, 10, 0, "24H2"),
}
BUILD_LABS = {
    7601: "7601.17514.amd64fre.win7sp1_rtm.101119-1850",
    18362: "18362.1.amd64fre.19h1_release.190318-1202",
    19041: "19041.1.amd64fre.vb_release.191206-1406",
    22000: "22000.1.amd64fre.co_release.210604-1628",
    22621: "22621.1.amd64fre.ni_release.220506-1250",
    26100: "26100.1.amd64fre.ge_release.240331-1435",
}
DEFAULT_BUILD = {"7": 7601, "10": 19041, "11": 22621}
CHOICES = tuple(DEFAULT_BUILD) + tuple(str(build) for build in BUILDS)


def windows_version(value="7") -> WindowsVersion:
    """A WindowsVersion from "7", "10", "11", a build number, or a WindowsVersion."""
    if isinstance(value, WindowsVersion):
        return value
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise TypeError(f"windows must be '7', '10', '11' or a build number, not "
                        f"{type(value).__name__}")
    text = str(value).strip()
    if text in DEFAULT_BUILD:
        return BUILDS[DEFAULT_BUILD[text]]
    if text.isdigit() and int(text) in BUILDS:
        return BUILDS[int(text)]
    raise ValueError(f"windows must be one of {', '.join(CHOICES)} (got {value!r})")
