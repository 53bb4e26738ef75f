"""Mapping a checked image into the machine: frames, protection, relocations, imports.

The image is laid out once in a host buffer (headers, sections, relocations applied, the
import address table filled), then copied into fresh ntpool frames mapped at the image's
base in the kernel address space, page by page with its section's protection: code is
read-only and executable, read-only data read-only, data writable, everything else NX. The
frames belong to the machine like any other, so a crash dump holds the driver's code.
"""

import struct

from ..constants import PAGE_SHIFT, PAGE_SIZE
from ..errors import NtStatusError
from ..machine.memory import OutOfFrames
from .control_registers import control_register_sites
from .pe import Image

# Where native images are mapped: above the Python drivers' made-up bases, 64 KiB aligned.
NATIVE_IMAGE_BASE = 0xFFFFF88004000000
IMAGE_ALIGNMENT = 0x10000


STATUS_DRIVER_ORDINAL_NOT_FOUND = 0xC0000262
STATUS_DRIVER_ENTRYPOINT_NOT_FOUND = 0xC0000263


class MissingImports(LookupError):
    """Imports ntpool does not implement; ``missing`` lists "MODULE!name" for each.

    Windows' loader refuses such a driver before DriverEntry (MiSnapThunk, WRK sysload.c):
    ``status`` is what it fails the load with, STATUS_DRIVER_ENTRYPOINT_NOT_FOUND for an
    import by name, STATUS_DRIVER_ORDINAL_NOT_FOUND when every missing one is by ordinal."""

    def __init__(self, image_name: str, missing: list[str]):
        self.missing = missing
        by_name = any("!#" not in entry for entry in missing)
        self.status = STATUS_DRIVER_ENTRYPOINT_NOT_FOUND if by_name else STATUS_DRIVER_ORDINAL_NOT_FOUND
        status_name = "STATUS_DRIVER_ENTRYPOINT_NOT_FOUND" if by_name else "STATUS_DRIVER_ORDINAL_NOT_FOUND"
        super().__init__(f"{image_name} imports {len(missing)} routine(s) ntpool does not "
                         f"implement: {', '.join(missing)}; Windows' loader refuses such a "
                         f"driver ({status_name}, {self.status:#010x}) (--allow-missing binds "
                         f"them to a stop that names the routine when it is called)")


class MappedImage:
    """An image in memory: where it is, its frames, and what the CPU must know of it."""

    def __init__(self, image: Image, base: int, frames: list[int], cr8_sites: list[int],
                 cr_write_sites: list[int] = ()):
        self.image = image
        self.base = base
        self.size = image.size_of_image
        self.end = base + image.size_of_image
        self.frames = frames
        self.cr8_sites = cr8_sites
        self.cr_write_sites = list(cr_write_sites)
        # [start, end) of the code the loader scanned that nothing can rewrite: executable,
        # read-only pages (the CPU scans every other block it runs, ``Cpu.scan_blocks``).
        self.fixed_code = [(base + (first << PAGE_SHIFT), base + (last << PAGE_SHIFT))
                           for first, last, writable in executable_runs(page_protection(image))
                           if not writable]

    def contains(self, address: int) -> bool:
        return self.base <= address < self.end


def layout(image: Image, base: int, resolve) -> tuple[bytearray, tuple[list[int], list[int]]]:
    """The image's bytes at ``base``; ``resolve(import) -> address`` fills the IAT."""
    memory = bytearray(image.size_of_image)
    memory[:image.size_of_headers] = image.headers
    for section in image.sections:
        memory[section.rva:section.rva + len(section.raw)] = section.raw
    delta = (base - image.preferred_base) & 0xFFFFFFFFFFFFFFFF
    if delta:
        for rva in image.relocations:
            value = struct.unpack_from("<Q", memory, rva)[0]
            struct.pack_into("<Q", memory, rva, (value + delta) & 0xFFFFFFFFFFFFFFFF)
    for entry in image.imports:
        struct.pack_into("<Q", memory, entry.iat_rva, resolve(entry))
    cr8_sites = []
    cr_write_sites = []
    # Every executable page, whole: what the CPU may fetch there is what was scanned.
    for first, last, _ in executable_runs(page_protection(image)):
        found = control_register_sites(memory, base, first << PAGE_SHIFT, last << PAGE_SHIFT)
        cr8_sites += found[0]
        cr_write_sites += found[1]
    return memory, (cr8_sites, cr_write_sites)


