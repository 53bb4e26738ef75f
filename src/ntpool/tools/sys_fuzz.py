"""Hostile and unusual .sys files: mutate the committed test drivers, load and run each.

Each case takes one of the committed drivers (``src/ntpool/samples/native``, ``samples/wdm``,
and Microsoft's ``wdm_test_x64.sys`` when ../shared is beside the repository), changes it in
a few places that a damaged or hostile file would (the DOS and NT headers, the optional
header, the section table, the data directories, the import, export, relocation and
exception (.pdata / unwind) tables, the code, the PDB beside it; truncation; huge sizes and
counts), then does what ``ntpool run DRIVER.sys --ioctl ...`` does: load it (DriverEntry),
open its device and send an IOCTL, call a few of its exported routines, unload it.

The only endings allowed are ntpool's own: the file refused (``BadImage``, one line naming
what is wrong), imports refused (``MissingImports``), DriverEntry's failure status, a bug
check, a hang stopped by the native watchdog (``NativeError``), a call of an unimplemented
import (``UnimplementedRoutine``), or a clean run. Anything else is a finding: a Python
exception (with its traceback), a case that runs past the per-case time limit (a hang in
ntpool itself), a worker that grows past the memory limit or dies.

Cases run in a worker process the fuzzer watches (it is killed and restarted when a case
overruns its time or memory); each case is named by the run's seed and its index, and
``--case I`` replays one in this process with its traceback.

    python -m ntpool.tools.sys_fuzz --runs 2000 --seed 1 [--case I] [--drivers a,b]
        [--kinds code,pdb,...] [--time-limit 20] [--memory-mib 2048] [--native-timeout 1]
        [--findings FILE] [--log FILE]

prints how the cases ended and each finding with the command that replays it; the exit
status is 1 when there was any finding. A case is replayed by the same seed, index, drivers
and kinds on the same tree (the mutations follow the fuzzer's code and the committed drivers).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import struct
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field

MiB = 1 << 20
HERE = os.path.dirname(os.path.abspath(__file__))
SAMPLES = os.path.join(os.path.dirname(HERE), "samples")
SHARED_DRIVERS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(HERE))), "..",
                              "shared", "data", "drivers")

# What each base driver is asked after DriverEntry: IOCTLs for its device, exported routines
# with integer arguments (ones that return: no Hang, no Recurse).
IOCTLS = {
    "ioctl": [(0x9C40240C, b"Hello", 64), (0x9C40240B, b"Hello", 64), (0x9C402401, b"Hi", 16),
              (0x9C402406, b"Hi", 16)],
    "buffered_leak": [(0x9C412000, b"", 64)],
    "wdm_test_x64": [(0x222000, b"abc", 8)],
}
CALLS = {
    "faults": [("CaughtDivide", (7, 0)), ("CaughtReadAddress", (0x1000,)),
               ("CaughtRaise", (0xC000009A,)), ("FinallyCount", ()), ("ProbeUserBuffer", (0x1001, 4)),
               ("NestedFree", ())],
    "bench": [("Spin", (100,))],
    "fsfilter": [("OpenFile", (0, 0))],
}

INTERESTING_32 = (0, 1, 2, 7, 8, 0x10, 0x1F, 0x20, 0x40, 0x7F, 0x80, 0xFF, 0x100, 0x200, 0xFFF,
                  0x1000, 0x1001, 0x2000, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFF0,
                  0xFFFFFFFE, 0xFFFFFFFF, 0x04000000, 0x04000001, 0x10000000)
INTERESTING_16 = (0, 1, 2, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFE, 0xFFFF)
INTERESTING_64 = (0, 1, 0x140000000, 0xFFFFFFFFFFFF0000, 0x7FFFFFFFFFFF0000, 0xFFFFF80000000000,
                  0x8000000000000000, 0xFFFFFFFFFFFFFFFF, 0x10000)


# --- the base drivers and where their structures are ---------------------------------------

@dataclass
class Base:
    name: str  # "ioctl"
    data: bytes
    pdb: bytes | None
    fields: list = field(default_factory=list)  # (label, file offset, width): the headers'
    table_fields: list = field(default_factory=list)  # the same for each DWORD of the tables
    regions: dict = field(default_factory=dict)  # label -> [(file offset, length)]


def base_paths() -> list[str]:
    paths = []
    for folder in ("native", "wdm"):
        directory = os.path.join(SAMPLES, folder)
        paths += sorted(os.path.join(directory, f) for f in os.listdir(directory) if f.endswith(".sys"))
    shared = os.path.normpath(os.path.join(SHARED_DRIVERS, "wdm_test_x64.sys"))
    if os.path.isfile(shared):
        paths.append(shared)
    return paths


def describe_base(path: str) -> Base:
    """The driver's bytes, its PDB's, and the file offsets of its structures (from pefile on
    the undamaged file)."""
    import pefile
    with open(path, "rb") as handle:
        data = handle.read()
    pdb_path = path[:-4] + ".pdb"
    pdb = None
    if os.path.isfile(pdb_path):
        with open(pdb_path, "rb") as handle:
            pdb = handle.read()
    base = Base(os.path.basename(path)[:-4], data, pdb)
    pe = pefile.PE(data=data)
    nt = struct.unpack_from("<I", data, 0x3C)[0]
    fields = [("e_lfanew", 0x3C, 4), ("Signature", nt, 4), ("Machine", nt + 4, 2),
              ("NumberOfSections", nt + 6, 2), ("SizeOfOptionalHeader", nt + 20, 2),
              ("Characteristics", nt + 22, 2)]
    opt = nt + 24
    fields += [("Magic", opt, 2), ("SizeOfCode", opt + 4, 4), ("AddressOfEntryPoint", opt + 16, 4),
               ("ImageBase", opt + 24, 8), ("SectionAlignment", opt + 32, 4),
               ("FileAlignment", opt + 36, 4), ("SizeOfImage", opt + 56, 4),
               ("SizeOfHeaders", opt + 60, 4), ("Subsystem", opt + 68, 2),
               ("DllCharacteristics", opt + 70, 2), ("NumberOfRvaAndSizes", opt + 108, 4)]
    for index in range(16):
        fields += [(f"DataDirectory[{index}].VirtualAddress", opt + 112 + 8 * index, 4),
                   (f"DataDirectory[{index}].Size", opt + 116 + 8 * index, 4)]
    table = opt + struct.unpack_from("<H", data, nt + 20)[0]
    for index, section in enumerate(pe.sections):
        at = table + 40 * index
        label = section.Name.rstrip(b"\0").decode("latin-1")
        fields += [(f"{label}.VirtualSize", at + 8, 4), (f"{label}.VirtualAddress", at + 12, 4),
                   (f"{label}.SizeOfRawData", at + 16, 4), (f"{label}.PointerToRawData", at + 20, 4),
                   (f"{label}.Characteristics", at + 36, 4)]
        if section.Characteristics & 0x20000000 and section.SizeOfRawData:
            base.regions.setdefault("code", []).append((section.PointerToRawData,
                                                        section.SizeOfRawData))
    base.fields = fields
    base.regions["headers"] = [(0, pe.OPTIONAL_HEADER.SizeOfHeaders)]

    def region(label: str, rva: int, size: int) -> None:
        offset = pe.get_offset_from_rva(rva) if rva else None
        if offset is not None and size > 0:
            base.regions.setdefault(label, []).append((offset, min(size, len(data) - offset)))

    names = ("exports", "imports", None, "exceptions", None, "relocations", "debug", None, None,
             None, "load_config")
    for index, label in enumerate(names):
        if label and index < len(pe.OPTIONAL_HEADER.DATA_DIRECTORY):
            entry = pe.OPTIONAL_HEADER.DATA_DIRECTORY[index]
            region(label, entry.VirtualAddress, entry.Size)
    for descriptor in getattr(pe, "DIRECTORY_ENTRY_IMPORT", []):
        thunk = descriptor.struct.OriginalFirstThunk or descriptor.struct.FirstThunk
        region("imports", thunk, 8 * (len(descriptor.imports) + 1))
        region("imports", descriptor.struct.Name, len(descriptor.dll) + 1)
        for entry in descriptor.imports:
            if entry.name:
                region("imports", entry.hint_name_table_rva, len(entry.name) + 3)
    exports = getattr(pe, "DIRECTORY_ENTRY_EXPORT", None)
    if exports is not None:
        s = exports.struct
        region("exports", s.AddressOfFunctions, 4 * s.NumberOfFunctions)
        region("exports", s.AddressOfNames, 4 * s.NumberOfNames)
        region("exports", s.AddressOfNameOrdinals, 2 * s.NumberOfNames)
    pdata = pe.OPTIONAL_HEADER.DATA_DIRECTORY[3]
    if pdata.VirtualAddress:
        raw = pe.get_data(pdata.VirtualAddress, pdata.Size)
        for at in range(0, len(raw) - 11, 12):
            unwind = struct.unpack_from("<I", raw, at + 8)[0]
            try:
                header = pe.get_data(unwind, 4)
            except pefile.PEFormatError:
                continue
            # The unwind info, its codes, the handler and (a guess) its scope table.
            region("unwind", unwind, 4 + 2 * (header[2] + 1) + 8 + 16 * 4)
    base.table_fields = [(f"{label}+{offset:#x}", offset, 4) for label, spans in base.regions.items()
                         if label not in ("code", "headers") for offset, length in spans
                         for offset in range(offset, offset + length - 3, 4)]
    return base


# --- mutations ----------------------------------------------------------------------------------

def _value(rng: random.Random, width: int, old: int) -> int:
    choice = rng.random()
    top = (1 << (8 * width)) - 1
    if choice < 0.5:
        pool = {2: INTERESTING_16, 4: INTERESTING_32, 8: INTERESTING_64}[width]
        return rng.choice(pool) & top
    if choice < 0.8:
        return (old + rng.choice((-0x1000, -16, -8, -1, 1, 8, 16, 0x1000, 0x10000))) & top
    if choice < 0.9:
        return (old ^ (1 << rng.randrange(8 * width))) & top
    return rng.getrandbits(8 * width)


KINDS = ["field", "field", "table", "table", "region", "bytes", "code", "truncate",
         "append", "pdb", "sections", "huge"]


def mutate(base: Base, rng: random.Random, only=None) -> tuple[bytes, bytes | None, list[str]]:
    """A damaged copy of the driver (and of its PDB); the list of what was done. ``only``:
    the kinds of damage to choose from (default: all of KINDS)."""
    data = bytearray(base.data)
    pdb = base.pdb
    done = []
    kinds = list(only) if only else KINDS
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        kind = rng.choice(kinds)
        if kind == "huge":
            # A size or count a hostile header makes huge (the loader must stay bounded).
            label, offset, width = rng.choice([f for f in base.fields if f[0].endswith(
                ("SizeOfImage", "SizeOfHeaders", "VirtualSize", "SizeOfRawData", ".Size",
                 "NumberOfRvaAndSizes", "NumberOfSections", "SizeOfOptionalHeader"))])
            new = rng.choice((0x3FFF000, 0x4000000, 0x7FFFFFFF, 0xFFFFFFFF, 0x10000000,
                              0x00FFFFFF)) & ((1 << (8 * width)) - 1)
            data[offset:offset + width] = new.to_bytes(width, "little")
            done.append(f"{label} -> {new:#x}")
        elif kind in ("field", "table"):
            label, offset, width = rng.choice(base.fields if kind == "field" else
                                              base.table_fields or base.fields)
            if offset + width > len(data):
                continue
            old = int.from_bytes(data[offset:offset + width], "little")
            new = _value(rng, width, old)
            data[offset:offset + width] = new.to_bytes(width, "little")
            done.append(f"{label} {old:#x} -> {new:#x}")
        elif kind in ("region", "code"):
            labels = ["code"] if kind == "code" else [r for r in base.regions if r != "code"]
            labels = [r for r in labels if r in base.regions]
            if not labels:
                continue
            label = rng.choice(labels)
            offset, length = rng.choice(base.regions[label])
            for _ in range(rng.randint(1, 6)):
                at = offset + rng.randrange(max(length, 1))
                if at < len(data):
                    data[at] = rng.getrandbits(8)
            done.append(f"bytes in {label} near {offset:#x}")
        elif kind == "bytes":
            if not data:
                continue
            for _ in range(rng.randint(1, 12)):
                at = rng.randrange(min(len(data), 0x400) if rng.random() < 0.7 else len(data))
                data[at] = rng.getrandbits(8)
            done.append("random bytes")
        elif kind == "sections":
            # The section table's count against the table: more sections than there are.
            label, offset, width = next(f for f in base.fields if f[0] == "NumberOfSections")
            new = rng.choice((0, 96, 0xFFFF, rng.randrange(1, 40)))
            data[offset:offset + 2] = new.to_bytes(2, "little")
            done.append(f"NumberOfSections -> {new}")
        elif kind == "truncate":
            if len(data) < 2:
                continue  # cut to nothing already
            cut = rng.choice((rng.randrange(len(data)), rng.randrange(0x40, 0x400),
                              len(data) - rng.randrange(1, 512)))
            del data[max(cut, 0):]
            done.append(f"truncated to {len(data):#x} bytes")
        elif kind == "append":
            size = rng.choice((1, 0x1000, 0x10000, 1 << 20))
            data += bytes(rng.getrandbits(8) for _ in range(min(size, 256))) * max(1, size // 256)
            done.append(f"{size:#x} bytes appended")
        elif kind == "pdb" and pdb is not None:
            damaged = bytearray(pdb)
            for _ in range(rng.randint(1, 16)):
                at = rng.randrange(len(damaged)) if rng.random() < 0.5 else rng.randrange(min(0x2000, len(damaged)))
                if rng.random() < 0.5:
                    damaged[at] = rng.getrandbits(8)
                elif at + 4 <= len(damaged):
                    damaged[at:at + 4] = rng.choice(INTERESTING_32).to_bytes(4, "little")
            if rng.random() < 0.1:
                del damaged[rng.randrange(len(damaged)):]
            pdb = bytes(damaged)
            done.append("PDB damaged")
    return bytes(data), pdb, done or ["unchanged"]


# --- one case ---------------------------------------------------------------------------------

@dataclass
class Outcome:
    kind: str  # see ALLOWED; anything else is a finding
    detail: str = ""


ALLOWED = ("refused", "missing-imports", "load-failed", "entry-failed", "bugcheck", "hang", "native-error",
           "unimplemented", "ran")


def case_rng(seed: int, index: int) -> random.Random:
    return random.Random(f"sys_fuzz:{seed}:{index}")


def make_case(bases: list[Base], seed: int, index: int, only=None):
    rng = case_rng(seed, index)
    base = bases[rng.randrange(len(bases))]
    data, pdb, done = mutate(base, rng, only)
    if rng.random() < 0.25:
        done.append("loaded without allow_missing")  # unknown imports refused at load
    if rng.random() < 0.2:
        done.append("loaded again after unloading")  # the image mapped afresh
    return base, data, pdb, done


def _one_line(error: BaseException) -> str:
    """The error's message, which must be one printable line (a name from the file with a
    newline or a control character in it would break the one line ``ntpool run`` prints)."""
    text = str(error)
    if not text or not text.isprintable():
        raise AssertionError(f"{type(error).__name__}'s message is not one printable line: {text!r}")
    return text


def run_case(base: Base, data: bytes, pdb: bytes | None, directory: str,
             native_timeout: float, done=()) -> Outcome:
    """Load, request, call, unload: how it ended. A Python exception that is none of ntpool's
    answers propagates (the caller reports it as a finding)."""
    import ntpool
    from ntpool.errors import BugCheck, NtStatusError
    from ntpool.native import BadImage, MissingImports, NativeDriver, NativeError, native_machine
    from ntpool.native.bindings import UnimplementedRoutine

    path = os.path.join(directory, base.name + ".sys")
    with open(path, "wb") as handle:
        handle.write(data)
    pdb_path = os.path.join(directory, base.name + ".pdb")
    if pdb is not None:
        with open(pdb_path, "wb") as handle:
            handle.write(pdb)
    elif os.path.exists(pdb_path):
        os.unlink(pdb_path)
    k = ntpool.Kernel(nonpaged_pool_bytes=2 * MiB, paged_pool_bytes=2 * MiB)
    native_machine(k).call_timeout = native_timeout
    driver = NativeDriver(path, allow_missing="loaded without allow_missing" not in done)
    try:
        try:
            k.load_driver(driver)
        except BadImage as error:
            return Outcome("refused", _one_line(error))
        except MissingImports as error:
            return Outcome("missing-imports", _one_line(error))
        except NtStatusError as error:
            # Not mapped: the load itself failed (the image does not fit); else DriverEntry's.
            return Outcome("load-failed" if driver.mapped is None else "entry-failed", str(error))
        if driver.driver_object and driver.image.name:
            for code, payload, length in IOCTLS.get(base.name, ()):
                try:
                    handle = driver.open()
                except ValueError:
                    break  # no named device
                with handle:
                    handle.device_control(code, payload, length)
        for name, args in CALLS.get(base.name, ()):
            if name in driver.image.exports:
                driver.call(name, *args)
        k.unload_driver(driver)
        if "loaded again after unloading" in done:
            k.load_driver(driver)
            k.unload_driver(driver)
        return Outcome("ran")
    except BugCheck as error:
        return Outcome("bugcheck", f"{error.code:#x} {error.name}")
    except NativeError as error:
        text = str(error)
        return Outcome("hang" if "did not return within" in text else "native-error", text)
    except UnimplementedRoutine as error:
        return Outcome("unimplemented", _one_line(error))
    except NtStatusError as error:
        return Outcome("entry-failed", str(error))


# --- the worker and its supervisor --------------------------------------------------------------

def _worker(connection_fd: int, seed: int, first: int, last: int, names, native_timeout: float,
            only, directory: str) -> None:
    """Run cases first..last-1, writing one JSON line per event to the pipe; each case's
    files go in ``directory``, which the supervisor made and removes (a worker it kills
    could not)."""
    out = os.fdopen(connection_fd, "w", buffering=1)
    bases = load_bases(names)
    for index in range(first, last):
        try:
            base, data, pdb, done = make_case(bases, seed, index, only)
        except Exception as error:  # noqa: BLE001 - the fuzzer's own bug: say so, go on
            out.write(json.dumps({"done": index, "kind": "fuzzer-error", "base": "?",
                                  "mutations": [], "detail": f"making the case: "
                                  f"{type(error).__name__}: {error}"[:300],
                                  "traceback": traceback.format_exc()[-3000:]}) + "\n")
            continue
        out.write(json.dumps({"start": index, "base": base.name, "mutations": done}) + "\n")
        try:
            outcome = run_case(base, data, pdb, directory, native_timeout, done)
            record = {"done": index, "kind": outcome.kind, "detail": outcome.detail[:300]}
        except BaseException as error:  # noqa: BLE001 - every other ending is a finding
            record = {"done": index, "kind": "exception",
                      "detail": f"{type(error).__name__}: {error}"[:300],
                      "traceback": traceback.format_exc()[-3000:]}
        record.update(base=base.name, mutations=done)
        out.write(json.dumps(record) + "\n")
    out.close()


def load_bases(names=None) -> list[Base]:
    bases = [describe_base(path) for path in base_paths()]
    if names:
        wanted = set(names)
        unknown = wanted - {b.name for b in bases}
        if unknown:
            raise SystemExit(f"no committed driver named {', '.join(sorted(unknown))}")
        bases = [b for b in bases if b.name in wanted]
    return bases


def _rss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def supervise(runs: int, seed: int, names=None, time_limit: float = 20.0, memory_mib: int = 2048,
              native_timeout: float = 1.0, progress=None, only=None) -> tuple[Counter, list[dict]]:
    """Run cases 0..runs-1 in watched workers; (how they ended, the findings). Each
    worker's case files go in a directory made here and removed when it ends, however."""
    counts: Counter = Counter()
    findings: list[dict] = []
    index = 0
    while index < runs:
        directory = tempfile.mkdtemp(prefix="ntpool-sys-fuzz-")
        try:
            index = _supervise_worker(index, runs, seed, names, time_limit, memory_mib,
                                      native_timeout, progress, only, directory, counts, findings)
        finally:
            shutil.rmtree(directory, ignore_errors=True)
    return counts, findings


