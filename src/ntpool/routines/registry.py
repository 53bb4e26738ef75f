"""The registry of routines a driver may call, each with its WDK C signature.

Every routine of the machine's surface (``ntpool.Kernel``'s WDK-named methods) is declared
once, where it is defined, with the C prototype from the WDK headers::

    @routine("PVOID ExAllocatePoolWithTag(POOL_TYPE PoolType, SIZE_T NumberOfBytes, ULONG Tag)")
    def ExAllocatePoolWithTag(self, PoolType, NumberOfBytes, Tag): ...

    @routine("NDIS_STATUS NdisAllocateMemoryWithTag(_Out_ PVOID *VirtualAddress, UINT Length, "
             "ULONG Tag)", module="NDIS.SYS")
    def NdisAllocateMemoryWithTag(self, Length, Tag): ...

The decorator parses the prototype at import time (an unknown type name is an error then,
not when a driver first calls), records a ``Routine`` and returns the function unchanged:
a call costs exactly what it cost before. Whoever needs the surface reads it from here: the
native call bridge marshals x64 calls by the parameters' ``CType``, the debugger's ``x``
lists the routines, the tests check each one against ``ntpool.Kernel``.

Python convention: the method takes the in-parameters in C order (str tags are accepted as
a convenience, ints always). Out-parameters (``_Out_``/``_Out_opt_``, always a pointer to
the value) are returned instead of written: the result is the C return value (unless VOID)
followed by each out value in order, a tuple when that makes more than one value::

    NDIS_STATUS NdisAllocateMemoryWithTag(_Out_ PVOID *VirtualAddress, ...) -> (status, va)
    VOID KeRaiseIrql(KIRQL NewIrql, _Out_ PKIRQL OldIrql)                    -> old irql

A native bridge writes each out value through the guest's pointer (``Param.ctype.pointee``
says how many bytes). Data exports (``PsInitialSystemProcess``) are declared with
``register_data``.
"""

from __future__ import annotations

import inspect
import re
from typing import Callable, NamedTuple

from ..errors import shown_argument

MODULES = ("ntoskrnl.exe", "HAL.dll", "NDIS.SYS")


class RegistryError(ValueError):
    """A prototype that cannot be parsed, an unknown type, or a routine declared twice."""


class CType(NamedTuple):
    """A C type as the x64 calling convention sees it."""

    name: str
    size: int  # bytes at the ABI (0 for VOID); every pointer is 8
    signed: bool
    pointer: bool
    pointee: CType | None = None  # what a pointer points to, when the type says

    def __str__(self) -> str:
        return self.name


class Param(NamedTuple):
    name: str
    ctype: CType
    out: bool = False  # _Out_: the routine writes *name; Python returns the value instead
    optional: bool = False  # _In_opt_ / _Out_opt_: NULL (None) is allowed


class Routine(NamedTuple):
    name: str
    module: str
    returns: CType
    params: tuple[Param, ...]
    signature: str
    function: Callable
    ordinal: int | None = None
    variadic: bool = False  # the prototype ends in "...": the method takes *Arguments

    @property
    def in_params(self) -> tuple[Param, ...]:
        return tuple(p for p in self.params if not p.out)

    @property
    def out_params(self) -> tuple[Param, ...]:
        return tuple(p for p in self.params if p.out)


class DataExport(NamedTuple):
    """A variable a module exports (native code imports its address)."""

    name: str
    module: str
    ctype: CType
    value: Callable  # value(kernel) -> the variable's contents (an int)


# --- the C types ---------------------------------------------------------------------------

_TYPES: dict[str, CType] = {}


