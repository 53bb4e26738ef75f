"""Binding a driver's imports to ntpool's routines, marshalled from their C signatures.

Each routine a driver imports gets one stub (shared by every driver that imports it) and
one handler, ``handler(rcx, rdx, r8, r9, rsp) -> rax``, built from the routine's
registry entry: the x64 convention (four register arguments, the rest at [rsp+0x28],
[rsp+0x30], ...), each argument cut to its C type's size and sign, out-parameters written
through the guest's pointers after the call. A handler whose arguments are all plain
integers in registers is compiled to a single call, so the common routines cost one
Python call each.

A few routines need the guest's memory in ways a C prototype cannot say (variadic
formats, exported data); they have native handlers here, still registered under their
names. An import nothing implements is refused at load, or, with ``allow_missing``, bound
to a handler that stops the run naming the routine when it is first called.
"""

import os

from ..packing import x64_struct
from .. import kernel as _kernel  # noqa: F401  (importing it declares the whole routine surface)
from ..pool.allocator import VALID_POOL_TYPE_BITS
from ..routines import registry
from . import cpu as cpu_module
from . import runtime
from .pe import BadImage, shown

_Q = x64_struct("<Q")
MASK64 = 0xFFFFFFFFFFFFFFFF


class UnimplementedRoutine(RuntimeError):
    """A driver called an import ntpool does not implement (loaded with allow_missing)."""


class StraySyscall(Exception):
    """A ``syscall`` instruction native code ran outside ntpool's import stubs (``address``:
    the instruction's), which the runner answers as Windows' CPU would (``machine``)."""

    def __init__(self, address: int):
        self.address = address
        super().__init__(f"syscall at {address:#x}, outside an import stub")


# Stub number 0 is no routine's: each stub clears the call block's number once its call is
# made, so a syscall that no stub prepared (one outside the stubs) finds this slot.
STRAY_SYSCALL = 0


def _converter(ctype) -> str | None:
    """Python expression text turning a raw 64-bit argument ``v`` into the C type's value."""
    native = NATIVE_VALUES.get(ctype.name)
    if native is not None:
        return native
    size = ctype.size
    if size >= 8 or ctype.pointer:
        return None
    bits = size * 8
    if ctype.signed:
        sign = 1 << (bits - 1)
        return f"((v & {(1 << bits) - 1:#x}) ^ {sign:#x}) - {sign:#x}"
    return f"v & {(1 << bits) - 1:#x}"


# C types whose values native code may pass outside what ntpool's routines accept from
# Python, read as Windows reads them: a POOL_TYPE's bits Windows gives no meaning are ignored
# (WRK's ExAllocatePoolWithTag selects the pool by PoolType & BASE_POOL_TYPE_MASK and never
# checks the others), an EX_POOL_PRIORITY as ``runtime.native_priority``.
NATIVE_VALUES = {"POOL_TYPE": f"v & {VALID_POOL_TYPE_BITS:#x}",
                 "EX_POOL_PRIORITY": "_priority(v)"}
# The same for one routine's parameter: NDIS's MemoryFlags bits other than
# NDIS_MEMORY_CONTIGUOUS and NDIS_MEMORY_NONCACHED select nothing (NDIS tests those two and
# otherwise allocates, or frees, pool; ReactOS's ndis does the same).
# A lookaside list's Size below 8 is kept as 8: Windows keeps any Size, and the pool block
# of so small an entry (16 bytes) holds the SLIST_ENTRY a free pushes into it anyway; ntpool's
# lists need the entry's 8 bytes to be the allocation's (README, departures).
NATIVE_PARAMETERS = {("NdisAllocateMemory", "MemoryFlags"): "v & 3",
                     ("ExInitializeNPagedLookasideList", "Size"): "max(v & 0xffffffff, 8)",
                     ("ExInitializePagedLookasideList", "Size"): "max(v & 0xffffffff, 8)",
                     ("ExInitializeLookasideListEx", "Size"): "max(v & 0xffffffff, 8)"}


