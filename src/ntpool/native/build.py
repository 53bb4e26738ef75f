"""Build the sample and test drivers (C) into .sys files: ``python3 -m ntpool.native.build``.

The compiler is clang and lld from PyPI's ``ziglang`` (``pip install 'ntpool[build]'``),
so nothing but pip is needed. clang targets ``x86_64-windows-msvc``, where ``__try`` /
``__except`` compile to real x64 SEH (.pdata, .xdata, ``__C_specific_handler``); lld links
a native-subsystem image with a PDB beside it. The import libraries are made from
ntpool's own routine registry (one .def per module), so a driver links against exactly
what ntpool implements.

Builds are reproducible: ``/Brepro`` replaces timestamps with a hash of the contents and
the debug paths are relative, so the same sources give the same bytes anywhere; the
.sys and .pdb files are committed and a test rebuilds them when ziglang is installed.

    python3 -m ntpool.native.build [--out DIR] [--check] [NAME ...]
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

SAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "samples")
SOURCE_DIRECTORY = os.path.join(SAMPLES, "native")
# The WDM samples (devices, IRPs, MDLs: ntpool.routines.io) build the same way, beside their
# sources; their wdm_lite.h includes ntddk_lite.h.
SOURCE_DIRECTORIES = (SOURCE_DIRECTORY, os.path.join(SAMPLES, "wdm"))
COMPILE_FLAGS = ["-target", "x86_64-windows-msvc", "-O2", "-ffreestanding",
                 "-fno-stack-protector", "-fno-builtin", "-mno-red-zone", "-mno-stack-arg-probe",
                 "-Wno-multichar", "-Wall", "-Werror", "-Wno-unused-function", "-g", "-gcodeview",
                 "-fdebug-compilation-dir=.", "-fno-ident", "-fasync-exceptions",
                 "-gno-codeview-command-line"]
LINK_FLAGS = ["/nologo", "/driver", "/subsystem:native", "/entry:DriverEntry",
              "/base:0x140000000", "/dynamicbase", "/brepro", "/nodefaultlib", "/debug",
              "/opt:ref", "/opt:icf", "/pdbsourcepath:/ntpool/samples/native"]
# Drivers linked with /integritycheck (IMAGE_DLLCHARACTERISTICS_FORCE_INTEGRITY), as a driver
# must be whose callbacks PsSetCreateProcessNotifyRoutineEx or ObRegisterCallbacks register.
INTEGRITY_CHECKED = frozenset({"notify"})
LIBRARIES = {"ntoskrnl.exe": "ntoskrnl.lib", "HAL.dll": "hal.lib", "NDIS.SYS": "ndis.lib"}


class BuildError(RuntimeError):
    pass


def compiler_available() -> bool:
    try:
        import ziglang  # noqa: F401
    except ImportError:
        return False
    return True


def _zig(*args: str, cwd: str) -> None:
    command = [sys.executable, "-m", "ziglang", *args]
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if result.returncode:
        raise BuildError(f"{' '.join(args[:1])} failed:\n{result.stdout}{result.stderr}")


def definitions() -> dict[str, list[str]]:
    """Module -> the names ntpool exports from it (routines, runtime, data)."""
    from .. import kernel  # noqa: F401  (importing it declares the whole routine surface)
    from ..routines import registry
    from . import runtime
    exports: dict[str, list[str]] = {module: [] for module in LIBRARIES}
    for entry in registry.routines():
        exports[entry.module].append(entry.name)
    for name, (module, _) in runtime.NATIVE_ONLY.items():
        exports[module].append(name)
    for entry in registry.data_exports():
        exports[entry.module].append(f"{entry.name} DATA")
    return {module: sorted(set(names)) for module, names in exports.items()}


def import_libraries(directory: str) -> list[str]:
    paths = []
    for module, names in definitions().items():
        definition = os.path.join(directory, LIBRARIES[module].replace(".lib", ".def"))
        with open(definition, "w") as handle:
            handle.write(f"LIBRARY {module}\nEXPORTS\n" + "".join(f"    {n}\n" for n in names))
        library = os.path.join(directory, LIBRARIES[module])
        _zig("dlltool", "-d", definition, "-l", library, "-m", "i386:x86-64", cwd=directory)
        paths.append(os.path.basename(library))  # relative: the PDB records it
    return paths


def sources(names=()) -> list[str]:
    found = sorted(name for _, name in _located_sources())
    if names:
        unknown = sorted(set(names) - set(found))
        if unknown:
            raise BuildError(f"no driver source named {', '.join(unknown)} in "
                             f"{' or '.join(SOURCE_DIRECTORIES)}")
        found = [n for n in found if n in names]
    return found


def _located_sources() -> list[tuple[str, str]]:
    """(directory, name) of every driver source."""
    return sorted((directory, f[:-2]) for directory in SOURCE_DIRECTORIES
                  if os.path.isdir(directory) for f in os.listdir(directory) if f.endswith(".c"))


def source_directory(name: str) -> str:
    for directory, found in _located_sources():
        if found == name:
            return directory
    raise BuildError(f"no driver source named {name}")


def build(out: str | None = None, names=()) -> list[str]:
    """Build each driver into ``out`` (NAME.sys and NAME.pdb; default: beside its source);
    returns the .sys paths."""
    if not compiler_available():
        raise BuildError("the compiler is not installed: pip install ziglang "
                         "(or pip install 'ntpool[build]')")
    built = []
    with tempfile.TemporaryDirectory(prefix="ntpool-build-") as work:
        libraries = import_libraries(work)
        for directory in SOURCE_DIRECTORIES:
            for header in sorted(os.listdir(directory)) if os.path.isdir(directory) else ():
                if header.endswith(".h"):
                    shutil.copy(os.path.join(directory, header), work)
        for name in sources(names):
            directory = source_directory(name)
            shutil.copy(os.path.join(directory, name + ".c"), work)
            # The object names itself in its debug info: a fixed name, not zig's temporary one.
            _zig("cc", *COMPILE_FLAGS, "-Xclang", f"-object-file-name={name}.obj", "-c",
                 "-o", name + ".obj", name + ".c", cwd=work)
            signed = ["/integritycheck"] if name in INTEGRITY_CHECKED else []
            _zig("lld-link", *LINK_FLAGS, *signed, f"/pdb:{name}.pdb", f"/pdbaltpath:{name}.pdb",
                 f"/out:{name}.sys", name + ".obj", *libraries, cwd=work)
            target = out or directory
            os.makedirs(target, exist_ok=True)
            for suffix in (".sys", ".pdb"):
                shutil.copy(os.path.join(work, name + suffix), os.path.join(target, name + suffix))
            built.append(os.path.join(target, name + ".sys"))
    return built


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m ntpool.native.build",
                                     description="Build ntpool's sample and test drivers.")
    parser.add_argument("names", nargs="*", help="drivers to build (default: all)")
    parser.add_argument("--out", default=None,
                        help="where to put the .sys and .pdb files (default: beside the sources)")
    parser.add_argument("--check", action="store_true",
                        help="build into a scratch folder and report drivers whose committed "
                             ".sys differs (exit 1)")
    args = parser.parse_args(argv)
    try:
        if args.check:
            with tempfile.TemporaryDirectory() as scratch:
                stale = []
                for path in build(scratch, args.names):
                    name = os.path.basename(path)
                    committed = os.path.join(source_directory(name[:-4]), name)
                    with open(path, "rb") as new:
                        fresh = new.read()
                    if not os.path.exists(committed) or open(committed, "rb").read() != fresh:
                        stale.append(name)
                if stale:
                    print(f"out of date: {', '.join(stale)}")
                    return 1
                print("every committed driver matches its source")
                return 0
        for path in build(args.out, args.names):
            print(path)
    except BuildError as error:
        print(f"ntpool build: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
