"""ExAllocatePoolWithTag + ExFreePoolWithTag through speakeasy, for ``ntpool bench``'s comparison.

speakeasy (Mandiant's emulator, ``pip install speakeasy-emulator``) pins ``unicorn==1.0.2``,
and ntpool needs unicorn 2.1, so the two cannot share an environment: this file imports
nothing from ntpool and runs in speakeasy's own (``python3 -m venv /tmp/venv-spk &&
/tmp/venv-spk/bin/pip install speakeasy-emulator==1.5.11``). It loads the same bench.sys
``ntpool bench`` times (its DriverEntry runs under speakeasy) and calls the same exported
loop, AllocateAndFree(count, 100), whose pairs go to speakeasy's ntoskrnl handlers; and the
loop with no calls (Spin) for the CPU alone. It prints one JSON object:

    /tmp/venv-spk/bin/python speakeasy_bench.py PATH/bench.sys [--pairs N] [--rounds R]

``ntpool bench --speakeasy-python /tmp/venv-spk/bin/python`` runs it (``compare``) and prints
the ratio; so does plain ``ntpool bench`` in an environment where speakeasy imports.
"""

import argparse
import json
import statistics
import sys
import time


def measure(path: str, pairs: int = 1000, rounds: int = 3) -> dict:
    import pefile
    import speakeasy

    emulator = speakeasy.Speakeasy()
    module = emulator.load_module(path)
    emulator.run_module(module)  # DriverEntry
    image = pefile.PE(path, fast_load=False)
    exports = {symbol.name.decode(): symbol.address
               for symbol in image.DIRECTORY_ENTRY_EXPORT.symbols if symbol.name}
    base = module.get_base()
    calls = {"allocate": 0, "free": 0}

    def counted(kind):
        def hook(emu, api_name, func, params):
            calls[kind] += 1
            return func(params)
        return hook

    emulator.add_api_hook(counted("allocate"), "ntoskrnl", "ExAllocatePoolWithTag")
    emulator.add_api_hook(counted("free"), "ntoskrnl", "ExFreePoolWithTag")

    def timed(name, *args):
        start = time.perf_counter()
        emulator.call(base + exports[name], list(args))
        return time.perf_counter() - start

    timed("AllocateAndFree", 10, 100)  # warm: code translated, handlers imported
    pair_times = [timed("AllocateAndFree", pairs, 100) / pairs for _ in range(rounds)]
    spins = pairs * 10
    spin_times = [timed("Spin", spins) / spins for _ in range(rounds)]
    expected = 10 + pairs * rounds
    return {"speakeasy_version": _version(), "unicorn_version": _unicorn_version(),
            "pair_us": statistics.median(pair_times) * 1e6,
            "loop_iteration_ns": statistics.median(spin_times) * 1e9,
            "pairs": pairs, "rounds": rounds,
            "handler_calls": calls, "handler_calls_expected": expected,
            "python": sys.version.split()[0]}


def compare(driver: str, python: str | None = None, pairs: int = 1000, rounds: int = 3,
            timeout: float = 900) -> dict | None:
    """speakeasy's figures for ``driver``: measured here when speakeasy imports, else by
    running this file with ``python`` (speakeasy's own interpreter); None without either.
    A failure is a dict with "error" (what went wrong, in one line)."""
    if python is None:
        try:
            import speakeasy  # noqa: F401
        except ImportError:
            return None
        try:
            return measure(driver, pairs, rounds)
        except Exception as error:  # speakeasy's own failure, reported as a figure missed
            return {"error": f"{type(error).__name__}: {error}"}
    import subprocess
    command = [python, __file__, driver, "--pairs", str(pairs), "--rounds", str(rounds)]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as error:
        return {"error": f"{python}: {error}"}
    if result.returncode:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"{python} exited {result.returncode}: {last}"}
    try:
        return json.loads(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": f"{python} printed no figures"}


def _version() -> str:
    from importlib.metadata import version
    return version("speakeasy-emulator")


def _unicorn_version() -> str:
    import unicorn
    return unicorn.__version__


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("driver", help="bench.sys (ntpool/samples/native/bench.sys)")
    parser.add_argument("--pairs", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.driver, args.pairs, args.rounds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
