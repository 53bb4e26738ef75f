"""The shape of the code: one Kernel, imports flowing one way, the halted machine's rule."""

import ast
import inspect
import pathlib
import re

import pytest

import ntpool
from ntpool.pool.design import WINDOWS_7, SegmentHeapDesign

PACKAGE = pathlib.Path(ntpool.__file__).resolve().parent
CORE = ["kernel.py", "hooks.py", "constants.py", "errors.py", "tags.py",
        "machine", "pool", "routines", "drivers"]
LAYERS_ON_TOP = {"verifier", "dump", "debugger", "tools", "cli", "campaign", "samples", "native",
                 "forensics"}
NP = ntpool.PoolType.NonPagedPool


def _modules(entry: str):
    path = PACKAGE / entry
    return [path] if path.is_file() else sorted(path.rglob("*.py"))


def _imported_packages(path: pathlib.Path) -> set[str]:
    """The ntpool sub-packages a module imports (relative imports resolved)."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(parts[:len(parts) - node.level])
                target = base + (node.module.split(".") if node.module else [])
                names = [target + [alias.name] for alias in node.names] if not node.module else [target]
            elif node.module == "ntpool":
                names = [[alias.name] for alias in node.names]
            elif node.module and node.module.startswith("ntpool."):
                names = [node.module.split(".")[1:]]
            else:
                continue
            found.update(name[0] for name in names if name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("ntpool."):
                    found.add(alias.name.split(".")[1])
                elif alias.name == "ntpool":
                    found.add("__init__")
    return found


def test_the_core_never_imports_the_layers_on_top():
    for entry in CORE:
        for path in _modules(entry):
            wrong = _imported_packages(path) & LAYERS_ON_TOP
            assert not wrong, f"{path.relative_to(PACKAGE)} imports {wrong}"


# The core's floors, ground up: each may import its own floor and those below it, never one
# above (the routine registry included: the kernel declares the surface complete, the
# registry never imports the kernel).
CORE_FLOORS = [
    {"constants", "errors", "tags", "hooks", "windows", "packing"},
    {"machine", "drivers"},
    {"pool"},
    {"routines"},
    {"kernel"},
]


def test_the_core_floors_import_only_downward():
    allowed: set[str] = set()
    for floor in CORE_FLOORS:
        allowed |= floor
        for entry in floor:
            for path in _paths_of(entry):
                above = _imported_packages(path) - allowed - LAYERS_ON_TOP
                assert not above, f"{path.relative_to(PACKAGE)} imports {above}, on a floor above its own"


# Above the core, the layers' floors, ground up, with the same rule: a module imports the core,
# its own floor and those below, never a floor above. The package's face (``import ntpool``)
# and what attaches to every machine first; what reads dumps and the samples; tools/ (the
# scenario loader, poolmon's model, pictures, the benches, the pool and .sys fuzzers); the
# campaign engine; forensics (its corpus is a campaign); the command line on top, with the
# dump fuzzer that drives its kd, poolmon and score.
UPPER_FLOORS = [
    {"__init__", "startup", "verifier", "dump", "native"},
    {"debugger", "samples"},
    {"tools"},
    {"campaign"},
    {"forensics"},
    {"cli", "__main__"},
]


def _paths_of(entry: str) -> list:
    """The files of one floor's entry: a module, or every module of a sub-package."""
    return _modules(entry + ".py") if (PACKAGE / (entry + ".py")).is_file() else _modules(entry)


def _entries() -> set[str]:
    """The package's modules and sub-packages (a folder of Python files), as imports name them."""
    return ({path.stem for path in PACKAGE.glob("*.py")}
            | {path.name for path in PACKAGE.iterdir() if path.is_dir() and any(path.glob("*.py"))})


def _floor_of(name: str, floors: list[set[str]]) -> int:
    # A name that is no module of ntpool's is one of the package's own (from .. import __version__).
    name = name if name in _entries() else "__init__"
    return next(number for number, floor in enumerate(floors) if name in floor)


def test_every_module_has_a_floor():
    floors = CORE_FLOORS + UPPER_FLOORS
    placed = [entry for floor in floors for entry in floor]
    assert len(placed) == len(set(placed))
    assert _entries() == set(placed), "a module or package of ntpool's on no floor (or a floor naming none)"


def test_the_layers_on_top_import_only_downward():
    floors = CORE_FLOORS + UPPER_FLOORS
    for floor in UPPER_FLOORS:
        for entry in floor:
            for path in _paths_of(entry):
                own = _floor_of(entry, floors)
                above = {name for name in _imported_packages(path) if _floor_of(name, floors) > own}
                assert not above, f"{path.relative_to(PACKAGE)} imports {above}, on a floor above its own"


def test_the_upper_floor_check_sees_imports_inside_functions():
    # dump_fuzz imports what it drives inside its functions; the scan must see those too.
    assert {"forensics", "tools", "debugger"} <= _imported_packages(PACKAGE / "cli" / "dump_fuzz.py")
    assert "tools" in _imported_packages(PACKAGE / "campaign" / "runs.py")
    floors = CORE_FLOORS + UPPER_FLOORS
    assert _floor_of("__version__", floors) == _floor_of("__init__", floors)
    assert _floor_of("cli", floors) > _floor_of("forensics", floors) > _floor_of("campaign", floors) \
        > _floor_of("tools", floors) > _floor_of("kernel", floors)


def test_the_floor_check_sees_an_import_from_above():
    assert "routines" in _imported_packages(PACKAGE / "kernel.py")
    assert "machine" in _imported_packages(PACKAGE / "pool" / "allocator.py")


