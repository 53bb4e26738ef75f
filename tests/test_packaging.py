"""Every file the package needs beyond its Python modules is declared as package data, so
that `pip install .` (the README's first command) installs it too."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "ntpool"


def test_every_data_file_is_package_data():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["ntpool"]
    declared = {path for pattern in patterns for path in PACKAGE.glob(pattern) if path.is_file()}
    needed = {path for path in PACKAGE.rglob("*") if path.is_file() and path.suffix != ".py"
              and "__pycache__" not in path.parts}
    assert needed - declared == set()