def _argument_source(index: int) -> str:
    if index < 4:
        return ("rcx", "rdx", "r8", "r9")[index]
    return f"_rq(rsp + {0x28 + 8 * (index - 4):#x})"


def compile_handler(machine, entry):
    """The handler for a registry routine: marshals the call, writes out-parameters."""
    kernel = machine.kernel
    function = getattr(kernel, entry.name)
    params = entry.params
    lines = []
    in_names = []
    for index, param in enumerate(params):
        source = _argument_source(index)
        lines.append(f"    a{index} = {source}")
        if not param.out:
            convert = NATIVE_PARAMETERS.get((entry.name, param.name)) or _converter(param.ctype)
            if convert:
                lines.append(f"    a{index} = {convert.replace('v', f'a{index}')}")
            in_names.append(f"a{index}")
    outs = [(index, param) for index, param in enumerate(params) if param.out]
    call = f"_f({', '.join(in_names)})"
    returns_value = entry.returns.name != "VOID"
    if not outs:
        lines.append(f"    return {call}" if returns_value else f"    {call}\n    return 0")
    else:
        lines.append(f"    r = {call}")
        results = (["ret"] if returns_value else []) + [f"o{index}" for index, _ in outs]
        if len(results) == 1:
            lines.append(f"    {results[0]} = r")
        else:
            lines.append(f"    {', '.join(results)} = r")
        for index, param in outs:
            size = param.ctype.pointee.size if param.ctype.pointee is not None else 8
            size = size or 8
            store = (f"_w(a{index}, (int(o{index} or 0) & {(1 << (8 * size)) - 1:#x})"
                     f".to_bytes({size}, 'little'))")
            if param.optional:  # _Out_opt_: NULL means "not wanted"
                lines.append(f"    if a{index}:")
                lines.append(f"        {store}")
            else:  # _Out_: the routine stores through it, NULL or not (NULL faults, as on Windows)
                lines.append(f"    {store}")
        lines.append("    return ret" if returns_value else "    return 0")
    source = "def handler(rcx, rdx, r8, r9, rsp):\n" + "\n".join(lines) + "\n"
    namespace = {"_f": function, "_rq": machine.read_q, "_w": kernel.write,
                 "_priority": runtime.native_priority}
    # Named as a file of this package: the call-site lookup knows frames from here are the
    # native bridge's, and asks the CPU for the site (the driver's return address).
    filename = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"<binding {entry.name}>")
    exec(compile(source, filename, "exec"), namespace)
    handler = namespace["handler"]
    handler.__name__ = entry.name
    kernel.call_sites.native_bridges[id(handler.__code__)] = handler.__code__
    return handler


