"""``ntpool run DRIVER.sys --ioctl CODE[:INPUT_HEX[:OUTPUT_LENGTH]]``: the requests a user-mode
program would send a loaded driver, and what came back (no terminal I/O: ``emit`` prints).

After DriverEntry the driver's first device is opened (IRP_MJ_CREATE), each ``--ioctl`` is
sent as IRP_MJ_DEVICE_CONTROL with its buffers where the I/O manager puts them for the
code's transfer method (``CODE & 3``), then the handle is closed (IRP_MJ_CLEANUP,
IRP_MJ_CLOSE). Each request is printed with its NTSTATUS, Information and output bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..routines.io import IRP_MJ_CLEANUP, IRP_MJ_CLOSE, IRP_MJ_CREATE, METHOD_NAMES, IoResult, irp_major_name

MAX_OUTPUT_LENGTH = 1 << 20


@dataclass
class IoctlRequest:
    code: int
    input: bytes
    output_length: int

    @property
    def method(self) -> str:
        return METHOD_NAMES[self.code & 3]


def parse_ioctl(spec: str) -> IoctlRequest:
    """CODE[:INPUT_HEX[:OUTPUT_LENGTH]]: CODE in hex, INPUT as hex bytes, the length decimal
    (or 0x-prefixed hex). ValueError names what is wrong."""
    parts = spec.split(":")
    if not 1 <= len(parts) <= 3 or not parts[0]:
        raise ValueError(f"--ioctl {spec!r}: expected CODE[:INPUT_HEX[:OUTPUT_LENGTH]]")
    try:
        code = int(parts[0], 16)
    except ValueError:
        raise ValueError(f"--ioctl {spec!r}: the code {parts[0]!r} is not hexadecimal") from None
    if not 0 <= code <= 0xFFFFFFFF:
        raise ValueError(f"--ioctl {spec!r}: the code {parts[0]} does not fit in a ULONG")
    data = parts[1] if len(parts) > 1 else ""
    data = data[2:] if data.lower().startswith("0x") else data
    try:
        payload = bytes.fromhex(data)
    except ValueError:
        raise ValueError(f"--ioctl {spec!r}: the input {parts[1]!r} is not hex bytes") from None
    length_text = parts[2] if len(parts) > 2 else "0"
    try:
        length = int(length_text, 0)
    except ValueError:
        raise ValueError(f"--ioctl {spec!r}: the output length {length_text!r} is not a number") from None
    if not 0 <= length <= MAX_OUTPUT_LENGTH:
        raise ValueError(f"--ioctl {spec!r}: the output length must be 0 to {MAX_OUTPUT_LENGTH}")
    return IoctlRequest(code, payload, length)


def output_text(data: bytes, limit: int = 64) -> str:
    """Hex bytes and their text (non-printable shown as '.'), as a debugger shows memory."""
    if not data:
        return "-"
    shown = data[:limit]
    text = "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in shown)
    more = f" (+{len(data) - limit} bytes)" if len(data) > limit else ""
    return f"{shown.hex(' ')}  {text!r}{more}"


def describe(label: str, result: IoResult) -> str:
    status = result.status & 0xFFFFFFFF
    pending = "  (pending: the driver has not completed it)" if result.pending else ""
    return (f"{label:<44} {status:#010x} {result.status_name:<32} Information {result.information:#x}"
            f"  output {output_text(result.output)}{pending}")


def request_source(requests: list[IoctlRequest]) -> str:
    """The Python text of ``requests``, for a generated scenario."""
    return "[" + ", ".join(f"IoctlRequest({r.code:#x}, bytes.fromhex({r.input.hex()!r}), "
                           f"{r.output_length})" for r in requests) + "]"


def run_requests(kernel, driver, requests: list[IoctlRequest], emit) -> list[tuple[str, IoResult]]:
    """Open the driver's first device, send the IOCTLs, close. ``emit(line)`` prints.

    Returns (label, result) per request. A driver without a named device gets no requests
    (and that is said)."""
    devices = kernel.devices_of(driver.driver_object) if getattr(driver, "driver_object", 0) else []
    named = [d for d in reversed(devices) if kernel.object_name(d)]
    if not named:
        if requests:
            emit(f"{driver.name} created no named device: the --ioctl requests were not sent")
        return []
    name = kernel.object_name(named[0])
    results = []
    handle = kernel.open(name)
    label = f"{irp_major_name(IRP_MJ_CREATE)} {name}"
    results.append((label, handle.create_result))
    emit(describe(label, handle.create_result))
    for request in requests:
        result = handle.device_control(request.code, request.input, request.output_length)
        label = f"IRP_MJ_DEVICE_CONTROL {request.code:#010x} ({request.method})"
        results.append((label, result))
        emit(describe(label, result))
    cleanup, close = handle.close()
    results.append((irp_major_name(IRP_MJ_CLEANUP), cleanup))
    emit(describe(irp_major_name(IRP_MJ_CLEANUP), cleanup))
    if close is not None:
        results.append((irp_major_name(IRP_MJ_CLOSE), close))
        emit(describe(irp_major_name(IRP_MJ_CLOSE), close))
    for result in handle.pending:
        if result.pending:
            emit(f"a request is still pending (IRP {result.irp:#x}): the driver never completed it")
    return results