def register_type(name: str, size: int, signed: bool = False, pointer: bool = False,
                  pointee: str | None = None) -> CType:
    """Teach the registry a C type name (a pointer type may name what it points to)."""
    if pointer and size != 8:
        raise RegistryError(f"pointer type {name} must be 8 bytes, not {size}")
    target = None
    if pointee is not None:
        target = _TYPES.get(pointee)
        if target is None:
            raise RegistryError(f"pointer type {name}: unknown pointee type {pointee}")
    ctype = CType(name, size, signed, pointer, target)
    known = _TYPES.get(name)
    if known is not None and known != ctype:
        raise RegistryError(f"C type {name} is already known as {known!r}")
    _TYPES[name] = ctype
    return ctype


def ctype(name: str) -> CType:
    """The CType for a type name; RegistryError for a name nobody registered."""
    try:
        return _TYPES[name]
    except KeyError:
        raise RegistryError(f"unknown C type {name!r} (register it with register_type)") from None


def pointer_to(target: CType) -> CType:
    return CType(f"{target.name} *", 8, False, True, target)


for _name, _size, _signed in (
        ("VOID", 0, False), ("UCHAR", 1, False), ("CHAR", 1, True), ("CCHAR", 1, True),
        ("BOOLEAN", 1, False), ("KIRQL", 1, False), ("KPROCESSOR_MODE", 1, True),
        ("USHORT", 2, False), ("SHORT", 2, True), ("WCHAR", 2, False),
        ("ULONG", 4, False), ("LONG", 4, True), ("UINT", 4, False), ("INT", 4, True),
        ("NTSTATUS", 4, True), ("NDIS_STATUS", 4, True), ("ACCESS_MASK", 4, False),
        ("POOL_TYPE", 4, True), ("EX_POOL_PRIORITY", 4, True), ("MEMORY_CACHING_TYPE", 4, True),
        ("LOCK_OPERATION", 4, True), ("KWAIT_REASON", 4, True),
        ("ULONG64", 8, False), ("LONG64", 8, True), ("ULONGLONG", 8, False),
        ("LONGLONG", 8, True), ("SIZE_T", 8, False), ("ULONG_PTR", 8, False),
        ("LONG_PTR", 8, True), ("POOL_FLAGS", 8, False),
        # LARGE_INTEGER and PHYSICAL_ADDRESS are 8-byte unions, passed by value in a register.
        ("LARGE_INTEGER", 8, True), ("PHYSICAL_ADDRESS", 8, True),
        ("NDIS_PHYSICAL_ADDRESS", 8, True)):
    register_type(_name, _size, _signed)

# Opaque pointers, and pointers whose pointee the registry knows.
for _name in ("PVOID", "HANDLE", "NDIS_HANDLE", "PEPROCESS", "PETHREAD", "PKTHREAD",
              "PDRIVER_OBJECT", "PDEVICE_OBJECT", "PFILE_OBJECT", "PIRP", "PMDL",
              "PUNICODE_STRING", "PCUNICODE_STRING", "PANSI_STRING", "PCANSI_STRING",
              "PCHAR", "PCSTR", "PSTR", "PWSTR", "PCWSTR", "PKEVENT", "PERESOURCE",
              "PSECURITY_DESCRIPTOR", "PKDPC", "PKTIMER", "PIO_STATUS_BLOCK",
              "PPOOL_EXTENDED_PARAMETER", "PCPOOL_EXTENDED_PARAMETER",
              "PNDIS_MINIPORT_DRIVER_CHARACTERISTICS", "PNDIS_MINIPORT_CHARACTERISTICS",
              "PNPAGED_LOOKASIDE_LIST", "PPAGED_LOOKASIDE_LIST", "PLOOKASIDE_LIST_EX",
              "PKLOCK_QUEUE_HANDLE", "PLIST_ENTRY", "PSINGLE_LIST_ENTRY"):
    register_type(_name, 8, pointer=True)