def executable_runs(pages: list[tuple[bool, bool]]) -> list[tuple[int, int, bool]]:
    """(first page, page after the last, writable) for each run of executable pages of one
    protection."""
    runs = []
    for index, (writable, executable) in enumerate(pages):
        if not executable:
            continue
        if runs and runs[-1][1] == index and runs[-1][2] == writable:
            runs[-1] = (runs[-1][0], index + 1, writable)
        else:
            runs.append((index, index + 1, writable))
    return runs


def page_protection(image: Image) -> list[tuple[bool, bool]]:
    """(writable, executable) for each page of the image."""
    pages = [(False, False)] * (image.size_of_image >> PAGE_SHIFT)
    for section in image.sections:
        first = section.rva >> PAGE_SHIFT
        last = (section.rva + max(section.virtual_size, 1) - 1) >> PAGE_SHIFT
        for index in range(first, min(last + 1, len(pages))):
            writable, executable = pages[index]
            pages[index] = (writable or section.writable, executable or section.executable)
    return pages


STATUS_INSUFFICIENT_RESOURCES = 0xC000009A


def image_does_not_fit(image: Image, free_frames: int) -> NtStatusError:
    """What MmLoadSystemImage fails with when the image's pages cannot be had."""
    return NtStatusError(STATUS_INSUFFICIENT_RESOURCES,
                         f"{image.name}: its image of {image.size_of_image:#x} bytes (SizeOfImage) "
                         f"needs {image.size_of_image >> PAGE_SHIFT} page frames and the machine "
                         f"has {free_frames} free (give it more physical_memory_bytes)")


def map_image(kernel, image: Image, base: int, resolve) -> MappedImage:
    physical = kernel.physical
    pages = page_protection(image)
    free = physical.frame_count - physical.frames_used
    if len(pages) > free:
        raise image_does_not_fit(image, free)
    memory, (cr8_sites, cr_write_sites) = layout(image, base, resolve)
    space = kernel.space
    frames = []
    try:
        for index, (writable, executable) in enumerate(pages):
            pfn = physical.allocate_frame()
            frames.append(pfn)
            physical.write(pfn << PAGE_SHIFT, memory[index * PAGE_SIZE:(index + 1) * PAGE_SIZE])
            space.map_page(base + index * PAGE_SIZE, pfn, writable=writable, executable=executable)
    except OutOfFrames:
        # The page tables took the last frames: give back what was mapped, as a failed load
        # leaves nothing behind.
        for index, pfn in enumerate(frames):
            va = base + index * PAGE_SIZE
            if space.translate(va) is not None:
                space.unmap_page(va)
            physical.free_frame(pfn)
        raise image_does_not_fit(image, free) from None
    return MappedImage(image, base, frames, cr8_sites, cr_write_sites)


def unmap_image(kernel, mapped: MappedImage) -> None:
    # Pages may have gone before (an INIT section after DriverEntry: None) or be paged out
    # (a PAGE section): free what each page holds now.
    for index, pfn in enumerate(mapped.frames):
        va = mapped.base + index * PAGE_SIZE
        kernel.pageable_image_pages.discard(va)
        if pfn is None:
            continue
        if kernel.pager.is_paged_out(va):
            kernel.pager.discard(va)
            continue
        kernel.physical.free_frame(kernel.space.unmap_page(va))
    mapped.frames = []
