"""Names for addresses in a compiled driver: functions and source lines.

Sources, best first: the PDB the image names in its CodeView record, looked for beside
the .sys (public functions from the DBI's module symbol streams, lines from their C13
line subsections; see ``pdb``); then the export table; then the entry point. Every
address is also "driver.sys+0xOFFSET", which needs nothing.
"""

import bisect
import os

from . import pdb as pdb_module


class Symbols:
    def __init__(self, image_name: str, functions: list, lines: list):
        self.image_name = image_name
        # (rva, size or 0, name) sorted; (rva, file, line) sorted.
        self.functions = sorted(functions)
        self._function_starts = [f[0] for f in self.functions]
        self.lines = sorted(lines)
        self._line_starts = [entry[0] for entry in self.lines]
        self.source = "exports"

    @classmethod
    def for_image(cls, image, directory: str | None = None) -> "Symbols":
        functions = [(rva, 0, name) for name, rva in image.exports.items()]
        lines = []
        source = "exports"
        pdb_path = _find_pdb(image, directory)
        if pdb_path:
            try:
                parsed = pdb_module.read_pdb(pdb_path, [s.rva for s in image.sections])
            except (OSError, ValueError):
                parsed = None
            if parsed is not None:
                functions = parsed.functions + [f for f in functions
                                                if f[0] not in {p[0] for p in parsed.functions}]
                lines = parsed.lines
                source = os.path.basename(pdb_path)
        if not any(f[0] == image.entry_rva for f in functions):
            functions.append((image.entry_rva, 0, "DriverEntry"))
        symbols = cls(image.name, functions, lines)
        symbols.source = source
        return symbols

    def function_at(self, rva: int):
        index = bisect.bisect_right(self._function_starts, rva) - 1
        if index < 0:
            return None
        start, size, name = self.functions[index]
        if size and rva >= start + size:
            return None
        return name, rva - start

    def line_at(self, rva: int):
        index = bisect.bisect_right(self._line_starts, rva) - 1
        if index < 0:
            return None
        start, filename, line = self.lines[index]
        function = self.function_at(rva)
        if function is not None and start < rva - function[1]:
            return None  # the nearest line record belongs to an earlier function
        return filename, line

    def describe(self, rva: int) -> str:
        text = f"{self.image_name}+{rva:#x}"
        function = self.function_at(rva)
        if function is not None:
            name, offset = function
            text += f" {name}+{offset:#x}"
        line = self.line_at(rva)
        if line is not None:
            text += f" ({os.path.basename(line[0])}:{line[1]})"
        return text

    def site(self, rva: int, call: bool = False) -> tuple[str, str, int]:
        """(function, file, line) for a call-site record; for a call, ``rva`` is the return
        address and the line is the call instruction's (the byte before it)."""
        function = self.function_at(rva)
        label = f"{self.image_name}+{rva:#x}"
        if function is not None:
            label += f" {function[0]}+{function[1]:#x}"
        line = self.line_at(rva - 1 if call else rva)
        if line is None:
            return label, self.image_name, 0
        return label, line[0], line[1]


def _find_pdb(image, directory: str | None) -> str | None:
    candidates = []
    if image.debug_pdb:
        candidates.append(image.debug_pdb)
        candidates.append(os.path.basename(image.debug_pdb.replace("\\", "/")))
    candidates.append(os.path.splitext(image.name)[0] + ".pdb")
    for candidate in candidates:
        paths = [candidate] if os.path.isabs(candidate) else []
        if directory:
            paths.append(os.path.join(directory, os.path.basename(candidate.replace("\\", "/"))))
        for path in paths:
            if os.path.isfile(path):
                return path
    return None
