"""Reading functions and lines from a PDB (placeholder until the reader lands)."""

from typing import NamedTuple


class Pdb(NamedTuple):
    functions: list
    lines: list


def read_pdb(path: str) -> Pdb | None:
    return None
