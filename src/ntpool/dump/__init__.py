"""Crash dumps in the Windows x64 format: writing (``write_dump``) and reading (``DumpReader``)."""

from .reader import DumpFormatError, DumpReader, MemoryReadError
from .writer import KINDS, write_dump

__all__ = ["DumpFormatError", "DumpReader", "KINDS", "MemoryReadError", "write_dump"]