def _supervise_worker(index: int, runs: int, seed: int, names, time_limit: float, memory_mib: int,
                      native_timeout: float, progress, only, directory: str, counts: Counter,
                      findings: list) -> int:
    """One worker from case ``index`` on, watched until it ends or is killed; the case to
    go on from."""
    import selectors
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the worker
        os.close(read_fd)
        code = 0
        try:
            _worker(write_fd, seed, index, runs, names, native_timeout, only, directory)
        except BaseException:  # noqa: BLE001
            traceback.print_exc()
            code = 1
        os._exit(code)
    os.close(write_fd)
    reader = os.fdopen(read_fd, "r")
    selector = selectors.DefaultSelector()
    selector.register(reader, selectors.EVENT_READ)
    current, started = None, time.monotonic()
    what: dict = {}
    ended = None
    buffer = ""
    while ended is None:
        ready = selector.select(timeout=0.2)
        if ready:
            chunk = os.read(read_fd, 65536).decode()
            if not chunk:
                ended = "exit"
                break
            buffer += chunk
            while "\n" in buffer:
                line, buffer = buffer.split("\n", 1)
                record = json.loads(line)
                if "start" in record:
                    current, started = record["start"], time.monotonic()
                    what = {"base": record["base"], "mutations": record["mutations"]}
                    continue
                current = None
                record["case"] = record.pop("done")
                index = record["case"] + 1
                counts[record["kind"]] += 1
                if record["kind"] not in ALLOWED:
                    findings.append(record)
                if progress:
                    progress(index, record)
        if current is not None:
            if time.monotonic() - started > time_limit:
                ended = "time"
            elif _rss_mib(pid) > memory_mib:
                ended = "memory"
    if ended != "exit":
        os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    selector.close()
    reader.close()
    if current is not None:  # the worker stopped inside a case
        kind = {"time": "timeout", "memory": "memory", "exit": "worker-died"}[ended]
        detail = {"time": f"the case ran past {time_limit:g} s",
                  "memory": f"the worker grew past {memory_mib} MiB",
                  "exit": "the worker process died"}[ended]
        counts[kind] += 1
        findings.append({"case": current, "kind": kind, "detail": detail, **what})
        index = current + 1
    elif ended == "exit" and index < runs:
        counts["worker-died"] += 1
        findings.append({"case": index, "kind": "worker-died",
                         "detail": "the worker exited between cases"})
        index += 1
    return index