for _name, _pointee in (("PKIRQL", "KIRQL"), ("PKSPIN_LOCK", "ULONG_PTR"),
                        ("PUCHAR", "UCHAR"), ("PUSHORT", "USHORT"), ("PULONG", "ULONG"),
                        ("PLONG", "LONG"), ("PULONG64", "ULONG64"), ("PSIZE_T", "SIZE_T"),
                        ("PULONG_PTR", "ULONG_PTR"), ("PHANDLE", "HANDLE"),
                        ("PNDIS_HANDLE", "NDIS_HANDLE"), ("PNTSTATUS", "NTSTATUS"),
                        ("PLARGE_INTEGER", "LARGE_INTEGER"),
                        ("PPHYSICAL_ADDRESS", "PHYSICAL_ADDRESS")):
    register_type(_name, 8, pointer=True, pointee=_pointee)
register_type("KSPIN_LOCK", 8)  # a ULONG_PTR in memory


# --- prototypes ----------------------------------------------------------------------------

_PROTOTYPE = re.compile(r"^\s*(?P<returns>[A-Za-z_]\w*(?:\s*\*)*)\s+(?:NTAPI\s+|FASTCALL\s+)?"
                        r"(?P<name>[A-Za-z_]\w*)\s*\((?P<params>.*)\)\s*;?\s*$", re.S)
_ANNOTATION = re.compile(r"\b_[A-Za-z]\w*_(?:\([^()]*\))?")
_OUT = re.compile(r"^_Out(?:_opt)?_$")
_OPTIONAL = re.compile(r"^_(?:In|Out|Inout)_opt_$")
_QUALIFIERS = {"const", "CONST", "UNALIGNED", "volatile", "IN", "OUT", "OPTIONAL"}


def _type_of(text: str, where: str) -> CType:
    """A type written as NAME followed by zero or more '*'."""
    stars = text.count("*")
    words = [w for w in text.replace("*", " ").split() if w not in _QUALIFIERS]
    if len(words) != 1:
        raise RegistryError(f"{where}: cannot read the type {text.strip()!r}")
    result = ctype(words[0])
    for _ in range(stars):
        result = pointer_to(result)
    return result


def _parse_param(text: str, where: str) -> Param:
    annotations = _ANNOTATION.findall(text)
    bare = _ANNOTATION.sub(" ", text).strip()
    match = re.match(r"^(?P<type>.*?[\s*])(?P<name>[A-Za-z_]\w*)$", bare)
    if match is None:
        raise RegistryError(f"{where}: cannot read the parameter {text.strip()!r}")
    name = match["name"]
    param_type = _type_of(match["type"], f"{where} parameter {name}")
    out = any(_OUT.match(a) for a in annotations) or "OUT" in bare.split() and \
        "IN" not in bare.split()
    optional = any(_OPTIONAL.match(a) for a in annotations) or "OPTIONAL" in bare.split()
    if out and not param_type.pointer:
        raise RegistryError(f"{where}: out-parameter {name} must be a pointer")
    return Param(name, param_type, out, optional)


def parse_prototype(signature: str) -> tuple[str, CType, tuple[Param, ...]]:
    """(name, return type, parameters) of a C prototype; RegistryError if it is not one. A
    variadic prototype's "..." is not a parameter (``is_variadic`` says it is there)."""
    match = _PROTOTYPE.match(signature)
    if match is None:
        raise RegistryError(f"not a C prototype: {signature!r}")
    name = match["name"]
    returns = _type_of(match["returns"], f"{name} return type")
    text = match["params"].strip()
    params: tuple[Param, ...] = ()
    if text and text != "VOID" and text != "void":
        parts = text.split(",")
        if parts[-1].strip() == "...":
            parts.pop()
        params = tuple(_parse_param(part, name) for part in parts)
    names = [p.name for p in params]
    if len(set(names)) != len(names):
        raise RegistryError(f"{name}: a parameter name is repeated")
    return name, returns, params


# --- the registry --------------------------------------------------------------------------

_ROUTINES: dict[str, Routine] = {}
_DATA: dict[str, DataExport] = {}
# The code of each function ``serve_directly`` made a routine: the names of the routines it
# serves (a machine's served functions are made anew for each machine, from the same code,
# and one code may serve several routines of one shape).
_SERVED_CODES: dict = {}