class Bindings:
    def __init__(self, machine):
        self.machine = machine
        self.kernel = machine.kernel
        self.handlers: list = [self._stray_handler()]  # stub number -> handler
        self.names: list[str] = ["(no routine: a syscall outside the import stubs)"]
        self.stub_of: dict[str, int] = {}  # routine name -> stub address
        self.data_of: dict[str, int] = {}  # data export name -> its address
        routines = {entry.name: entry for entry in registry.routines()}
        self.routines = routines
        self.by_module = {}
        for entry in routines.values():
            self.by_module.setdefault(entry.module.lower(), {})[entry.name] = entry
        self.ordinals = {(entry.module.lower(), entry.ordinal): entry.name
                         for entry in routines.values() if entry.ordinal is not None}
        self.data = {entry.name: entry for entry in registry.data_exports()}

    # --- what an image needs ---------------------------------------------------------------

    def name_of(self, entry) -> str | None:
        if entry.name is not None:
            return entry.name
        return self.ordinals.get((entry.module.lower(), entry.ordinal))

    def implemented(self, module: str, name: str | None) -> bool:
        if name is None:
            return False
        if name in runtime.NATIVE_ONLY:
            return runtime.NATIVE_ONLY[name][0].lower() == module.lower()
        if name in self.data:
            return self.data[name].module.lower() == module.lower()
        return name in self.by_module.get(module.lower(), {})

    def missing(self, image) -> list[str]:
        result = []
        for entry in image.imports:
            name = self.name_of(entry)
            if not self.implemented(entry.module, name):
                label = shown(entry.name) if entry.name is not None else f"#{entry.ordinal}"
                result.append(f"{entry.module}!{label}")
        return sorted(set(result))

    def stub_key(self, entry) -> str | None:
        """The name the import's stub is kept under (None: a data export, bound to its
        variable, needs no stub)."""
        name = self.name_of(entry)
        if not self.implemented(entry.module, name):
            label = shown(entry.name) if entry.name is not None else f"ordinal {entry.ordinal}"
            return f"{entry.module}!{label}"
        return None if name in self.data else name

    def check_room(self, image) -> None:
        """BadImage, before anything is bound, when the image's distinct imports need more
        stubs than the stub pages have left (each is made once and shared by every driver)."""
        new = {key for key in map(self.stub_key, image.imports)
               if key is not None and key not in self.stub_of}
        room = cpu_module.MAX_STUBS - len(self.handlers)
        if len(new) > room:
            raise BadImage(f"{image.name}: imports {len(new)} distinct routines ntpool has not "
                           f"bound yet; the machine has room for {room} more")

    def resolve(self, entry) -> int:
        """The address an import is bound to (its stub, or the data variable)."""
        name = self.name_of(entry)
        if not self.implemented(entry.module, name):
            label = shown(entry.name) if entry.name is not None else f"ordinal {entry.ordinal}"
            return self.stub(f"{entry.module}!{label}", missing=True)
        if name in self.data:
            return self.data_address(name)
        return self.stub(name)

    # --- stubs ---------------------------------------------------------------------------

    def stub(self, name: str, missing: bool = False) -> int:
        address = self.stub_of.get(name)
        if address is not None:
            return address
        number = len(self.handlers)
        if number >= cpu_module.MAX_STUBS:
            raise MemoryError(f"more than {cpu_module.MAX_STUBS} distinct imports")
        if missing:
            handler = self._missing_handler(name)
        elif name in runtime.NATIVE_ONLY:
            handler = runtime.NATIVE_ONLY[name][1](self.machine)
        elif name in runtime.NATIVE_OVERRIDES:
            handler = runtime.NATIVE_OVERRIDES[name](self.machine)
        else:
            handler = compile_handler(self.machine, self.routines[name])
        address = cpu_module.FIRST_STUB + number * cpu_module.STUB_SIZE
        self.machine.write_code(address, cpu_module.stub_code(number, address))
        self.handlers.append(handler)
        self.names.append(name)
        self.stub_of[name] = address
        return address

    def _stray_handler(self):
        rip = self.machine_rip

        def handler(rcx, rdx, r8, r9, rsp):
            raise StraySyscall(rip())

        return handler

    def machine_rip(self) -> int:
        return self.machine.cpu.rip_register.read()[0]

    def _missing_handler(self, name: str):
        machine = self.machine

        def handler(rcx, rdx, r8, r9, rsp):
            raise UnimplementedRoutine(
                f"{machine.describe(machine.return_address())} called {name}, which ntpool "
                f"does not implement (the driver was loaded with allow_missing)")

        return handler

    def data_address(self, name: str) -> int:
        address = self.data_of.get(name)
        if address is None:
            entry = self.data[name]
            address = self.kernel.kernel_data.reserve(max(8, entry.ctype.size), align=16)
            value = int(entry.value(self.kernel) or 0)
            self.kernel.write(address, (value & MASK64).to_bytes(8, "little"))
            self.data_of[name] = address
        return address
