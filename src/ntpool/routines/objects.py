"""The object manager, as much of it as drivers meet: objects with their OBJECT_HEADER in
pool (tagged with the object type's key, as Windows tags them), a name space of named
objects, reference counts, handles, and per-object security descriptors.

An object is one pool allocation: [OBJECT_HEADER_NAME_INFO][OBJECT_HEADER][body], the body
address being what drivers hold (a PDEVICE_OBJECT, a PFILE_OBJECT). PointerCount and
HandleCount live in the header in memory, where ``!object`` and a dump reader find them;
the Python side keeps only what the header cannot say (the allocation's start, the
object's type and name). An object is deleted when both counts reach zero and it is not
permanent; a named temporary object leaves the name space when its last handle closes.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..constants import BugCheckCode, NtStatus, PoolType
from ..errors import NtStatusError
from . import layouts as L
from .registry import register_data, register_type, routine

STATUS_INVALID_HANDLE = 0xC0000008
STATUS_OBJECT_TYPE_MISMATCH = 0xC0000024
STATUS_OBJECT_NAME_NOT_FOUND = 0xC0000034
STATUS_OBJECT_NAME_COLLISION = 0xC0000035
STATUS_OBJECT_NAME_INVALID = 0xC0000033

KERNEL_HANDLE_BIT = 0xFFFFFFFF80000000
OBJECT_TYPE_SIZE = 0xD0
OBJECT_TYPE_NAME = 0x10  # UNICODE_STRING
OBJECT_TYPE_INDEX = 0x28
OBJECT_TYPE_KEY = 0xC0

for _name in ("POBJECT_TYPE", "POBJECT_ATTRIBUTES", "PACCESS_STATE", "SECURITY_INFORMATION",
              "PSECURITY_INFORMATION", "POBJECT_HANDLE_INFORMATION"):
    register_type(_name, 8 if _name.startswith("P") else 4, pointer=_name.startswith("P"))

# \DosDevices and \?? are the global DOS device directory on Windows 7.
_ALIASES = (("\\dosdevices\\", "\\GLOBAL??\\"), ("\\??\\", "\\GLOBAL??\\"))


def canonical_name(name: str) -> str:
    """A name as the name space keys it: aliases resolved, case folded."""
    lowered = name.lower()
    for alias, target in _ALIASES:
        if lowered.startswith(alias):
            name = target + name[len(alias):]
            break
    return name.lower()


@dataclass
class ObjectInfo:
    body: int
    allocation: int  # the pool address of the allocation (name info or header first)
    type_name: str
    tag: int
    name: str | None
    permanent: bool = False
    delete: object = None  # called (kernel, body) before the memory goes


class ObjectRoutines:
    """The object manager's surface, mixed into the machine."""

    def _init_objects(self) -> None:
        self.objects: dict[int, ObjectInfo] = {}  # body address -> info
        self.name_space: dict[str, int] = {}  # canonical name -> body address
        self.handles: dict[int, tuple[int, int]] = {}  # handle -> (body, granted access)
        self._next_handle = 4
        self.object_types: dict[str, int] = {}
        for type_name in ("Device", "Driver", "File", "SymbolicLink", "Key", "Event", "Process", "Thread"):
            self.object_types[type_name] = self._write_object_type(type_name)

    def _write_object_type(self, type_name: str) -> int:
        encoded = type_name.encode("utf-16-le")
        va = self.kernel_data.reserve(OBJECT_TYPE_SIZE + len(encoded) + 2)
        self.write(va + OBJECT_TYPE_SIZE, encoded + b"\0\0")
        self._put_unicode_string(va + OBJECT_TYPE_NAME, len(encoded), len(encoded) + 2,
                                 va + OBJECT_TYPE_SIZE)
        self.write(va + OBJECT_TYPE_INDEX, bytes([L.OB_TYPE_INDEX[type_name]]))
        self._put32(va + OBJECT_TYPE_KEY, _TYPE_TAGS[type_name])
        return va

    # --- memory helpers shared by the routine families -------------------------------------

    def _get(self, va: int, size: int) -> int:
        return int.from_bytes(self.read(va, size), "little")

    def _get16(self, va: int) -> int:
        return int.from_bytes(self.read(va, 2), "little")

    def _get32(self, va: int) -> int:
        return int.from_bytes(self.read(va, 4), "little")

    def _get64(self, va: int) -> int:
        return int.from_bytes(self.read(va, 8), "little")

    def _put8(self, va: int, value: int) -> None:
        self.write(va, (value & 0xFF).to_bytes(1, "little"))

    def _put16(self, va: int, value: int) -> None:
        self.write(va, (value & 0xFFFF).to_bytes(2, "little"))

    def _put32(self, va: int, value: int) -> None:
        self.write(va, (value & 0xFFFFFFFF).to_bytes(4, "little"))

    def _put64(self, va: int, value: int) -> None:
        self.write(va, (value & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "little"))

    def _put_unicode_string(self, va: int, length: int, maximum: int, buffer: int) -> None:
        self.write(va, length.to_bytes(2, "little") + maximum.to_bytes(2, "little") +
                   bytes(4) + buffer.to_bytes(8, "little"))

    def _unicode_string(self, va: int) -> str:
        """The text of the UNICODE_STRING at ``va`` (Length bytes of its Buffer)."""
        length = self._get16(va + L.UNICODE_STRING.Length)
        buffer = self._get64(va + L.UNICODE_STRING.Buffer)
        if not length or not buffer:
            return ""
        return self.read(buffer, length & ~1).decode("utf-16-le", "replace")

    def _wide_z(self, va: int, limit: int = 0x8000) -> str:
        """A NUL-terminated UTF-16 string (PCWSTR); reads never run onto the next page
        before the string does."""
        out = bytearray()
        p = va
        while len(out) < limit * 2:
            n = min(128, 0x1000 - (p & 0xFFF))
            chunk = self.read(p, n + (n & 1))
            for i in range(0, len(chunk) - 1, 2):
                if chunk[i] == 0 and chunk[i + 1] == 0:
                    return (out + chunk[:i]).decode("utf-16-le", "replace")
            out += chunk
            p += len(chunk)
        return out.decode("utf-16-le", "replace")

    def _ansi_z(self, va: int, limit: int = 0x10000) -> bytes:
        """A NUL-terminated byte string (PCSTR)."""
        out = bytearray()
        while len(out) < limit:
            chunk = self.read(va + len(out), min(64, 0x1000 - ((va + len(out)) & 0xFFF)))
            end = chunk.find(0)
            if end >= 0:
                return bytes(out + chunk[:end])
            out += chunk
        return bytes(out)

    def _io_allocate(self, pool_type: int, size: int, tag: int, on_behalf: bool = True) -> int:
        """Pool the kernel allocates; ``on_behalf``: charged to the calling driver's site
        (what it must give back: an IRP, an MDL, a string), else the kernel's own."""
        if on_behalf:
            # The allocation fast path, as a driver's ExAllocatePoolWithTag: its call-site
            # lookup walks out of ntpool's frames to the driver's call (it takes the generic
            # path itself when anything needs a check).
            return self.pool.allocate(pool_type, size, tag)
        return self.pool.allocate_generic(pool_type, size, tag, site=0)

    # --- objects ---------------------------------------------------------------------------

    def _ob_create(self, type_name: str, body_size: int, name: str | None = None,
                   pool_type: int = PoolType.NonPagedPool, on_behalf: bool = True,
                   permanent: bool = False) -> int:
        """Allocate and register an object; its body address (0 when pool is exhausted).
        A taken name is NtStatusError(STATUS_OBJECT_NAME_COLLISION)."""
        key = None
        if name is not None:
            if not name.startswith("\\"):
                raise NtStatusError(STATUS_OBJECT_NAME_INVALID, f"object name {name!r}")
            key = canonical_name(name)
            if key in self.name_space:
                raise NtStatusError(STATUS_OBJECT_NAME_COLLISION, name)
        tag = _TYPE_TAGS[type_name]
        prefix = L.OBJECT_HEADER_NAME_INFO.SIZE if name is not None else 0
        size = prefix + L.OBJECT_HEADER.SIZE + body_size
        allocation = self._io_allocate(pool_type, size, tag, on_behalf)
        if not allocation:
            return 0
        self.write(allocation, bytes(size))
        header = allocation + prefix
        body = header + L.OBJECT_HEADER.Body
        self._put64(header + L.OBJECT_HEADER.PointerCount, 1)
        self.write(header + L.OBJECT_HEADER.TypeIndex, bytes([L.OB_TYPE_INDEX[type_name]]))
        flags = L.OB_FLAG_KERNEL_OBJECT | (L.OB_FLAG_PERMANENT if permanent else 0)
        self.write(header + L.OBJECT_HEADER.InfoMask, bytes([L.OB_INFO_MASK_NAME if name else 0, flags]))
        if name is not None:
            encoded = name.encode("utf-16-le")
            buffer = self._io_allocate(PoolType.PagedPool, len(encoded), L.TAG_OBJECT_NAME, on_behalf)
            if not buffer:
                self.pool.free(allocation, None)
                return 0
            self.write(buffer, encoded)
            self._put_unicode_string(allocation + L.OBJECT_HEADER_NAME_INFO.Name, len(encoded),
                                     len(encoded), buffer)
            self.name_space[key] = body
        self.objects[body] = ObjectInfo(body, allocation, type_name, tag, name, permanent)
        return body

    def _object(self, body: int, type_name: str | None = None) -> ObjectInfo:
        info = self.objects.get(body)
        if info is None:
            raise NtStatusError(STATUS_INVALID_HANDLE if type_name is None else
                                STATUS_OBJECT_TYPE_MISMATCH, f"{body:#x} is not an object")
        if type_name is not None and info.type_name != type_name:
            raise NtStatusError(STATUS_OBJECT_TYPE_MISMATCH,
                                f"{body:#x} is a {info.type_name} object, not a {type_name}")
        return info

    def _pointer_count(self, body: int) -> int:
        return self._get64(body - L.OBJECT_HEADER.Body + L.OBJECT_HEADER.PointerCount)

    def _handle_count(self, body: int) -> int:
        return self._get64(body - L.OBJECT_HEADER.Body + L.OBJECT_HEADER.HandleCount)

    def _add_counts(self, body: int, pointers: int, handles: int) -> tuple[int, int]:
        header = body - L.OBJECT_HEADER.Body
        p = self._pointer_count(body) + pointers
        h = self._handle_count(body) + handles
        self._put64(header + L.OBJECT_HEADER.PointerCount, p)
        self._put64(header + L.OBJECT_HEADER.HandleCount, h)
        return p, h

    def object_name(self, body: int) -> str | None:
        """The name an object was created with (None: unnamed)."""
        info = self.objects.get(body)
        return None if info is None else info.name

    def _ob_lookup(self, name: str) -> int | None:
        return self.name_space.get(canonical_name(name))

    def _ob_make_temporary(self, body: int) -> None:
        info = self._object(body)
        info.permanent = False
        header = body - L.OBJECT_HEADER.Body
        flags = self.read(header + L.OBJECT_HEADER.Flags, 1)[0]
        self._put8(header + L.OBJECT_HEADER.Flags, flags & ~L.OB_FLAG_PERMANENT)
        if self._handle_count(body) == 0:
            self._ob_unname(info)

    def _ob_unname(self, info: ObjectInfo) -> None:
        if info.name is not None:
            key = canonical_name(info.name)
            if self.name_space.get(key) == info.body:
                del self.name_space[key]

    def _ob_dereference(self, body: int) -> int:
        info = self._object(body)
        pointers, handles = self._add_counts(body, -1, 0)
        if pointers < 0:
            self.KeBugCheckEx(BugCheckCode.REFERENCE_BY_POINTER, 0, body, 1, pointers,
                              detail=f"ObDereferenceObject of {info.type_name} object {body:#x} "
                                     f"whose reference count is already 0")
        if pointers == 0 and handles == 0 and not info.permanent:
            self._ob_delete(info)
        return pointers

    def _ob_delete(self, info: ObjectInfo) -> None:
        if info.delete is not None:
            info.delete(self, info.body)
        self._ob_unname(info)
        header = info.body - L.OBJECT_HEADER.Body
        sd = self._get64(header + L.OBJECT_HEADER.SecurityDescriptor) & ~0xF
        if sd:
            self.pool.free(sd, None)
        if info.name is not None:
            buffer = self._get64(info.allocation + L.OBJECT_HEADER_NAME_INFO.Name + L.UNICODE_STRING.Buffer)
            if buffer:
                self.pool.free(buffer, None)
        del self.objects[info.body]
        self.pool.free(info.allocation, None)

    def _ob_insert_handle(self, body: int, access: int = 0x1F0003, kernel: bool = True) -> int:
        handle = self._next_handle
        self._next_handle += 4
        if kernel:
            handle |= KERNEL_HANDLE_BIT
        self.handles[handle] = (body, access)
        self._add_counts(body, 1, 1)
        return handle

    def _ob_handle_object(self, handle: int, type_name: str | None = None) -> int:
        entry = self.handles.get(handle & 0xFFFFFFFFFFFFFFFF)
        if entry is None:
            raise NtStatusError(STATUS_INVALID_HANDLE, f"handle {handle:#x}")
        body = entry[0]
        self._object(body, type_name)
        return body

    # --- routines --------------------------------------------------------------------------

    @routine("NTSTATUS ObReferenceObjectByPointer(PVOID Object, ACCESS_MASK DesiredAccess, "
             "POBJECT_TYPE ObjectType, KPROCESSOR_MODE AccessMode)")
    def ObReferenceObjectByPointer(self, Object, DesiredAccess, ObjectType, AccessMode) -> int:
        """One more pointer reference; STATUS_OBJECT_TYPE_MISMATCH if ObjectType is not its type."""
        info = self.objects.get(Object)
        if info is None:
            return STATUS_OBJECT_TYPE_MISMATCH
        if ObjectType and ObjectType != self.object_types[info.type_name]:
            return STATUS_OBJECT_TYPE_MISMATCH
        self._add_counts(Object, 1, 0)
        return NtStatus.STATUS_SUCCESS

    @routine("LONG_PTR ObfReferenceObject(PVOID Object)")
    def ObfReferenceObject(self, Object) -> int:
        self._object(Object)
        return self._add_counts(Object, 1, 0)[0]

    @routine("LONG_PTR ObfDereferenceObject(PVOID Object)")
    def ObfDereferenceObject(self, Object) -> int:
        """One reference fewer; the object is deleted at zero references and handles."""
        return self._ob_dereference(Object)


    @routine("VOID ObMakeTemporaryObject(PVOID Object)")
    def ObMakeTemporaryObject(self, Object) -> None:
        self._ob_make_temporary(Object)

    @routine("NTSTATUS ObOpenObjectByPointer(PVOID Object, ULONG HandleAttributes, "
             "PACCESS_STATE PassedAccessState, ACCESS_MASK DesiredAccess, POBJECT_TYPE ObjectType, "
             "KPROCESSOR_MODE AccessMode, _Out_ PHANDLE Handle)")
    def ObOpenObjectByPointer(self, Object, HandleAttributes, PassedAccessState, DesiredAccess,
                              ObjectType, AccessMode) -> tuple[int, int]:
        """A handle to the object: (status, handle)."""
        info = self.objects.get(Object)
        if info is None or (ObjectType and ObjectType != self.object_types[info.type_name]):
            return STATUS_OBJECT_TYPE_MISMATCH, 0
        return NtStatus.STATUS_SUCCESS, self._ob_insert_handle(
            Object, DesiredAccess, kernel=bool(HandleAttributes & L.OBJ_KERNEL_HANDLE) or not AccessMode)

    @routine("NTSTATUS ZwClose(HANDLE Handle)")
    def ZwClose(self, Handle) -> int:
        """Close a handle: the object loses a handle and a reference (and may go)."""
        entry = self.handles.pop(Handle & 0xFFFFFFFFFFFFFFFF, None)
        if entry is None:
            return STATUS_INVALID_HANDLE
        body = entry[0]
        info = self.objects[body]
        pointers, handles = self._add_counts(body, 0, -1)
        if handles == 0 and not info.permanent:
            self._ob_unname(info)
        self._ob_dereference(body)
        return NtStatus.STATUS_SUCCESS


    @routine("NTSTATUS ZwSetSecurityObject(HANDLE Handle, SECURITY_INFORMATION SecurityInformation, "
             "PSECURITY_DESCRIPTOR SecurityDescriptor)")
    def ZwSetSecurityObject(self, Handle, SecurityInformation, SecurityDescriptor) -> int:
        """Replace the parts SecurityInformation names (owner 1, group 2, DACL 4, SACL 8) of
        the object's security descriptor; the object keeps a self-relative copy ("ObSc")."""
        try:
            body = self._ob_handle_object(Handle)
        except NtStatusError as error:
            return error.status
        header = body - L.OBJECT_HEADER.Body
        old = self._get64(header + L.OBJECT_HEADER.SecurityDescriptor) & ~0xF
        parts = self._sd_parts(old) if old else {}
        new = self._sd_parts(SecurityDescriptor)
        for bit, part in ((1, "owner"), (2, "group"), (4, "dacl"), (8, "sacl")):
            if SecurityInformation & bit:
                parts[part] = new.get(part)
                if part == "dacl":
                    parts["dacl_present"] = new.get("dacl_present", False)
        blob = self._sd_self_relative(parts)
        copy = self._io_allocate(PoolType.PagedPool, len(blob), from_display_tag("ObSc"), False)
        if not copy:
            return NtStatus.STATUS_INSUFFICIENT_RESOURCES
        self.write(copy, blob)
        self._put64(header + L.OBJECT_HEADER.SecurityDescriptor, copy)
        if old:
            self.pool.free(old, None)
        if self.objects[body].type_name == "Device":
            self._put64(body + L.DEVICE_OBJECT.SecurityDescriptor, copy)
        return NtStatus.STATUS_SUCCESS

    def object_security(self, body: int) -> int:
        """The object's security descriptor (self-relative), 0 if it has none."""
        return self._get64(body - L.OBJECT_HEADER.Body + L.OBJECT_HEADER.SecurityDescriptor) & ~0xF


def from_display_tag(text: str) -> int:
    from ..tags import from_display
    return from_display(text)


_TYPE_TAGS = {"Device": L.TAG_DEVICE, "Driver": L.TAG_DRIVER, "File": L.TAG_FILE,
              "SymbolicLink": L.TAG_SYMBOLIC_LINK, "Key": L.TAG_KEY,
              "Event": from_display_tag("Even"), "Process": from_display_tag("Proc"),
              "Thread": from_display_tag("Thre")}

register_data("IoDeviceObjectType", "POBJECT_TYPE", lambda k: k.object_types["Device"])
register_data("IoDriverObjectType", "POBJECT_TYPE", lambda k: k.object_types["Driver"])
register_data("IoFileObjectType", "POBJECT_TYPE", lambda k: k.object_types["File"])
register_data("ExEventObjectType", "POBJECT_TYPE", lambda k: k.object_types["Event"])
register_data("PsProcessType", "POBJECT_TYPE", lambda k: k.object_types["Process"])
register_data("PsThreadType", "POBJECT_TYPE", lambda k: k.object_types["Thread"])