def _checked_module(module: str, name: str) -> str:
    if module not in MODULES:
        raise RegistryError(f"{name}: module must be one of {', '.join(MODULES)}, not {module!r}")
    return module


def is_variadic(signature: str) -> bool:
    return bool(re.search(r",\s*\.\.\.\s*\)\s*;?\s*$", signature))


def routine(signature: str, module: str = "ntoskrnl.exe", ordinal: int | None = None):
    """Declare the decorated function as the routine ``signature`` describes."""
    name, returns, params = parse_prototype(signature)
    module = _checked_module(module, name)

    def declare(function: Callable) -> Callable:
        entry = Routine(name, module, returns, params, " ".join(signature.split()), function,
                        ordinal, is_variadic(signature))
        known = _ROUTINES.get(name)
        if known is not None and known.function is not function and \
                (known.function.__module__, known.function.__qualname__) != \
                (function.__module__, function.__qualname__):
            raise RegistryError(f"routine {name} is declared twice "
                                f"({known.function.__qualname__} and {function.__qualname__})")
        _ROUTINES[name] = entry
        return function

    return declare


def serve_directly(kernel, method: Callable, function: Callable) -> None:
    """Let ``kernel``'s routine ``method`` (a declared routine, as defined on its class) be
    ``function`` itself, a function taking the routine's parameters (the allocator's fast
    path): a driver's call then reaches it with no Python call in between. It keeps the
    routine's name, docstring and signature (``help``, ``inspect.signature``); the registry,
    the native bridge (``getattr(kernel, name)``) and a halted machine's refusal go by the
    name, so they are unchanged. ``function`` must accept the routine's parameters by their
    WDK names, as the method does."""
    parameters = list(inspect.signature(method).parameters.values())[1:]  # without self
    function.__name__ = method.__name__
    function.__qualname__ = method.__qualname__
    function.__module__ = method.__module__
    function.__doc__ = method.__doc__
    function.__signature__ = inspect.Signature(
        parameters, return_annotation=inspect.signature(method).return_annotation)
    _SERVED_CODES.setdefault(function.__code__, set()).add(method.__name__)
    setattr(kernel, method.__name__, function)


def register_data(name: str, type_name: str, value: Callable, module: str = "ntoskrnl.exe") -> DataExport:
    """Declare an exported variable: ``value(kernel)`` gives its contents."""
    if not re.fullmatch(r"[A-Za-z_]\w*", name):
        raise RegistryError(f"data export name {name!r} is not a C identifier")
    entry = DataExport(name, _checked_module(module, name), ctype(type_name), value)
    _DATA[name] = entry
    return entry


# The routines are declared where the Kernel's methods are defined, so the surface is whole
# once ``ntpool.kernel`` has been imported; it says so (``surface_complete``) at its end. The
# registry imports nothing above it: a reader of the whole surface imports the kernel first,
# and a read before that is refused, not answered with part of the surface.
_surface_is_complete = False


def surface_complete() -> None:
    """Called by ``ntpool.kernel`` once every routine family is imported."""
    global _surface_is_complete
    _surface_is_complete = True


def _require_surface() -> None:
    if not _surface_is_complete:
        raise RegistryError("the routine surface is declared by ntpool.kernel: import it "
                            "(ntpool.Kernel) before reading the registry")


def routines() -> list[Routine]:
    """Every registered routine, by name."""
    _require_surface()
    return [_ROUTINES[name] for name in sorted(_ROUTINES)]


def lookup(name: str) -> Routine:
    """The routine called ``name``; KeyError if no routine has that name."""
    _require_surface()
    try:
        return _ROUTINES[name]
    except KeyError:
        raise KeyError(f"no routine named {name!r} is registered") from None


def by_module(module: str) -> list[Routine]:
    """The routines ``module`` ("ntoskrnl.exe", "HAL.dll", "NDIS.SYS") exports."""
    _require_surface()
    return [r for r in routines() if r.module == module]


