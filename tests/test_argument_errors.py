"""A Python driver that passes a routine a value its C parameter cannot hold is told which
routine and which parameter (``registry.explain_argument_error``), by ``ntpool run`` and any
scenario run; a value that may be a C one is never blamed."""

import pytest

from ntpool import Kernel
from ntpool.errors import BugCheck, MachineHalted, NtStatusError
from ntpool.routines import registry
from ntpool.routines.registry import explain_argument_error
from ntpool.tools.scenario import ScenarioError, ScenarioRun, load_scenario


def _inputs(entry):
    return [param for param in entry.params if not param.out]


def _raised(kernel, name, args):
    """(the error a Python caller gets, a kernel fit for the next call)."""
    try:
        # Called by name, as a driver's code calls it (one function may serve several
        # routines of one shape: the caller's code tells which it called).
        eval(f"kernel.{name}(*args)", {}, {"kernel": kernel, "args": args})
    except (BugCheck, NtStatusError, MachineHalted):
        return None, Kernel()
    except (TypeError, ValueError, OverflowError) as error:
        return error, kernel
    return None, kernel


# Values no C caller can pass: each routine's code fails on them somewhere, with a message
# of its own (an operator's, a format's) unless the routine checks the parameter itself.
NOT_C_VALUES = [1.5, 1 << 64, [0]]


@pytest.mark.parametrize("bad", NOT_C_VALUES, ids=["float", "2**64", "list"])
def test_every_routine_names_the_parameter_a_python_caller_got_wrong(bad):
    kernel = Kernel()
    named = 0
    for entry in registry.routines():
        inputs = _inputs(entry)
        for index, param in enumerate(inputs):
            args = [0] * len(inputs)
            args[index] = bad
            error, kernel = _raised(kernel, entry.name, args)
            if error is None:
                continue  # the routine accepted it, answered with a bug check or a status
            # The other arguments are 0, a value of every C type, so this one is named.
            assert explain_argument_error(error) == \
                f"{entry.name}: {param.name} ({param.ctype}) " + \
                registry._not_a_c_value(param, bad), (entry.name, param.name, error)
            named += 1
    assert named > 200  # (the routines that refuse such a value: most of them)


def test_none_is_named_only_where_null_is_not_optional():
    optional = [(entry, param) for entry in registry.routines()
                for param in _inputs(entry) if param.optional]
    required = [(entry, param) for entry in registry.routines()
                for param in _inputs(entry) if not param.optional]
    assert optional and required
    for entry, param in optional:
        assert registry._not_a_c_value(param, None) == ""
    for entry, param in required:
        assert "not None" in registry._not_a_c_value(param, None)


def test_values_of_the_c_type_and_pythons_conveniences_are_never_blamed():
    entry = registry.lookup("ExAllocatePoolWithTag")
    pool_type, size, tag = entry.params
    assert registry._not_a_c_value(tag, "Fred") == ""  # a str tag
    assert registry._not_a_c_value(size, (1 << 64) - 1) == ""
    assert registry._not_a_c_value(pool_type, True) == ""  # a bool is an int
    assert registry._not_a_c_value(size, callable) == ""  # an object some routine may take
    assert "from 0x0 to 0xffffffffffffffff, got -0x1" in registry._not_a_c_value(size, -1)
    status = registry.lookup("KeBugCheckEx").params[0]  # ULONG BugCheckCode
    assert "from 0x0 to 0xffffffff" in registry._not_a_c_value(status, 1 << 32)


def test_a_routines_own_refusal_of_a_c_value_is_left_as_it_is():
    kernel = Kernel()
    lookaside = kernel.ExAllocatePoolWithTag(0, 0xC0, "Lkas")
    with pytest.raises(ValueError) as caught:
        kernel.ExInitializeNPagedLookasideList(lookaside, 0, 0, 0, 0, 0x6C6B6173, 0)  # Size 0
    assert explain_argument_error(caught.value) is None
    assert explain_argument_error(ValueError("raised by no routine")) is None


def test_a_scenario_names_the_routine_and_the_parameter(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text("def workload(k, rng):\n"
                    "    k.ExAllocatePoolWithTag(0, 64, 'Fred')\n"
                    "    k.IoFreeMdl(None)\n")
    with pytest.raises(ScenarioError) as caught:
        ScenarioRun(load_scenario(str(path))).run()
    assert str(caught.value).endswith(
        "bad.py:3 in workload: IoFreeMdl: Mdl (PMDL) is not optional: pass an int "
        "(0 is NULL), not None")


def test_a_served_routine_is_named_too(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text("def workload(k, rng):\n"
                    "    k.ExAllocatePoolWithTag(0, 2.5, 'Fred')\n")
    with pytest.raises(ScenarioError) as caught:
        ScenarioRun(load_scenario(str(path))).run()
    assert "bad.py:2 in workload: ExAllocatePoolWithTag: NumberOfBytes (SIZE_T) must be an " \
           "int, got float 2.5" in str(caught.value)
