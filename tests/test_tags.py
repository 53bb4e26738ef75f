import pytest

import ntpool
from ntpool.tags import display, from_display, tag_value


def test_str_tag_is_the_c_multicharacter_literal():
    t = ntpool.tag("Fred")
    assert t.value == 0x46726564
    assert t.display == "derF"
    assert str(t) == "derF"


def test_short_tag_fills_from_the_low_byte():
    assert tag_value("Ab") == 0x4162
    assert display(0x4162) == "0x00004162"  # NUL bytes are not printable


def test_int_tag_is_the_ulong_itself():
    assert ntpool.tag(0x46726564).display == "derF"


def test_reversed_source_tag_shows_forwards():
    assert ntpool.tag("looP").display == "Pool"
    assert from_display("Pool") == tag_value("looP")


def test_protected_bit_is_kept_in_the_value_and_stripped_from_display():
    t = ntpool.tag(tag_value("Fred") | ntpool.PROTECTED_POOL)
    assert t.protected
    assert t.display == "derF"


@pytest.mark.parametrize("bad, words", [
    ("", "1 to 4"), ("Freddy", "1 to 4"), ("Fr\u0113d", "not one byte"), (-1, "ULONG"),
    (1 << 32, "ULONG"), (3.5, "str"), (0, "tag 0"),
])
def test_invalid_tags_are_refused_with_a_reason(bad, words):
    with pytest.raises(ntpool.TagError, match=words):
        ntpool.tag(bad)


def test_tag_in_memory_is_little_endian(k):
    p = k.ExAllocatePoolWithTag(ntpool.PoolType.NonPagedPool, 100, "Fred")
    assert k.read(p - 12, 4) == b"derF"
