"""The corruption table (README, "When the pool is corrupted"): one test a row.

Each test corrupts exactly one thing the way a buggy driver would (a write through
``k.write``), then makes the pool touch it, and checks Windows 7's answer: the bug check
and parameters of the check that trips, the fault the pool code takes, or nothing at all
where Windows checks nothing.
"""

import pytest

import ntpool
from ntpool.pool.layout import POOL_HEADER
from ntpool.tags import tag_value

NP = ntpool.PoolType.NonPagedPool
PP = ntpool.PoolType.PagedPool
MiB = 1 << 20


def stop(call) -> ntpool.BugCheck:
    with pytest.raises(ntpool.BugCheck) as info:
        call()
    return info.value


def unmapped(k) -> int:
    """A canonical kernel address no page maps: the last page of nonpaged pool."""
    va = k.nonpaged_pool.limit - 4096
    assert not k.is_resident(va)
    return va + 0x80


def header_field(k, p: int, name: str, value: int) -> None:
    """A driver's stray write of one header field of the chunk whose body is ``p``."""
    field = POOL_HEADER.fields[name]
    k.write(p - 16 + field.offset, value.to_bytes(field.codec.size, "little"))


# --- lookaside Next (a use-after-free write to a chunk cached on a lookaside) -----------------

def lookaside_chunk(k, pool_type=NP):
    p = k.ExAllocatePoolWithTag(pool_type, 100, "Look")
    k.ExAllocatePoolWithTag(pool_type, 100, "Kept")
    k.ExFreePoolWithTag(p, "Look")  # cached: its body's first 8 bytes are the list's Next
    return p


def test_lookaside_next_to_an_unmapped_address_is_0x50_below_dispatch(k):
    p = lookaside_chunk(k)
    bad = unmapped(k)
    k.write(p, bad.to_bytes(8, "little"))
    assert k.ExAllocatePoolWithTag(NP, 100, "Tak1") == p  # nothing checked: the head is now bad
    e = stop(lambda: k.ExAllocatePoolWithTag(NP, 100, "Tak2"))
    assert (e.code, e.parameters[0], e.parameters[1], e.parameters[3]) == (0x50, bad, 0, 0)


def test_lookaside_next_to_an_unmapped_address_is_0xc5_at_dispatch(k):
    p = lookaside_chunk(k)
    bad = unmapped(k)
    k.write(p, bad.to_bytes(8, "little"))
    k.KeRaiseIrql(2)
    assert k.ExAllocatePoolWithTag(NP, 100, "Tak1") == p
    e = stop(lambda: k.ExAllocatePoolWithTag(NP, 100, "Tak2"))
    assert (e.code, e.parameters[:3]) == (0xC5, (bad, 2, 0))
    assert e.name == "DRIVER_CORRUPTED_EXPOOL"


def test_lookaside_next_non_canonical_is_a_general_protection_fault_0x1e(k):
    p = lookaside_chunk(k)
    k.write(p, b"A" * 16)  # the example: 0x4141414141414141
    k.ExAllocatePoolWithTag(NP, 100, "Tak1")
    e = stop(lambda: k.ExAllocatePoolWithTag(NP, 100, "Tak2"))
    assert e.code == 0x1E and e.parameters[0] == 0xC0000005
    assert (e.parameters[2], e.parameters[3]) == (0, 0xFFFFFFFFFFFFFFFF)
    assert "non-canonical" in e.detail


def test_lookaside_next_to_mapped_memory_is_handed_out_unchecked(k):
    q = k.ExAllocatePoolWithTag(NP, 100, "Live")
    p = lookaside_chunk(k)
    k.write(p, q.to_bytes(8, "little"))
    assert k.ExAllocatePoolWithTag(NP, 100, "Tak1") == p
    assert k.ExAllocatePoolWithTag(NP, 100, "Tak2") == q  # a live chunk, handed out again
    assert not k.halted


