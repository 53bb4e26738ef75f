"""A library user's wrong argument to a Kernel's memory methods is named: the parameter and
what it got, never an operator's error from inside ntpool ("unsupported operand type(s)
for &: 'str' and 'int'"). The check runs only once the fast path has failed."""

import pytest

import ntpool

NP = ntpool.PoolType.NonPagedPool


@pytest.fixture
def k():
    return ntpool.Kernel(nonpaged_pool_bytes=1 << 20, paged_pool_bytes=1 << 20)


@pytest.mark.parametrize("address, shown", [("x", "str: 'x'"), (1.5, "float: 1.5"),
                                            (None, "NoneType: None"), (b"ab", "bytes: b'ab'")])
def test_read_and_write_name_an_address_that_is_not_an_int(k, address, shown):
    for call in (lambda: k.read(address, 5), lambda: k.write(address, b"abc"),
                 lambda: k.RtlZeroMemory(address, 5), lambda: k.jump_to(address)):
        with pytest.raises(TypeError) as error:
            call()
        assert str(error.value) == f"address must be an int (a virtual address), not {shown}"


@pytest.mark.parametrize("size, shown", [("5", "str: '5'"), (None, "NoneType: None"),
                                         (2.0, "float: 2.0")])
def test_read_names_a_size_that_is_not_an_int(k, size, shown):
    va = k.ExAllocatePoolWithTag(NP, 16, "Fred")
    with pytest.raises(TypeError) as error:
        k.read(va, size)
    assert str(error.value) == f"size must be an int (a number of bytes), not {shown}"


def test_values_of_the_right_type_but_out_of_range_are_value_errors(k):
    va = k.ExAllocatePoolWithTag(NP, 16, "Fred")
    with pytest.raises(ValueError, match="size must be a non-negative int, got -1"):
        k.read(va, -1)
    with pytest.raises(ValueError, match="address must be a 64-bit virtual address, got -16"):
        k.write(-16, b"a")
    with pytest.raises(TypeError, match="data must be bytes, not str"):
        k.write(va, "text")


def test_a_long_value_is_shown_shortened(k):
    with pytest.raises(TypeError) as error:
        k.read("x" * 500, 1)
    assert str(error.value).endswith("not str: '" + "x" * 36 + "...")


def test_write_dump_names_its_path_arguments(k, tmp_path):
    with pytest.raises(TypeError, match=r"^path must be a file name \(str or os.PathLike\), not NoneType: None$"):
        k.write_dump(None)
    with pytest.raises(TypeError, match="^truth must be a file name .*not int: 5$"):
        k.write_dump(tmp_path / "d.dmp", "kernel", truth=5)


def test_the_fast_paths_still_read_and_write(k):
    va = k.ExAllocatePoolWithTag(NP, 64, "Fred")
    k.write(va, b"hello")
    k.write(va + 5, bytearray(b"!"))
    k.write(va + 6, memoryview(b"?"))
    assert k.read(va, 7) == b"hello!?"
    assert k.read(va, 0) == b""