def replay(seed: int, index: int, names=None, native_timeout: float = 1.0, only=None) -> int:
    bases = load_bases(names)
    base, data, pdb, done = make_case(bases, seed, index, only)
    print(f"case {index} of seed {seed}: {base.name}.sys, {'; '.join(done)}")
    with tempfile.TemporaryDirectory(prefix="ntpool-sys-fuzz-") as directory:
        outcome = run_case(base, data, pdb, directory, native_timeout, done)  # a finding raises here
    print(f"{outcome.kind}: {outcome.detail}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ntpool.tools.sys_fuzz",
                                     description="Mutate the committed test drivers; load and "
                                                 "run each; report every ending that is not "
                                                 "ntpool's own.")
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=None, help="default: a random seed (printed)")
    parser.add_argument("--case", type=int, default=None,
                        help="replay this one case of --seed here, with its traceback")
    parser.add_argument("--drivers", default=None,
                        help="comma-separated base drivers (default: every committed one)")
    parser.add_argument("--kinds", default=None,
                        help=f"comma-separated kinds of damage to choose from (default: all: "
                             f"{', '.join(sorted(set(KINDS)))})")
    parser.add_argument("--time-limit", type=float, default=20.0, help="seconds per case (default 20)")
    parser.add_argument("--memory-mib", type=int, default=2048,
                        help="the worker's resident memory limit (default 2048)")
    parser.add_argument("--native-timeout", type=float, default=1.0,
                        help="seconds a call into the driver may run before the watchdog stops "
                             "it (default 1)")
    parser.add_argument("--findings", default=None, help="also write the findings here (JSON lines)")
    parser.add_argument("--log", default=None, help="write every case's ending here (JSON lines)")
    args = parser.parse_args(argv)
    names = args.drivers.split(",") if args.drivers else None
    only = args.kinds.split(",") if args.kinds else None
    if only and set(only) - set(KINDS):
        parser.error(f"--kinds: unknown {', '.join(sorted(set(only) - set(KINDS)))}")
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    if args.case is not None:
        return replay(seed, args.case, names, args.native_timeout, only)
    print(f"sys_fuzz: {args.runs} cases, seed {seed}", flush=True)
    started = time.monotonic()

    log = open(args.log, "w") if args.log else None

    def progress(done: int, record: dict) -> None:
        if log:
            log.write(json.dumps(record) + "\n")
        if record["kind"] not in ALLOWED:
            print(f"  case {record['case']}: {record['kind']}: {record['detail']}", flush=True)
        elif done % 500 == 0:
            print(f"  {done} cases, {time.monotonic() - started:.0f} s", flush=True)

    counts, findings = supervise(args.runs, seed, names, args.time_limit, args.memory_mib,
                                 args.native_timeout, progress, only)
    if log:
        log.close()
    print(f"{sum(counts.values())} cases in {time.monotonic() - started:.0f} s: " +
          ", ".join(f"{kind} {count}" for kind, count in counts.most_common()))
    if args.findings:
        with open(args.findings, "w") as handle:
            for finding in findings:
                handle.write(json.dumps(dict(finding, seed=seed)) + "\n")
    for finding in findings:
        print(f"FINDING case {finding['case']} ({finding.get('base', '?')}.sys: "
              f"{'; '.join(finding.get('mutations', []))}): {finding['kind']}: {finding['detail']}\n"
              f"  replay: python -m ntpool.tools.sys_fuzz --seed {seed} --case {finding['case']}"
              + (f" --drivers {args.drivers}" if args.drivers else "")
              + (f" --kinds {args.kinds}" if args.kinds else ""))
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