def test_paged_lookaside_next_to_an_unmapped_address_is_0x50(k):
    p = lookaside_chunk(k, PP)
    bad = unmapped(k)
    k.write(p, bad.to_bytes(8, "little"))
    k.ExAllocatePoolWithTag(PP, 100, "Tak1")
    e = stop(lambda: k.ExAllocatePoolWithTag(PP, 100, "Tak2"))
    assert (e.code, e.parameters[0]) == (0x50, bad)


# --- ListHeads links (a write to a free chunk on a list) --------------------------------------

def listed_chunk(k, pool_type=NP):
    """The LIST_ENTRY of a fresh page's free remainder (192 blocks, on ListHeads[191])."""
    a = k.ExAllocatePoolWithTag(pool_type, 1000, "Lnk1")
    return a - 16 + 1024 + 16


def test_flink_to_an_unmapped_address_is_0xc5_under_the_nonpaged_lock(k):
    entry = listed_chunk(k)
    bad = unmapped(k)
    k.write(entry, bad.to_bytes(8, "little"))
    e = stop(lambda: k.ExAllocatePoolWithTag(NP, 3000, "Lnk3"))
    assert (e.code, e.parameters[:3]) == (0xC5, (bad + 8, 2, 0))  # reading Flink->Blink


def test_flink_to_an_unmapped_address_is_0x50_under_the_paged_lock(k):
    entry = listed_chunk(k, PP)
    bad = unmapped(k)
    k.write(entry, bad.to_bytes(8, "little"))
    e = stop(lambda: k.ExAllocatePoolWithTag(PP, 3000, "Lnk3"))
    assert (e.code, e.parameters[:2]) == (0x50, (bad + 8, 0))


def test_flink_zeroed_is_an_access_violation_0x1e_under_the_paged_lock(k):
    """A link a driver zeroed leads the pool code to NULL + 8: a user-mode address, for which
    MmAccessFault raises no 0x50 (that is for system addresses) but an access violation no
    handler catches: 0x1E (0xC0000005, instruction, 0 read, the address)."""
    entry = listed_chunk(k, PP)
    k.write(entry, bytes(8))
    e = stop(lambda: k.ExAllocatePoolWithTag(PP, 3000, "Lnk3"))
    assert (e.code, e.parameters[0], e.parameters[2:]) == (0x1E, 0xC0000005, (0, 8))


def test_lookaside_next_to_a_user_mode_address_is_0x1e_below_dispatch(k):
    p = lookaside_chunk(k)
    k.write(p, (0x10000).to_bytes(8, "little"))
    assert k.ExAllocatePoolWithTag(NP, 100, "Tak1") == p
    e = stop(lambda: k.ExAllocatePoolWithTag(NP, 100, "Tak2"))
    assert (e.code, e.parameters[0], e.parameters[2:]) == (0x1E, 0xC0000005, (0, 0x10000))


def test_flink_non_canonical_is_0x1e(k):
    entry = listed_chunk(k)
    k.write(entry, b"\xff" * 7 + b"\x7f")
    e = stop(lambda: k.ExAllocatePoolWithTag(NP, 3000, "Lnk3"))
    assert (e.code, e.parameters[0]) == (0x1E, 0xC0000005)


def test_flink_to_mapped_memory_fails_safe_unlinking_0x19_3(k):
    entry = listed_chunk(k)
    other = entry - 1024  # the live chunk in front of it: mapped, but no list entry
    k.write(entry, other.to_bytes(8, "little"))
    e = stop(lambda: k.ExAllocatePoolWithTag(NP, 3000, "Lnk3"))
    assert e.code == 0x19 and e.parameters[:2] == (0x3, entry)


def test_blink_to_mapped_memory_fails_safe_unlinking_0x19_3(k):
    entry = listed_chunk(k)
    other = entry - 1024
    k.write(entry + 8, other.to_bytes(8, "little"))
    e = stop(lambda: k.ExAllocatePoolWithTag(NP, 3000, "Lnk3"))
    assert e.code == 0x19 and e.parameters[:2] == (0x3, entry)


