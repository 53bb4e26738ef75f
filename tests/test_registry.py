"""The routine registry: every routine a driver may call, once, with its C signature."""

import inspect
import pathlib
import re
import typing

import pytest

import ntpool
from ntpool.routines import registry
from ntpool.routines.registry import RegistryError, ctype, parse_prototype, routine

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
WDK_NAME = re.compile(r"\b(?:Ex|ExpX|FsRtl|Ndis|Ke|Kf|Rtl|Ps|Mm|Io|Ob|Se|Zw|Hal)[A-Z]\w*")


def test_every_registered_routine_is_a_method_of_kernel():
    names = [r.name for r in registry.routines()]
    assert len(names) == len(set(names)) >= 40
    for entry in registry.routines():
        assert inspect.getattr_static(ntpool.Kernel, entry.name, None) is not None, entry.name
        assert getattr(ntpool.Kernel, entry.name) is entry.function, entry.name


def test_every_wdk_named_method_of_kernel_is_registered():
    registered = {r.name for r in registry.routines()} | {d.name for d in registry.data_exports()}
    surface = {name for name in dir(ntpool.Kernel) if WDK_NAME.fullmatch(name)}
    assert surface - registered == set()


def test_python_parameters_are_the_c_in_parameters_in_order():
    for entry in registry.routines():
        signature = inspect.signature(entry.function)
        positional = [p.name for p in signature.parameters.values()
                      if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        assert positional[0] == "self", entry.name
        assert positional[1:] == [p.name for p in entry.in_params], entry.name
        # Python-only extras (KeBugCheckEx's detail) are keyword-only, never in a C slot.
        for p in signature.parameters.values():
            if p.kind == p.KEYWORD_ONLY:
                assert p.default is not p.empty, (entry.name, p.name)


def _results(entry) -> int:
    return (entry.returns.name != "VOID") + len(entry.out_params)


def test_the_python_result_is_the_return_value_then_the_out_values():
    for entry in registry.routines():
        annotation = typing.get_type_hints(entry.function).get("return", "missing")
        if entry.name == "KeBugCheckEx":
            assert annotation is typing.NoReturn
            continue
        count = _results(entry)
        if count == 0:
            assert annotation is type(None), entry.name
        elif count == 1:
            assert annotation is int, entry.name
        else:
            assert typing.get_origin(annotation) is tuple, entry.name
            assert typing.get_args(annotation) == (int,) * count, entry.name


def test_out_values_come_back_from_a_running_machine():
    k = ntpool.Kernel(nonpaged_pool_bytes=1 << 20, paged_pool_bytes=1 << 20)
    status, va = k.NdisAllocateMemoryWithTag(64, "Rgst")
    assert status == ntpool.NdisStatus.NDIS_STATUS_SUCCESS and va
    assert k.KeRaiseIrql(ntpool.DISPATCH_LEVEL) == ntpool.PASSIVE_LEVEL
    k.KeLowerIrql(ntpool.PASSIVE_LEVEL)
    lock = k.ExAllocatePoolWithTag(ntpool.PoolType.NonPagedPool, 8, "Lock")
    k.KeInitializeSpinLock(lock)
    assert k.KeAcquireSpinLock(lock) == ntpool.PASSIVE_LEVEL
    k.KeReleaseSpinLock(lock, ntpool.PASSIVE_LEVEL)
    assert registry.lookup_data("PsInitialSystemProcess").value(k) == k.PsGetCurrentProcess()


def _contract_table_routines() -> set[str]:
    text = README.read_text()
    table = text.split("### Contract table", 1)[1].split("\n## ", 1)[0]
    names = set()
    for line in table.splitlines():
        if line.startswith("| ") and not line.startswith("| Routine"):
            names.update(WDK_NAME.findall(line.split("|")[1]))
    return names


def test_the_readme_contract_table_names_only_registered_routines():
    names = _contract_table_routines()
    assert {"NdisAllocateMemoryWithTag", "FsRtlAllocatePoolWithTag", "KeRaiseIrql"} <= names
    registered = {r.name for r in registry.routines()}
    assert names - registered == set()


def test_the_readme_examples_call_only_registered_routines():
    called = set(re.findall(r"\bk\.([A-Z]\w+)\(", README.read_text()))
    assert "ExAllocatePoolWithTag" in called
    assert called - {r.name for r in registry.routines()} == set()


def test_signatures_keep_their_wdk_text_and_module():
    entry = registry.lookup("NdisAllocateMemoryWithTag")
    assert entry.module == "NDIS.SYS"
    assert entry.signature.startswith("NDIS_STATUS NdisAllocateMemoryWithTag(_Out_ PVOID *VirtualAddress")
    out, = entry.out_params
    assert out.name == "VirtualAddress" and out.ctype.pointer and out.ctype.pointee.name == "PVOID"
    assert [p.name for p in entry.in_params] == ["Length", "Tag"]
    assert entry in registry.by_module("NDIS.SYS")
    assert entry not in registry.by_module("ntoskrnl.exe")
    raise_irql = registry.lookup("KeRaiseIrql")
    assert raise_irql.out_params[0].ctype.pointee.size == 1  # a KIRQL is one byte
    assert registry.lookup("ExAllocatePool3").params[3].optional
    with pytest.raises(KeyError, match="NoSuchRoutine"):
        registry.lookup("NoSuchRoutine")


def test_c_types_have_their_abi_sizes():
    assert ctype("PVOID") == (ctype("PVOID").name, 8, False, True, None)
    assert ctype("KIRQL").size == 1 and not ctype("KIRQL").pointer
    assert ctype("ULONG").size == 4 and not ctype("ULONG").signed
    assert ctype("NTSTATUS").signed and ctype("NDIS_STATUS").size == 4
    assert ctype("SIZE_T").size == 8 and ctype("POOL_FLAGS").size == 8
    _, returns, params = parse_prototype("SIZE_T RtlCompareMemory(_In_ const VOID *Source1, "
                                         "_In_ const VOID *Source2, _In_ SIZE_T Length)")
    assert returns.size == 8 and params[0].ctype.pointer and params[0].ctype.size == 8


def test_unknown_types_and_malformed_prototypes_are_errors_at_declaration():
    with pytest.raises(RegistryError, match="unknown C type 'PWIDGET'"):
        routine("VOID Broken(_In_ PWIDGET Widget)")
    with pytest.raises(RegistryError, match="must be a pointer"):
        routine("VOID Broken(_Out_ ULONG Value)")
    with pytest.raises(RegistryError, match="not a C prototype"):
        routine("this is not C")
    with pytest.raises(RegistryError, match="module"):
        routine("VOID Broken(VOID)", module="win32k.sys")


def test_a_routine_declared_twice_is_an_error(monkeypatch):
    monkeypatch.setattr(registry, "_ROUTINES", dict(registry._ROUTINES))

    def first(self):
        pass

    def second(self):
        pass

    routine("VOID TwiceDeclared(VOID)")(first)
    with pytest.raises(RegistryError, match="declared twice"):
        routine("VOID TwiceDeclared(VOID)")(second)


def test_declaring_costs_nothing_at_call_time(monkeypatch):
    monkeypatch.setattr(registry, "_ROUTINES", dict(registry._ROUTINES))

    def plain(self, P):
        return P

    assert routine("PVOID Identity(_In_ PVOID P)")(plain) is plain


def test_a_read_before_the_kernel_declares_the_surface_is_refused(monkeypatch):
    # The registry imports nothing above it: the kernel says when the surface is whole, and
    # a read before then is an error rather than part of the surface.
    monkeypatch.setattr(registry, "_surface_is_complete", False)
    for read in (registry.routines, registry.data_exports, lambda: registry.lookup("KeRaiseIrql"),
                 lambda: registry.by_module("NDIS.SYS")):
        with pytest.raises(RegistryError, match="import it"):
            read()
    monkeypatch.setattr(registry, "_surface_is_complete", True)
    assert registry.lookup("KeRaiseIrql").module == "ntoskrnl.exe"
