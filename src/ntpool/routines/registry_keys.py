"""An in-memory registry and the Zw*Key routines drivers use on it.

Keys and values live in a Python tree (the hive is the configuration manager's own
storage, not the driver's pool); each open handle is a "Key " object in paged pool, as
Windows makes one per ObOpen of a key, so a driver that forgets ZwClose leaks under "Key "
in the pool table. Before DriverEntry the I/O manager's service key is there:
``\\Registry\\Machine\\System\\CurrentControlSet\\Services\\NAME`` with Type, Start,
ErrorControl, ImagePath and DisplayName, and the RegistryPath DriverEntry gets names it.
Names are case-insensitive and keep the case they were created with.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..constants import NtStatus, PoolType
from ..errors import NtStatusError
from . import layouts as L
from .registry import register_type, routine

STATUS_OBJECT_NAME_NOT_FOUND = 0xC0000034
STATUS_OBJECT_PATH_NOT_FOUND = 0xC000003A
STATUS_BUFFER_TOO_SMALL = 0xC0000023
STATUS_BUFFER_OVERFLOW = 0x80000005
STATUS_INVALID_PARAMETER = 0xC000000D
STATUS_INVALID_HANDLE = 0xC0000008
STATUS_KEY_DELETED = 0xC000017C
STATUS_INVALID_INFO_CLASS = 0xC0000003

KEY_BODY_SIZE = 0x28  # CM_KEY_BODY on Windows 7 x64

try:
    register_type("KEY_VALUE_INFORMATION_CLASS", 4, signed=True)
except Exception:
    pass


@dataclass
class RegistryKey:
    name: str  # as created (the last path component)
    path: str  # full path as created
    values: dict = field(default_factory=dict)  # lower name -> (name, type, data)
    subkeys: dict = field(default_factory=dict)  # lower name -> RegistryKey
    deleted: bool = False


class RegistryRoutines:
    """The configuration manager's routines."""

    def _init_registry(self) -> None:
        self.registry_root = RegistryKey("REGISTRY", "\\REGISTRY")
        self.key_of_object: dict[int, RegistryKey] = {}
        for path in ("\\Registry\\Machine\\System\\CurrentControlSet\\Services",
                     "\\Registry\\Machine\\System\\CurrentControlSet\\Control\\Class",
                     "\\Registry\\Machine\\Software\\Microsoft\\Windows NT\\CurrentVersion",
                     "\\Registry\\Machine\\Hardware", "\\Registry\\User"):
            self.registry_create(path)
        version = "\\Registry\\Machine\\Software\\Microsoft\\Windows NT\\CurrentVersion"
        self.registry_set(version, "CurrentVersion", L.REG_SZ, _sz("6.1"))
        self.registry_set(version, "CurrentBuildNumber", L.REG_SZ, _sz("7601"))
        self.registry_set(version, "ProductName", L.REG_SZ, _sz("Windows 7 Professional"))

    # --- the tree, from Python ---------------------------------------------------------------

    def registry_key(self, path: str) -> RegistryKey | None:
        parts = _parts(path)
        if parts is None:
            return None
        key = self.registry_root
        for part in parts:
            key = key.subkeys.get(part.lower())
            if key is None:
                return None
        return key

    def registry_create(self, path: str) -> RegistryKey:
        """The key at ``path``, made (with its parents) if missing."""
        parts = _parts(path)
        if parts is None:
            raise ValueError(f"{path!r} is not a registry path (\\Registry\\...)")
        key = self.registry_root
        for part in parts:
            child = key.subkeys.get(part.lower())
            if child is None:
                child = RegistryKey(part, key.path + "\\" + part)
                key.subkeys[part.lower()] = child
            key = child
        return key

    def registry_set(self, path: str, name: str, value_type: int, data: bytes) -> None:
        key = self.registry_create(path)
        key.values[name.lower()] = (name, value_type, bytes(data))

    def registry_value(self, path: str, name: str) -> tuple[int, bytes] | None:
        """(type, data) of a value, or None."""
        key = self.registry_key(path)
        if key is None:
            return None
        entry = key.values.get(name.lower())
        return None if entry is None else (entry[1], entry[2])

    def registry_prepare_service(self, path: str, name: str) -> None:
        """The service key the I/O manager reads a driver's load from."""
        self.registry_create(path)
        defaults = (("Type", L.REG_DWORD, (1).to_bytes(4, "little")),
                    ("Start", L.REG_DWORD, (3).to_bytes(4, "little")),
                    ("ErrorControl", L.REG_DWORD, (1).to_bytes(4, "little")),
                    ("ImagePath", L.REG_EXPAND_SZ, _sz(f"\\SystemRoot\\system32\\drivers\\{name}.sys")),
                    ("DisplayName", L.REG_SZ, _sz(name)))
        key = self.registry_key(path)
        for value_name, value_type, data in defaults:
            key.values.setdefault(value_name.lower(), (value_name, value_type, data))

    # --- handles -----------------------------------------------------------------------------

    def _key_path(self, object_attributes: int) -> str:
        name_va = self._get64(object_attributes + L.OBJECT_ATTRIBUTES.ObjectName)
        name = self._unicode_string(name_va) if name_va else ""
        root = self._get64(object_attributes + L.OBJECT_ATTRIBUTES.RootDirectory)
        if root:
            body = self._ob_handle_object(root, "Key")
            base = self.key_of_object[body].path
            return base + ("\\" + name if name else "")
        return name

    def _open_handle(self, key: RegistryKey, access: int, attributes: int) -> int:
        body = self._ob_create("Key", KEY_BODY_SIZE, pool_type=PoolType.PagedPool)
        if not body:
            raise NtStatusError(NtStatus.STATUS_INSUFFICIENT_RESOURCES, "no pool for a key object")
        self._put32(body, 0x6B793032)  # CM_KEY_BODY.Type: "ky02"
        self.key_of_object[body] = key
        self.objects[body].delete = _forget_key_object
        handle = self._ob_insert_handle(body, access, kernel=bool(attributes & L.OBJ_KERNEL_HANDLE) or True)
        self._add_counts(body, -1, 0)  # the creation reference passes to the handle
        return handle

    def _handle_key(self, handle: int) -> RegistryKey:
        body = self._ob_handle_object(handle, "Key")
        key = self.key_of_object[body]
        if key.deleted:
            raise NtStatusError(STATUS_KEY_DELETED, key.path)
        return key

    @routine("NTSTATUS ZwCreateKey(_Out_ PHANDLE KeyHandle, ACCESS_MASK DesiredAccess, "
             "POBJECT_ATTRIBUTES ObjectAttributes, ULONG TitleIndex, PUNICODE_STRING Class, "
             "ULONG CreateOptions, _Out_opt_ PULONG Disposition)")
    def ZwCreateKey(self, DesiredAccess, ObjectAttributes, TitleIndex, Class,
                    CreateOptions) -> tuple[int, int, int]:
        """Open or create a key (its parent must exist): (status, handle, disposition)."""
        try:
            path = self._key_path(ObjectAttributes)
        except NtStatusError as error:
            return error.status, 0, 0
        parts = _parts(path)
        if not parts:
            return STATUS_OBJECT_PATH_NOT_FOUND if parts is None else STATUS_INVALID_PARAMETER, 0, 0
        key = self.registry_key(path)
        disposition = L.REG_OPENED_EXISTING_KEY
        if key is None:
            parent = self.registry_key("\\Registry\\" + "\\".join(parts[:-1])) if len(parts) > 1 \
                else self.registry_root
            if parent is None:
                return STATUS_OBJECT_NAME_NOT_FOUND, 0, 0
            key = self.registry_create(path)
            disposition = L.REG_CREATED_NEW_KEY
        attributes = self._get32(ObjectAttributes + L.OBJECT_ATTRIBUTES.Attributes)
        try:
            handle = self._open_handle(key, DesiredAccess, attributes)
        except NtStatusError as error:
            return error.status, 0, 0
        return NtStatus.STATUS_SUCCESS, handle, disposition

    @routine("NTSTATUS ZwOpenKey(_Out_ PHANDLE KeyHandle, ACCESS_MASK DesiredAccess, "
             "POBJECT_ATTRIBUTES ObjectAttributes)")
    def ZwOpenKey(self, DesiredAccess, ObjectAttributes) -> tuple[int, int]:
        try:
            path = self._key_path(ObjectAttributes)
        except NtStatusError as error:
            return error.status, 0
        if _parts(path) is None:
            return STATUS_OBJECT_PATH_NOT_FOUND, 0
        key = self.registry_key(path)
        if key is None:
            return STATUS_OBJECT_NAME_NOT_FOUND, 0
        attributes = self._get32(ObjectAttributes + L.OBJECT_ATTRIBUTES.Attributes)
        try:
            return NtStatus.STATUS_SUCCESS, self._open_handle(key, DesiredAccess, attributes)
        except NtStatusError as error:
            return error.status, 0

    @routine("NTSTATUS ZwSetValueKey(HANDLE KeyHandle, PUNICODE_STRING ValueName, ULONG TitleIndex, "
             "ULONG Type, PVOID Data, ULONG DataSize)")
    def ZwSetValueKey(self, KeyHandle, ValueName, TitleIndex, Type, Data, DataSize) -> int:
        try:
            key = self._handle_key(KeyHandle)
        except NtStatusError as error:
            return error.status
        def write() -> int:
            name = self._unicode_string(ValueName) if ValueName else ""
            data = self.read(Data, DataSize) if DataSize else b""
            key.values[name.lower()] = (name, Type, data)
            return NtStatus.STATUS_SUCCESS
        if not self.cm_callbacks:
            return write()
        return self.registry_set_value_callbacks(self._ob_handle_object(KeyHandle, "Key"), ValueName,
                                                 TitleIndex, Type, Data, DataSize, write)

    @routine("NTSTATUS ZwQueryValueKey(HANDLE KeyHandle, PUNICODE_STRING ValueName, "
             "KEY_VALUE_INFORMATION_CLASS KeyValueInformationClass, PVOID KeyValueInformation, "
             "ULONG Length, _Out_ PULONG ResultLength)")
    def ZwQueryValueKey(self, KeyHandle, ValueName, KeyValueInformationClass, KeyValueInformation,
                        Length) -> tuple[int, int]:
        """KEY_VALUE_BASIC/FULL/PARTIAL_INFORMATION: (status, bytes needed). A buffer
        smaller than the fixed part is STATUS_BUFFER_TOO_SMALL, one that holds the fixed
        part but not all is STATUS_BUFFER_OVERFLOW with the fixed part filled."""
        try:
            key = self._handle_key(KeyHandle)
        except NtStatusError as error:
            return error.status, 0
        name = self._unicode_string(ValueName) if ValueName else ""
        entry = key.values.get(name.lower())
        if entry is None:
            return STATUS_OBJECT_NAME_NOT_FOUND, 0
        stored_name, value_type, data = entry
        encoded = stored_name.encode("utf-16-le")
        if KeyValueInformationClass == L.KeyValueBasicInformation:
            fixed = 12
            blob = _u32(0) + _u32(value_type) + _u32(len(encoded)) + encoded
        elif KeyValueInformationClass == L.KeyValueFullInformation:
            fixed = 20
            offset = (fixed + len(encoded) + 7) & ~7
            blob = (_u32(0) + _u32(value_type) + _u32(offset) + _u32(len(data)) +
                    _u32(len(encoded)) + encoded)
            blob += bytes(offset - len(blob)) + data
        elif KeyValueInformationClass == L.KeyValuePartialInformation:
            fixed = 12
            blob = _u32(0) + _u32(value_type) + _u32(len(data)) + data
        else:
            return STATUS_INVALID_INFO_CLASS, 0
        if Length < fixed:
            return STATUS_BUFFER_TOO_SMALL, len(blob)
        if Length < len(blob):
            self.write(KeyValueInformation, blob[:fixed])
            return STATUS_BUFFER_OVERFLOW, len(blob)
        self.write(KeyValueInformation, blob)
        return NtStatus.STATUS_SUCCESS, len(blob)

    @routine("NTSTATUS ZwDeleteValueKey(HANDLE KeyHandle, PUNICODE_STRING ValueName)")
    def ZwDeleteValueKey(self, KeyHandle, ValueName) -> int:
        try:
            key = self._handle_key(KeyHandle)
        except NtStatusError as error:
            return error.status
        name = self._unicode_string(ValueName) if ValueName else ""
        if key.values.pop(name.lower(), None) is None:
            return STATUS_OBJECT_NAME_NOT_FOUND
        return NtStatus.STATUS_SUCCESS

    @routine("NTSTATUS ZwDeleteKey(HANDLE KeyHandle)")
    def ZwDeleteKey(self, KeyHandle) -> int:
        """Delete a key without subkeys (the handle stays open until ZwClose)."""
        try:
            key = self._handle_key(KeyHandle)
        except NtStatusError as error:
            return error.status
        if key.subkeys:
            return 0xC0000022  # STATUS_ACCESS_DENIED: keys with subkeys cannot be deleted
        parts = _parts(key.path)
        parent = self.registry_key("\\Registry\\" + "\\".join(parts[:-1])) if len(parts) > 1 \
            else self.registry_root
        parent.subkeys.pop(key.name.lower(), None)
        key.deleted = True
        return NtStatus.STATUS_SUCCESS

    @routine("NTSTATUS ZwFlushKey(HANDLE KeyHandle)")
    def ZwFlushKey(self, KeyHandle) -> int:
        try:
            self._handle_key(KeyHandle)
        except NtStatusError as error:
            return error.status
        return NtStatus.STATUS_SUCCESS


def _forget_key_object(k, body):
    k.key_of_object.pop(body, None)


def _parts(path: str) -> list[str] | None:
    """The components after \\Registry, or None if ``path`` is not under it."""
    parts = [p for p in path.split("\\") if p]
    if not parts or parts[0].lower() != "registry" or not path.startswith("\\"):
        return None
    return parts[1:]


def _sz(text: str) -> bytes:
    return text.encode("utf-16-le") + b"\0\0"


def _u32(value: int) -> bytes:
    return (value & 0xFFFFFFFF).to_bytes(4, "little")