# --- the header checks of free (chunks past the lookasides, delayed frees off) ----------------

def three_chunks(k):
    """Three 64-block chunks of one page: A at its front, then (split from the end of the
    free remainder) B at 0xC00 and C at 0x800; the remainder (64 blocks) is free at 0x400."""
    chunks = [k.ExAllocatePoolWithTag(NP, 1000, f"Ch{i}x") for i in range(3)]
    assert [(p - 16) & 0xFFF for p in chunks] == [0, 0xC00, 0x800]
    return chunks


def test_previous_size_past_the_page_start_is_0x19_6(k):
    a, b, c = three_chunks(k)
    header_field(k, a, "PreviousSize", 1)  # the page's first chunk: one block back is before it
    e = stop(lambda: k.ExFreePoolWithTag(a, "Ch0x"))
    assert e.parameters == (0x6, a - 32, 0, a - 16)


def test_previous_size_that_the_previous_chunk_disagrees_with_is_0x19_5(k):
    a, b, c = three_chunks(k)
    header_field(k, c, "PreviousSize", 0x20)  # B has 0x40
    e = stop(lambda: k.ExFreePoolWithTag(c, "Ch2x"))
    assert e.parameters == (0x5, c - 16 - 0x200, 0, c - 16)


def test_previous_size_zero_inside_a_page_is_0x19_7(k):
    a, b, c = three_chunks(k)
    header_field(k, b, "PreviousSize", 0)
    e = stop(lambda: k.ExFreePoolWithTag(b, "Ch1x"))
    assert e.parameters == (0x7, 0, 0, b - 16)


def test_block_size_zero_is_0x19_8(k):
    a, b, c = three_chunks(k)
    header_field(k, b, "BlockSize", 0)
    e = stop(lambda: k.ExFreePoolWithTag(b, "Ch1x"))
    assert e.parameters == (0x8, 0, 0, b - 16)


def test_block_size_past_the_page_is_0x19_9(k):
    a, b, c = three_chunks(k)
    header_field(k, b, "BlockSize", 0xF0)
    e = stop(lambda: k.ExFreePoolWithTag(b, "Ch1x"))
    assert e.parameters == (0x9, b - 16 + 0xF00, 0, b - 16)


def test_overrun_into_the_next_header_is_0x19_20(k):
    a, b, c = three_chunks(k)
    k.write(c + 1008, b"\x01")  # B's PreviousSize, just past C
    e = stop(lambda: k.ExFreePoolWithTag(c, "Ch2x"))
    assert e.parameters[:3] == (0x20, c - 16, b - 16)


def test_pool_type_without_the_in_use_bit_is_a_double_free_0xc2_7(k):
    a, b, c = three_chunks(k)
    header_field(k, b, "PoolType", 0)
    e = stop(lambda: k.ExFreePoolWithTag(b, "Ch1x"))
    assert (e.code, e.parameters[0], e.parameters[3]) == (0xC2, 0x7, b)


def test_a_rewritten_tag_is_0xc2_0a_for_a_protected_allocation_only(k):
    a, b, c = three_chunks(k)
    header_field(k, b, "PoolTag", tag_value("Evil"))
    k.ExFreePoolWithTag(b, "Ch1x")  # an unprotected tag is not compared on free
    assert not k.halted
    p = k.ExAllocatePoolWithTag(NP, 1000, tag_value("Prot") | 0x80000000)
    header_field(k, p, "PoolTag", tag_value("Evil") | 0x80000000)
    e = stop(lambda: k.ExFreePoolWithTag(p, tag_value("Prot") | 0x80000000))
    assert (e.code, e.parameters[0]) == (0xC2, 0x0A)


# --- a free chunk's header (found where the chunk is taken or merged) -------------------------