def data_exports() -> list[DataExport]:
    _require_surface()
    return [_DATA[name] for name in sorted(_DATA)]


def lookup_data(name: str) -> DataExport:
    _require_surface()
    try:
        return _DATA[name]
    except KeyError:
        raise KeyError(f"no data export named {name!r} is registered") from None


# --- a Python caller's argument that no C caller could pass ----------------------------------

# What these errors are when a Python driver passes a routine a value its C parameter cannot
# hold: the routine's code then fails on it (an operator, a format, a range check), and the
# message names neither the routine nor the parameter.
_ARGUMENT_ERRORS = (TypeError, ValueError, OverflowError)


def explain_argument_error(error: BaseException) -> str | None:
    """For ``error`` raised inside a routine that Python code called: which argument no C
    caller could have passed, as "Routine: Param (C type) ..., got VALUE", or None.

    The routine is the outermost one on the error's traceback (the one the caller called); its
    arguments are read from its frame, by their position in the C prototype. A value is named
    when it is not one of its C type's: None where the parameter is not optional (NULL is 0),
    a float, a container, bytes, or an int outside the type's range. A str, a callable or any
    other object is taken to be a convenience the routine accepts, so it is not named: when
    every argument passes, the error is the routine's own answer (or ntpool's), and None is
    returned. Made only after the error, so a call costs nothing more."""
    if not isinstance(error, _ARGUMENT_ERRORS):
        return None
    codes = _routine_codes()
    trace, caller = error.__traceback__, None
    while trace is not None:
        frame = trace.tb_frame
        names = codes.get(frame.f_code)
        if names:
            return _explain_arguments(_ROUTINES[_called(names, caller)], frame)
        trace, caller = trace.tb_next, frame
    return None


def _routine_codes() -> dict:
    """Each routine's code: the names of the routines it serves."""
    codes = {}
    for name, entry in _ROUTINES.items():
        code = getattr(entry.function, "__code__", None)
        if code is not None:
            codes.setdefault(code, set()).add(name)
    for code, names in _SERVED_CODES.items():
        codes.setdefault(code, set()).update(names)
    return codes


def _called(names: set, caller) -> str:
    """Which of the routines one code serves the caller called: the one its code names
    (``k.ExAllocateFromNPagedLookasideList(...)`` names it), else the first by name."""
    named = sorted(name for name in names if caller is not None and name in caller.f_code.co_names)
    return (named or sorted(names))[0]


def _explain_arguments(entry: Routine, frame) -> str | None:
    code = frame.f_code
    names = code.co_varnames[:code.co_argcount]
    if names and names[0] == "self":
        names = names[1:]
    values = frame.f_locals
    inputs = [param for param in entry.params if not param.out]
    for param, name in zip(inputs, names):
        if name not in values:
            continue
        problem = _not_a_c_value(param, values[name])
        if problem:
            return f"{entry.name}: {param.name} ({param.ctype}) {problem}"
    return None


def _not_a_c_value(param: Param, value) -> str:
    """Why ``value`` is no value of ``param``'s C type, or "" when it may be one."""
    ctype = param.ctype
    if value is None:
        return "" if param.optional else \
            "is not optional: pass an int (0 is NULL), not None"
    if isinstance(value, bool) or not isinstance(value, (int, float, bytes, bytearray,
                                                          list, tuple, dict, set)):
        return ""  # a str tag, a callable, a driver's object: conveniences some routines take
    if not isinstance(value, int):
        return f"must be an int, got {type(value).__name__} {shown_argument(value)}"
    if ctype.size == 0 or ctype.pointer or ctype.size > 8:
        low, high = 0, (1 << 64) - 1
    elif ctype.signed:
        low, high = -(1 << (8 * ctype.size - 1)), (1 << (8 * ctype.size - 1)) - 1
    else:
        low, high = 0, (1 << (8 * ctype.size)) - 1
    if low <= value <= high:
        return ""
    return f"must be an int from {low:#x} to {high:#x}, got {value:#x}"
