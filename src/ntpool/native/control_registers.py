"""The control-register instructions ntpool finds in machine code, and where they are.

unicorn ignores CR8 and runs a ``mov cr0/cr3/cr4`` without the processor's checks, so the
loader (an image's code, scanned whole at load) and the CPU (code scanned as it first runs,
or again once it may have been rewritten) look for the same byte patterns, which live here.
"""

import re

# mov cr8, reg / mov reg, cr8 (REX with R set; ModRM mod=11, reg=0).
CR8_ACCESS = re.compile(rb"[\x44\x45\x46\x47\x4C\x4D\x4E\x4F]\x0F[\x20\x22][\xC0-\xC7]", re.S)
# mov cr0/cr3/cr4, reg (ModRM mod=11, reg=0, 3 or 4; a REX prefix without R may come first).
CR_WRITE = re.compile(rb"\x0F\x22[\xC0-\xC7\xD8-\xE7]", re.S)
REX_WITHOUT_R = frozenset(range(0x40, 0x44)) | frozenset(range(0x48, 0x4C))


def control_register_sites(code, base: int, start: int = 0, end: int | None = None
                           ) -> tuple[list[int], list[int]]:
    """The addresses of the ``mov cr8`` accesses and the ``mov cr0/cr3/cr4`` writes in
    ``code[start:end]`` (``code[0]`` is at ``base``). A byte pattern, not a disassembly: a
    match inside another instruction is hooked for nothing (its hook checks the bytes)."""
    end = len(code) if end is None else end
    cr8_sites = [base + match.start() for match in CR8_ACCESS.finditer(code, start, end)]
    cr_write_sites = []
    for match in CR_WRITE.finditer(code, start, end):
        at = match.start()
        cr_write_sites.append(base + at)
        if at > start and code[at - 1] in REX_WITHOUT_R:
            cr_write_sites.append(base + at - 1)  # the same instruction, if a prefix
    return cr8_sites, cr_write_sites
