"""ntpool.hooks: the one way layers hook into the machine."""

import pytest

import ntpool
from ntpool.hooks import (
    BugCheckRaised,
    CopiedToUser,
    DriverUnloading,
    Hooks,
    IrqlRaised,
    MemoryCopied,
    MemoryWritten,
    PageFault,
)

NP = ntpool.PoolType.NonPagedPool


@pytest.fixture
def k():
    return ntpool.Kernel(nonpaged_pool_bytes=1 << 20, paged_pool_bytes=1 << 20)


def test_nothing_listens_on_a_fresh_machine_and_its_fast_paths_are_plain(k):
    for event in (BugCheckRaised, IrqlRaised, PageFault, MemoryWritten, MemoryCopied,
                  CopiedToUser):
        assert k.hooks.listening(event) == ()
    assert "write" not in vars(k)  # k.write is the class's own fast path
    assert k.pool.layer is None and k.pool.fast_pools


def test_memory_written_switches_the_write_path_on_and_off(k):
    seen = []
    p = k.ExAllocatePoolWithTag(NP, 64, "Hook")

    def listener(event):
        seen.append((event.address, event.length))

    k.hooks.subscribe(MemoryWritten, listener)
    assert "write" in vars(k)
    k.write(p, b"abc")
    k.RtlZeroMemory(p + 8, 5)
    k.hooks.unsubscribe(MemoryWritten, listener)
    assert "write" not in vars(k)
    k.write(p, b"x")
    assert seen == [(p, 3), (p + 8, 5)]
    assert k.read(p, 3) == b"xbc"


def test_a_copy_is_one_memory_copied_event_when_copies_are_listened_for(k):
    p = k.ExAllocatePoolWithTag(NP, 64, "Hook")
    written, copied = [], []
    k.hooks.subscribe(MemoryWritten, written.append)
    k.RtlCopyMemory(p + 32, p, 8)
    assert written == [MemoryWritten(p + 32, 8)]
    k.hooks.subscribe(MemoryCopied, copied.append)
    written.clear()
    k.write(p, b"12345678")
    k.RtlMoveMemory(p + 4, p, 8)
    assert copied == [MemoryCopied(p + 4, p, 8)]
    assert written == [MemoryWritten(p, 8)]
    assert k.read(p, 12) == b"123412345678"


def test_irql_driver_unload_and_user_copy_events(k):
    events = []
    for event_type in (IrqlRaised, DriverUnloading, CopiedToUser):
        k.hooks.subscribe(event_type, events.append)

    class Driver:
        name = "hooked.sys"

        def DriverEntry(self, k, RegistryPath):
            return 0

        def DriverUnload(self, k):
            pass

    old = k.KeRaiseIrql(ntpool.DISPATCH_LEVEL)
    k.KeLowerIrql(old)  # lowering publishes nothing
    loaded = k.load_driver(Driver())
    k.unload_driver(loaded)
    p = k.ExAllocatePoolWithTag(NP, 16, "Hook")
    k.copy_to_user(bytearray(16), p, 16)
    assert events == [IrqlRaised(0, 0, 2), DriverUnloading(loaded), CopiedToUser(p, 16)]


def test_page_fault_listeners_may_resolve_a_fault(k):
    p = k.ExAllocatePoolWithTag(NP, 16, "Hook")
    frame = k.space.translate(p) & ~0xFFF
    asked = []

    def resolve(event):
        asked.append(event)
        return frame if event.address == 0xFFFFF90000000000 else None

    k.hooks.subscribe(PageFault, resolve)
    assert k.read(0xFFFFF90000000000, 16) == k.read(p & ~0xFFF, 16)
    with pytest.raises(ntpool.BugCheck) as info:
        k.read(0xFFFFF90000001000, 1)
    assert info.value.code == 0x50
    assert asked == [PageFault(0xFFFFF90000000000, False), PageFault(0xFFFFF90000001000, False)]


def test_subscriptions_are_typed_and_idempotent():
    hooks = Hooks()
    changes = []
    hooks.watch(IrqlRaised, changes.append)
    with pytest.raises(TypeError, match="event class"):
        hooks.subscribe("IrqlRaised", print)
    with pytest.raises(TypeError, match="callable"):
        hooks.subscribe(IrqlRaised, 42)
    hooks.subscribe(IrqlRaised, print)
    hooks.subscribe(IrqlRaised, print)
    assert hooks.listening(IrqlRaised) == (print,)
    hooks.unsubscribe(IrqlRaised, repr)  # not subscribed: nothing happens
    hooks.unsubscribe(IrqlRaised, print)
    assert changes == [True, False]
    with pytest.raises(AttributeError):
        IrqlRaised(0, 0, 2).new = 3  # events are frozen


def test_verifier_listens_only_while_its_options_are_on(k):
    k.verifier.enable("v.sys", uninitialized_memory=True, force_irql_checking=True,
                      special_pool=True)
    assert k.pool.layer is k.verifier and not k.pool.fast_pools
    for event in (MemoryWritten, MemoryCopied, CopiedToUser, IrqlRaised, PageFault):
        assert k.hooks.listening(event), event
    k.verifier.disable()
    for event in (MemoryWritten, MemoryCopied, CopiedToUser, IrqlRaised, PageFault):
        assert k.hooks.listening(event) == (), event
    assert k.pool.layer is None and k.pool.fast_pools and "write" not in vars(k)


def test_mapping_changes_and_debug_prints_are_events(k):
    from ntpool.hooks import DebugPrinted, MappingChanged

    changed, printed = [], []
    k.hooks.subscribe(MappingChanged, changed.append)
    k.hooks.subscribe(DebugPrinted, printed.append)
    p = k.ExAllocatePoolWithTag(ntpool.PoolType.PagedPool, 8000, "Page")
    k.page_out(p)  # the page's present mapping goes
    k.DbgPrint("hello\nworld\n")
    assert MappingChanged(p) in changed
    assert printed == [DebugPrinted("hello"), DebugPrinted("world")]


def test_dbgprint_reads_a_c_string_from_memory_up_to_a_page_that_is_not_there(k):
    # A string ending on the last byte before an unmapped page reads without a fault (the
    # reader takes 64-byte pieces, which never cross a page); one running into it faults there.
    page = k.ExAllocatePoolWithTag(ntpool.PoolType.NonPagedPool, 2 * 4096, "Strs")
    text = b"a message that spans a page boundary"
    start = page + 4096 - 20
    k.write(start, text + b"\0")
    k.DbgPrint(start)
    assert k.debug_output[-1] == text.decode()
    big = k.ExAllocatePoolWithTag(ntpool.PoolType.NonPagedPool, 4096, "Last")
    k.write(big + 4096 - 6, b"tail!\0")
    k.DbgPrint(big + 4096 - 6)
    assert k.debug_output[-1] == "tail!"
    k.write(big + 4096 - 6, b"nonul!")
    with pytest.raises(ntpool.BugCheck):
        k.DbgPrint(big + 4096 - 6)  # runs into the unmapped page after the allocation
