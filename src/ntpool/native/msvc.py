"""What Windows' loader does for images built by Microsoft's compiler (MSVC + WDK), beyond
mapping them: the /GS security cookie, the INIT section discarded after DriverEntry, and
PAGE sections that are pageable.

- /GS: the load configuration directory names the image's ``__security_cookie``. The
  compiler leaves the default 0x00002B992DDFA232 there and GsDriverEntry refuses to run
  (``int 29h``, a fast fail) unless the loader has replaced it, as MiProcessLoadConfigForDriver
  does; ntpool writes a cookie derived from the image's name (the same run gives the same
  cookie), with the top 16 bits clear as x64 requires.
- INIT (any section named INIT, or flagged IMAGE_SCN_MEM_DISCARDABLE and executable): its
  pages are freed when DriverEntry returns (MmFreeDriverInitialization); code that runs or
  data that is read there later is PAGE_FAULT_IN_NONPAGED_AREA, as on Windows.
- PAGE* sections: pageable. ``k.page_out()`` (and Driver Verifier's Force IRQL checking,
  which trims at every IRQL raise) pages them out with paged pool; running that code at
  DISPATCH_LEVEL or above is then DRIVER_IRQL_NOT_LESS_OR_EQUAL (0xD1), Windows' answer.
"""

from __future__ import annotations

import struct
import zlib

from ..constants import PAGE_SHIFT, PAGE_SIZE

DEFAULT_SECURITY_COOKIE = 0x00002B992DDFA232
IMAGE_DIRECTORY_ENTRY_LOAD_CONFIG = 10
LOAD_CONFIG_SECURITY_COOKIE = 0x58  # IMAGE_LOAD_CONFIG_DIRECTORY64.SecurityCookie
IMAGE_SCN_MEM_DISCARDABLE = 0x02000000
IMAGE_SCN_MEM_EXECUTE = 0x20000000


def _load_config(image) -> tuple[int, int]:
    headers = image.headers
    if len(headers) < 0x40:
        return 0, 0
    pe_offset = struct.unpack_from("<I", headers, 0x3C)[0]
    directories = pe_offset + 24 + 112  # PE signature + file header, then DataDirectory
    entry = directories + 8 * IMAGE_DIRECTORY_ENTRY_LOAD_CONFIG
    if entry + 8 > len(headers):
        return 0, 0
    return struct.unpack_from("<II", headers, entry)


def security_cookie_rva(image) -> int | None:
    """The RVA of the image's __security_cookie (None: no load config or no cookie)."""
    rva, size = _load_config(image)
    if not rva or size < LOAD_CONFIG_SECURITY_COOKIE + 8:
        return None
    for section in image.sections:
        if section.rva <= rva and rva + LOAD_CONFIG_SECURITY_COOKIE + 8 <= section.rva + len(section.raw):
            offset = rva - section.rva
            length = struct.unpack_from("<I", section.raw, offset)[0]
            if length < LOAD_CONFIG_SECURITY_COOKIE + 8:
                return None
            cookie_va = struct.unpack_from("<Q", section.raw, offset + LOAD_CONFIG_SECURITY_COOKIE)[0]
            if not cookie_va:
                return None
            cookie_rva = cookie_va - image.preferred_base
            return cookie_rva if 0 <= cookie_rva <= image.size_of_image - 8 else None
    return None


def initialize_security_cookie(kernel, image, base: int) -> int | None:
    """Write the image's /GS cookie as Windows' loader does; the cookie, or None."""
    rva = security_cookie_rva(image)
    if rva is None:
        return None
    current = int.from_bytes(kernel.read(base + rva, 8), "little")
    if current not in (0, DEFAULT_SECURITY_COOKIE):
        return current  # the image brought its own: Windows leaves it
    cookie = (zlib.crc32(image.name.lower().encode()) << 16 | zlib.crc32(image.data[:4096]) & 0xFFFF) \
        & 0x0000FFFFFFFFFFFF
    if cookie in (0, DEFAULT_SECURITY_COOKIE):
        cookie ^= 0x5A5A
    kernel.write(base + rva, cookie.to_bytes(8, "little"))
    return cookie


def _pages(section, base: int) -> range:
    first = (base + section.rva) >> PAGE_SHIFT
    last = (base + section.rva + max(section.virtual_size, 1) - 1) >> PAGE_SHIFT
    return range(first, last + 1)


def is_init_section(section) -> bool:
    return section.name.upper() == "INIT" or (
        section.characteristics & IMAGE_SCN_MEM_DISCARDABLE and section.characteristics & IMAGE_SCN_MEM_EXECUTE)


def is_pageable_section(section) -> bool:
    return section.name.upper().startswith("PAGE")


def discard_init_sections(kernel, image, mapped) -> int:
    """Free the pages of INIT sections (after DriverEntry); how many went."""
    freed = 0
    for section in image.sections:
        if not is_init_section(section):
            continue
        for vpn in _pages(section, mapped.base):
            index = vpn - (mapped.base >> PAGE_SHIFT)
            if 0 <= index < len(mapped.frames) and mapped.frames[index] is not None:
                kernel.space.unmap_page(vpn << PAGE_SHIFT)
                kernel.physical.free_frame(mapped.frames[index])
                mapped.frames[index] = None
                freed += 1
    if freed:
        kernel.mapping_changed()
    return freed


def pageable_pages(image, base: int) -> list[int]:
    """The page addresses of the image's PAGE sections."""
    pages = []
    for section in image.sections:
        if is_pageable_section(section):
            pages.extend(vpn << PAGE_SHIFT for vpn in _pages(section, base))
    return pages


__all__ = ["initialize_security_cookie", "security_cookie_rva", "discard_init_sections",
           "pageable_pages", "DEFAULT_SECURITY_COOKIE", "PAGE_SIZE"]