def test_the_check_sees_an_import_of_a_layer():
    # The import scan itself must be able to fail.
    probe = PACKAGE / "routines" / "ex.py"
    assert "pool" in _imported_packages(probe)
    assert _imported_packages(PACKAGE / "dump" / "__init__.py") >= {"hooks"}


def test_one_class_named_kernel():
    classes = [path.relative_to(PACKAGE) for path in PACKAGE.rglob("*.py")
               if any(isinstance(node, ast.ClassDef) and node.name == "Kernel"
                      for node in ast.walk(ast.parse(path.read_text())))]
    assert classes == [pathlib.Path("kernel.py")]
    assert ntpool.Kernel.__module__ == "ntpool.kernel"


def test_routine_families_are_composed_only_in_kernel_init():
    # No family has a constructor; a manager's _init_ method (its boot) is called from
    # Kernel.__init__ alone, so the order of the parts is written in one place.
    source = inspect.getsource(ntpool.Kernel.__init__)
    for family in ntpool.Kernel.__mro__[1:-1]:
        assert "__init__" not in vars(family), family
        for name, function in vars(family).items():
            if name.startswith("_init"):
                assert f"self.{name}()" in source, name
                calls = re.findall(r"self\.(_init_\w+)\(", inspect.getsource(function))
                assert calls == [], (name, calls)


def test_the_layers_attach_to_every_machine(tmp_path):
    k = ntpool.Kernel(nonpaged_pool_bytes=1 << 20, paged_pool_bytes=1 << 20,
                      crash_dump=str(tmp_path / "MEMORY.DMP"))
    assert k.verifier is not None and k.verifier.kernel is k
    assert k.pool_design is WINDOWS_7 and k.pool.nonpaged is k.nonpaged_pool
    assert k.heap_state is None and k.nonpaged_pool_nx is None
    with pytest.raises(ntpool.BugCheck):
        k.ExFreePool(0x10000)  # a user-mode address: 0xC2/0x40
    assert (tmp_path / "MEMORY.DMP").stat().st_size > 0


def test_the_windows_version_chooses_the_allocator_design():
    k = ntpool.Kernel(nonpaged_pool_bytes=1 << 20, paged_pool_bytes=1 << 20, windows="11")
    assert isinstance(k.pool_design, SegmentHeapDesign)
    assert k.pool is k.heap_state.allocator and k.nonpaged_pool_nx is not None
    p = k.ExAllocatePoolWithTag(NP, 40, "Sgmt")
    k.ExFreePoolWithTag(p, "Sgmt")


def test_a_halted_machine_answers_looking_and_refuses_doing():
    k = ntpool.Kernel(nonpaged_pool_bytes=1 << 20, paged_pool_bytes=1 << 20)
    p = k.ExAllocatePoolWithTag(NP, 32, "Keep")
    with pytest.raises(ntpool.BugCheck):
        k.ExFreePool(0x10000)  # a user-mode address: 0xC2/0x40
    for doing in ("ExFreePoolWithTag", "KeRaiseIrql", "load_driver", "page_out", "write",
                  "create_process", "RtlMoveMemory", "NdisAllocateMemoryWithTag"):
        with pytest.raises(ntpool.MachineHalted, match=doing):
            getattr(k, doing)
    assert k.read(p, 4) is not None
    assert k.allocation_site(p).lineno > 0
    assert k.KeGetCurrentIrql() == 0 and k.is_resident(p)
    assert k.pool_tags() and k.pool_in_use()["frames"] > 0
    assert k.halted and k.current_irql == 0 and k.processes and k.verifier is not None


def test_small_rules_are_written_once():
    from ntpool.machine.irql import pool_usable_at

    assert [pool_usable_at(irql, 0) for irql in range(4)] == [True, True, True, False]
    assert [pool_usable_at(irql, 1) for irql in range(4)] == [True, True, False, False]
    sources = "\n".join(path.read_text() for path in PACKAGE.rglob("*.py"))
    # The IRQL rule, the owner of a call site and the bug check codes each have one home.
    assert "irql > APC_LEVEL" not in sources and "> APC_LEVEL and" not in sources
    assert "drivers[entry.driver]" not in sources and ".driver != 0" not in sources
    assert not re.search(r"(KeBugCheckEx|crash)\(0x", sources)
    # No hand-kept name lists that must follow the code (the halted machine reads markers).
    assert "INSPECTION" not in sources and "_MACHINERY_MODULES" not in sources


def test_every_subcode_table_belongs_to_its_bug_check():
    from ntpool.constants import SUBCODES, BugCheckCode, SpecialPoolCorruption, VerifierStop

    assert SUBCODES[BugCheckCode.SPECIAL_POOL_DETECTED_MEMORY_CORRUPTION] is SpecialPoolCorruption
    assert SUBCODES[BugCheckCode.DRIVER_VERIFIER_DETECTED_VIOLATION] is VerifierStop
    assert SpecialPoolCorruption.BYTES_AFTER_END_CORRUPTED == 0x24 and VerifierStop.DOUBLE_FREE == 0x13
    from ntpool.verifier import VerifierStop as exported

    assert exported is VerifierStop


def test_the_owner_of_a_call_site():
    k = ntpool.Kernel(nonpaged_pool_bytes=1 << 20, paged_pool_bytes=1 << 20)

    class Owner:
        name = "owner.sys"

        def DriverEntry(self, k, RegistryPath):
            self.p = k.ExAllocatePoolWithTag(NP, 16, "Ownr")

    driver = Owner()
    loaded = k.load_driver(driver)
    site = k.pool.site_of(driver.p)
    assert k.call_sites.owner(site) is loaded and k.allocation_driver(driver.p) is loaded
    assert k.call_sites.owner(0) is None and k.call_sites.owner(10 ** 6) is None