def test_free_chunk_block_size_rewritten_is_found_when_it_is_taken_0x19_5(k):
    entry = listed_chunk(k)
    chunk = entry - 16
    k.write(chunk + POOL_HEADER.BlockSize, bytes([0x80]))  # 192 blocks said 128
    e = stop(lambda: k.ExAllocatePoolWithTag(NP, 3000, "Lnk3"))
    assert e.parameters == (0x5, chunk + 0x800, 0, chunk)


def test_free_neighbour_block_size_rewritten_is_found_when_merging(k):
    a, b, c = three_chunks(k)
    rest = a - 16 + 1024  # the page's free remainder, after A
    k.write(rest + POOL_HEADER.BlockSize, bytes([0x10]))
    e = stop(lambda: k.ExFreePoolWithTag(a, "Ch0x"))  # merging with the next chunk checks it
    assert e.parameters == (0x5, rest + 0x100, 0, rest)


# --- what Windows 7 does not check ------------------------------------------------------------

def test_a_write_to_a_free_chunk_past_its_links_goes_unnoticed(k):
    entry = listed_chunk(k)
    k.write(entry + 16, b"\xcc" * 64)  # freed memory, not the links
    p = k.ExAllocatePoolWithTag(NP, 3000, "Lnk3")
    assert p and not k.halted


def test_an_overrun_into_slack_inside_the_chunk_goes_unnoticed(k):
    p = k.ExAllocatePoolWithTag(NP, 100, "Slck")  # 112 usable bytes
    k.write(p + 100, b"\xee" * 12)
    k.ExFreePoolWithTag(p, "Slck")
    assert not k.halted


def test_a_small_chunk_freed_to_a_lookaside_is_not_checked_against_its_previous_neighbour(k):
    p = k.ExAllocatePoolWithTag(NP, 100, "Prv1")
    q = k.ExAllocatePoolWithTag(NP, 100, "Prv2")
    header_field(k, q, "PreviousSize", 0x30)  # wrong, but only coalescing reads it
    k.ExFreePoolWithTag(q, "Prv2")
    assert not k.halted and p


# --- misuse of the Python API: a plain exception, never one from inside the model -------------

MISUSE = {
    "address not an int": lambda k, p: k.write("x", b"a"),
    "negative address": lambda k, p: k.read(-1, 5),
    "negative size": lambda k, p: k.read(p, -5),
    "size not an int": lambda k, p: k.ExAllocatePoolWithTag(NP, "100", "Fred"),
    "size a float": lambda k, p: k.ExAllocatePoolWithTag(NP, 1.5, "Fred"),
    "tag as bytes": lambda k, p: k.ExAllocatePoolWithTag(NP, 10, b"Fred"),
    "free of a str": lambda k, p: k.ExFreePool("abc"),
    "free past 64 bits": lambda k, p: k.ExFreePool(1 << 70),
    "data not bytes": lambda k, p: k.write(p, "string"),
    "data None": lambda k, p: k.write(p, None),
    "negative length": lambda k, p: k.RtlZeroMemory(p, -1),
    "span past the address space": lambda k, p: k.read(0xFFFFFFFFFFFFFFF0, 32),
    "physical address past memory": lambda k, p: k.physical.read(1 << 40, 4),
    "physical write past memory": lambda k, p: k.physical.write(len(k.physical.buffer) - 2, b"abcd"),
    "pool type a str": lambda k, p: k.ExAllocatePoolWithTag("NonPagedPool", 10, "Fred"),
}


@pytest.mark.parametrize("name", sorted(MISUSE))
def test_misuse_of_the_api_is_a_plain_error(k, name):
    p = k.ExAllocatePoolWithTag(NP, 100, "Fred")
    size = len(k.physical.buffer)
    with pytest.raises((TypeError, ValueError)) as info:
        MISUSE[name](k, p)
    assert not isinstance(info.value, (KeyError, IndexError)) and str(info.value)
    assert len(k.physical.buffer) == size and not k.halted
