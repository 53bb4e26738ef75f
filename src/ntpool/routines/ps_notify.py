"""Notify routines: process, thread and image-load notify routines (PsSetCreateProcessNotifyRoutine(Ex),
PsSetCreateThreadNotifyRoutine, PsSetLoadImageNotifyRoutine and their removal), registry
callbacks (CmRegisterCallback(Ex), CmUnRegisterCallback) and object callbacks
(ObRegisterCallbacks, ObUnRegisterCallbacks).

The Ps routines keep what Windows keeps: an EX_CALLBACK_ROUTINE_BLOCK (RundownProtect,
Function, Context: ExAllocateCallBack's, tag "Cbrb", paged pool on Windows 7 as in WRK
ex/callback.c, NonPagedPoolNx from Windows 10) for each routine, its address as an
EX_FAST_REF (the block with MAX_FAST_REFS, 15, in its low bits) in a slot of the kernel's
array for that kind (PspCreateProcessNotifyRoutine, PspCreateThreadNotifyRoutine,
PspLoadImageNotifyRoutine: 64, 64, and 8 image slots on Windows 7 as documented, 64 from
Windows 8.1). Registry callbacks are ReactOS's CM_CALLBACK_ENTRY in pool tagged "CMcb"
(TAG_CM_CALLBACK, config/cmhook.c), cookies counted from 1, ordered by altitude. Object
callbacks parse the driver's OB_CALLBACK_REGISTRATION as hostile input.

When they run, in ntpool's one thread: process notify routines when ``k.create_process``
makes a process (after it exists, in the creator's context: ParentId is the current
process); thread notify routines when a system thread is created and when it ends; image
notify routines when a driver image is mapped, before its DriverEntry (ProcessId 0, an
IMAGE_INFO with SystemModeImage); registry callbacks around ZwSetValueKey (RegNtPreSetValueKey:
a failure status refuses the write, with that status; RegNtPostSetValueKey after it). A
routine whose driver unloaded without removing it runs there when its event comes:
0xCE (DRIVER_UNLOADED_WITHOUT_CANCELLING_PENDING_OPERATIONS), as for work items: Windows
checks nothing at unload.
"""

from __future__ import annotations

import struct

from ..constants import APC_LEVEL, PASSIVE_LEVEL, NtStatus, PoolType
from ..errors import NtStatusError
from .registry import register_type, routine

TAG_CALLBACK_ROUTINE_BLOCK = int.from_bytes(b"Cbrb", "little")  # WRK/ReactOS 'brbC'
TAG_CM_CALLBACK = int.from_bytes(b"CMcb", "little")  # ReactOS 'bcMC'
TAG_OB_CALLBACK = int.from_bytes(b"ObCb", "little")  # not public: ntpool's (departures)
EX_CALLBACK_ROUTINE_BLOCK_SIZE = 0x18
CALLBACK_BLOCK_FUNCTION = 0x08
CALLBACK_BLOCK_CONTEXT = 0x10
MAX_FAST_REFS = 15
PROCESS, THREAD, IMAGE = "process", "thread", "image"
NOTIFY_LIMITS = {PROCESS: 64, THREAD: 64}
IMAGE_NOTIFY_LIMIT_WINDOWS_7 = 8
IMAGE_NOTIFY_LIMIT = 64
# What the Context of a process notify block says (not public: ntpool's reading).
PLAIN_ROUTINE, EX_ROUTINE = 0, 1

STATUS_INVALID_PARAMETER = 0xC000000D
STATUS_ACCESS_DENIED = 0xC0000022
STATUS_PROCEDURE_NOT_FOUND = 0xC000007A
STATUS_FLT_INSTANCE_ALTITUDE_COLLISION = 0xC01C0011
STATUS_CALLBACK_BYPASS = 0xC0000503
IMAGE_DLLCHARACTERISTICS_FORCE_INTEGRITY = 0x0080

# PS_CREATE_NOTIFY_INFO (x64): Size, Flags, ParentProcessId, CreatingThreadId (CLIENT_ID),
# FileObject, ImageFileName, CommandLine, CreationStatus.
PS_CREATE_NOTIFY_INFO_SIZE = 0x48
PCNI_FLAGS = 0x08
PCNI_PARENT = 0x10
PCNI_CREATING_THREAD = 0x18
PCNI_FILE_OBJECT = 0x28
PCNI_IMAGE_FILE_NAME = 0x30
PCNI_COMMAND_LINE = 0x38
PCNI_CREATION_STATUS = 0x40
# IMAGE_INFO (x64): Properties (ImageAddressingMode 8 bits, SystemModeImage bit 8, ...),
# ImageBase, ImageSelector, ImageSize, ImageSectionNumber.
IMAGE_INFO_SIZE = 0x28
IMAGE_ADDRESSING_MODE_32BIT = 3
IMAGE_INFO_SYSTEM_MODE_IMAGE = 1 << 8
SCRATCH_NAME_BYTES = 0x400

# REG_NOTIFY_CLASS values ntpool raises, and REG_SET_VALUE_KEY_INFORMATION (x64): Object,
# ValueName, TitleIndex, Type, Data, DataSize; REG_POST_OPERATION_INFORMATION: Object,
# Status, PreInformation, ReturnStatus.
REG_NT_PRE_SET_VALUE_KEY = 1
REG_NT_POST_SET_VALUE_KEY = 16
REG_SET_VALUE_KEY_INFORMATION_SIZE = 0x40
REG_POST_OPERATION_INFORMATION_SIZE = 0x38

# ReactOS's CM_CALLBACK_ENTRY (x64): ListEntry, ContextList, RundownRef, Function, Context,
# Cookie, Altitude (UNICODE_STRING), Unregistering; the altitude's characters after it.
CM_CALLBACK_ENTRY_SIZE = 0x58
CM_ENTRY_FUNCTION = 0x28
CM_ENTRY_COOKIE = 0x38
CM_ENTRY_ALTITUDE = 0x40
MASK64 = (1 << 64) - 1
# ntpool's registration block (Windows' is not public): Version, OperationRegistrationCount,
# Altitude, RegistrationContext, then an entry per operation registration (ObjectType,
# Operations, PreOperation, PostOperation), then the altitude's characters.
OB_REGISTRATION_BLOCK_HEADER = 0x20
OB_REGISTRATION_BLOCK_ENTRY = 0x20

# OB_CALLBACK_REGISTRATION (x64): Version (USHORT), OperationRegistrationCount (USHORT),
# Altitude (UNICODE_STRING at 8), RegistrationContext (0x18), OperationRegistration (0x20);
# OB_OPERATION_REGISTRATION: ObjectType (POBJECT_TYPE *), Operations (ULONG),
# PreOperation, PostOperation; 0x20 bytes.
OB_FLT_REGISTRATION_VERSION = 0x0100
OB_REGISTRATION_SIZE = 0x28
OB_OPERATION_REGISTRATION_SIZE = 0x20
OB_OPERATION_HANDLE_CREATE = 1
OB_OPERATION_HANDLE_DUPLICATE = 2
OB_CALLBACK_TYPES = ("Process", "Thread")

for _name in ("PCREATE_PROCESS_NOTIFY_ROUTINE", "PCREATE_PROCESS_NOTIFY_ROUTINE_EX",
              "PCREATE_THREAD_NOTIFY_ROUTINE", "PLOAD_IMAGE_NOTIFY_ROUTINE",
              "PEX_CALLBACK_FUNCTION", "POB_CALLBACK_REGISTRATION"):
    register_type(_name, 8, pointer=True)



class NotifyRoutines:
    def _init_notify(self) -> None:
        image_limit = IMAGE_NOTIFY_LIMIT_WINDOWS_7 if self.windows.build < 9600 else IMAGE_NOTIFY_LIMIT
        self.notify_limits = {**NOTIFY_LIMITS, IMAGE: image_limit}
        # The kernel's arrays of EX_FAST_REFs (PspCreateProcessNotifyRoutine ...).
        self.notify_arrays = {kind: self.kernel_data.reserve(8 * limit, align=16)
                              for kind, limit in self.notify_limits.items()}
        self.notify_count = {kind: 0 for kind in self.notify_limits}  # events look only when some are
        # Where the kernel builds what it passes (a frame on the notifying thread's stack).
        self._notify_scratch = self.kernel_data.reserve(0x100 + SCRATCH_NAME_BYTES, align=16)
        self.cm_callbacks: list[tuple[int, str | None]] = []  # (CM_CALLBACK_ENTRY, altitude), in call order
        self._cm_cookie = 0
        self.ob_registrations: dict[int, str] = {}  # registration handle -> its altitude

    # --- helpers ---------------------------------------------------------------------------

    def _callback_pool(self) -> int:
        return PoolType.PagedPool if self.windows.build < 9200 else PoolType.NonPagedPoolNx

    def _in_integrity_checked_image(self, address: int) -> bool:
        """MmVerifyCallbackFunction's question: is the routine in a loaded image linked with
        /integritycheck (IMAGE_DLLCHARACTERISTICS_FORCE_INTEGRITY)? A Python driver's routine
        counts as in one (it has no image headers: departures)."""
        if address in self.python_code:
            return True
        for loaded in self.drivers:
            if not getattr(loaded.obj, "native", False):
                continue
            base = loaded.image_base
            if base <= address < base + loaded.obj.image_size:
                nt_headers = base + self._get32(base + 0x3C)
                return bool(self._get16(nt_headers + 0x18 + 0x46) & IMAGE_DLLCHARACTERISTICS_FORCE_INTEGRITY)
        return False

    def _altitude(self, altitude_us: int) -> str | None:
        """The altitude a UNICODE_STRING gives, normalized (None: not a valid altitude:
        decimal digits with at most one fractional part, as ReactOS's ObpIsValidAltitude)."""
        if not altitude_us:
            return None
        length = self._get16(altitude_us)
        buffer = self._get64(altitude_us + 8)
        if not buffer or not length or length & 1:
            return None
        text = self.read(buffer, length).decode("utf-16-le", "replace")
        whole, dot, fraction = text.partition(".")
        if not whole.isdecimal() or not whole.isascii() or (dot and not (fraction.isdecimal() and fraction.isascii())):
            return None
        fraction = fraction.rstrip("0")
        return whole.lstrip("0") + ("." + fraction if fraction else "")

    # --- Ps notify routines ----------------------------------------------------------------

    def _add_notify(self, kind: str, function: int, context: int = 0) -> int | None:
        """Register: the block's address, or None when every slot is taken."""
        array = self.notify_arrays[kind]
        limit = self.notify_limits[kind]
        slot = next((i for i in range(limit) if not self._get64(array + 8 * i)), None)
        if slot is None:
            return None
        block = self._io_allocate(self._callback_pool(), EX_CALLBACK_ROUTINE_BLOCK_SIZE,
                                  TAG_CALLBACK_ROUTINE_BLOCK, False)
        if not block:
            return 0
        self.write(block, bytes(EX_CALLBACK_ROUTINE_BLOCK_SIZE))
        self._put64(block + CALLBACK_BLOCK_FUNCTION, function)
        self._put64(block + CALLBACK_BLOCK_CONTEXT, context)
        self._put64(array + 8 * slot, block | MAX_FAST_REFS)
        self.notify_count[kind] += 1
        return block

    def _registered_notify(self, kind: str):
        """(slot address, block, Function, Context) of each routine registered, in slot order."""
        array = self.notify_arrays[kind]
        for slot in range(self.notify_limits[kind]):
            value = self._get64(array + 8 * slot)
            if value:
                block = value & ~MAX_FAST_REFS
                function, context = struct.unpack("<QQ", self.read(block + CALLBACK_BLOCK_FUNCTION, 16))
                yield array + 8 * slot, block, function, context

    def _remove_notify(self, kind: str, function: int, context: int | None = None) -> bool:
        for slot, block, registered, registered_context in self._registered_notify(kind):
            if registered == function and (context is None or registered_context == context):
                self._put64(slot, 0)
                self.notify_count[kind] -= 1
                self.pool.free(block, None)
                return True
        return False

    def _set_process_notify(self, function: int, remove: int, kind: int) -> int:
        self._check_irql_at_most(PASSIVE_LEVEL, "PsSetCreateProcessNotifyRoutine")
        if remove & 0xFF:
            return NtStatus.STATUS_SUCCESS if self._remove_notify(PROCESS, function, kind) \
                else STATUS_PROCEDURE_NOT_FOUND
        if kind == EX_ROUTINE and not self._in_integrity_checked_image(function):
            return STATUS_ACCESS_DENIED
        if any(registered == function for _, _, registered, _ in self._registered_notify(PROCESS)):
            return STATUS_INVALID_PARAMETER
        block = self._add_notify(PROCESS, function, kind)
        if block is None:
            return STATUS_INVALID_PARAMETER
        return NtStatus.STATUS_SUCCESS if block else NtStatus.STATUS_INSUFFICIENT_RESOURCES

    @routine("NTSTATUS PsSetCreateProcessNotifyRoutine(PCREATE_PROCESS_NOTIFY_ROUTINE NotifyRoutine, "
             "BOOLEAN Remove)")
    def PsSetCreateProcessNotifyRoutine(self, NotifyRoutine, Remove) -> int:
        """Add the routine (called as (ParentId, ProcessId, Create) when a process is
        created), or remove it. Already registered, or all 64 slots taken:
        STATUS_INVALID_PARAMETER; removing one not registered: STATUS_PROCEDURE_NOT_FOUND."""
        return self._set_process_notify(NotifyRoutine, Remove, PLAIN_ROUTINE)

    @routine("NTSTATUS PsSetCreateProcessNotifyRoutineEx(PCREATE_PROCESS_NOTIFY_ROUTINE_EX NotifyRoutine, "
             "BOOLEAN Remove)")
    def PsSetCreateProcessNotifyRoutineEx(self, NotifyRoutine, Remove) -> int:
        """As PsSetCreateProcessNotifyRoutine; the routine gets (Process, ProcessId,
        CreateInfo) and may refuse the creation through CreateInfo->CreationStatus. A routine
        outside an image linked with /integritycheck is STATUS_ACCESS_DENIED."""
        return self._set_process_notify(NotifyRoutine, Remove, EX_ROUTINE)

    @routine("NTSTATUS PsSetCreateThreadNotifyRoutine(PCREATE_THREAD_NOTIFY_ROUTINE NotifyRoutine)")
    def PsSetCreateThreadNotifyRoutine(self, NotifyRoutine) -> int:
        """Add a routine called as (ProcessId, ThreadId, Create) when a thread is created
        or ends; all 64 slots taken: STATUS_INSUFFICIENT_RESOURCES."""
        self._check_irql_at_most(PASSIVE_LEVEL, "PsSetCreateThreadNotifyRoutine")
        return NtStatus.STATUS_SUCCESS if self._add_notify(THREAD, NotifyRoutine) \
            else NtStatus.STATUS_INSUFFICIENT_RESOURCES

    @routine("NTSTATUS PsRemoveCreateThreadNotifyRoutine(PCREATE_THREAD_NOTIFY_ROUTINE NotifyRoutine)")
    def PsRemoveCreateThreadNotifyRoutine(self, NotifyRoutine) -> int:
        self._check_irql_at_most(PASSIVE_LEVEL, "PsRemoveCreateThreadNotifyRoutine")
        return NtStatus.STATUS_SUCCESS if self._remove_notify(THREAD, NotifyRoutine) \
            else STATUS_PROCEDURE_NOT_FOUND

    @routine("NTSTATUS PsSetLoadImageNotifyRoutine(PLOAD_IMAGE_NOTIFY_ROUTINE NotifyRoutine)")
    def PsSetLoadImageNotifyRoutine(self, NotifyRoutine) -> int:
        """Add a routine called as (FullImageName, ProcessId, ImageInfo) when an image is
        mapped (a driver: before its DriverEntry, ProcessId 0); 8 slots on Windows 7, 64
        later: past them STATUS_INSUFFICIENT_RESOURCES."""
        self._check_irql_at_most(PASSIVE_LEVEL, "PsSetLoadImageNotifyRoutine")
        return NtStatus.STATUS_SUCCESS if self._add_notify(IMAGE, NotifyRoutine) \
            else NtStatus.STATUS_INSUFFICIENT_RESOURCES

    @routine("NTSTATUS PsRemoveLoadImageNotifyRoutine(PLOAD_IMAGE_NOTIFY_ROUTINE NotifyRoutine)")
    def PsRemoveLoadImageNotifyRoutine(self, NotifyRoutine) -> int:
        self._check_irql_at_most(PASSIVE_LEVEL, "PsRemoveLoadImageNotifyRoutine")
        return NtStatus.STATUS_SUCCESS if self._remove_notify(IMAGE, NotifyRoutine) \
            else STATUS_PROCEDURE_NOT_FOUND

    # --- the events ------------------------------------------------------------------------

    def _notify_routines(self, kind: str) -> list[tuple[int, int]]:
        if not self.notify_count[kind]:
            return []
        return [(function, context) for _, _, function, context in self._registered_notify(kind)]

    def _write_scratch_name(self, text: str) -> int:
        """A UNICODE_STRING of ``text`` in the scratch frame; its address."""
        encoded = text.encode("utf-16-le")[:SCRATCH_NAME_BYTES - 2]
        string = self._notify_scratch + 0xC0
        self.write(string + 0x10, encoded + b"\0\0")
        self._put_unicode_string(string, len(encoded), len(encoded) + 2, string + 0x10)
        return string

    def notify_process_created(self, process) -> None:
        """PspCallProcessNotifyRoutines at creation: each routine in slot order; an Ex routine
        that sets CreationStatus to a failure refuses the process (NtStatusError)."""
        if "notify_count" not in self.__dict__:
            return  # the System process, made at boot before the notify arrays
        routines = self._notify_routines(PROCESS)
        if not routines:
            return
        parent = self.current_process.pid
        info = self._notify_scratch
        for function, context in routines:
            self._check_code_not_unloaded(function, "process notify routine")
            if context == EX_ROUTINE:
                name = self._write_scratch_name(process.name)
                self.write(info, bytes(PS_CREATE_NOTIFY_INFO_SIZE))
                self._put64(info, PS_CREATE_NOTIFY_INFO_SIZE)
                self._put64(info + PCNI_PARENT, parent)
                self._put64(info + PCNI_CREATING_THREAD, parent)
                self._put64(info + PCNI_CREATING_THREAD + 8, self.PsGetCurrentThreadId())
                self._put64(info + PCNI_IMAGE_FILE_NAME, name)
                self.call_code(function, process.address, process.pid, info)
                status = self._get32(info + PCNI_CREATION_STATUS)
                if status & 0x80000000 and not self.halted:
                    raise NtStatusError(status, f"process notify routine {function:#x} refused "
                                                f"the creation of {process.name}")
            else:
                self.call_code(function, parent, process.pid, 1)

    def notify_thread(self, process_id: int, thread_id: int, create: bool) -> None:
        for function, _ in self._notify_routines(THREAD):
            self._check_code_not_unloaded(function, "thread notify routine")
            self.call_code(function, process_id, thread_id, int(create))

    def notify_image_loaded(self, name: str, base: int, size: int) -> None:
        """PsCallImageNotifyRoutines for a system image: (FullImageName, 0, ImageInfo)."""
        routines = self._notify_routines(IMAGE)
        if not routines:
            return
        full_name = self._write_scratch_name("\\SystemRoot\\system32\\drivers\\" + name)
        info = self._notify_scratch + 0x60
        self.write(info, struct.pack("<IIQIIQI", IMAGE_ADDRESSING_MODE_32BIT | IMAGE_INFO_SYSTEM_MODE_IMAGE,
                                     0, base, 0, 0, size, 0) + bytes(4))
        for function, _ in routines:
            self._check_code_not_unloaded(function, "image notify routine")
            self.call_code(function, full_name, 0, info)

    # --- registry callbacks ----------------------------------------------------------------

    @routine("NTSTATUS CmRegisterCallback(PEX_CALLBACK_FUNCTION Function, PVOID Context, "
             "_Out_ PLARGE_INTEGER Cookie)")
    def CmRegisterCallback(self, Function, Context) -> tuple[int, int]:
        """(status, cookie): Function is called as (Context, REG_NOTIFY_CLASS, information)
        around registry operations, before every callback registered with an altitude."""
        return self._cm_register(Function, None, Context)

    @routine("NTSTATUS CmRegisterCallbackEx(PEX_CALLBACK_FUNCTION Function, PCUNICODE_STRING Altitude, "
             "PVOID Driver, PVOID Context, _Out_ PLARGE_INTEGER Cookie, PVOID Reserved)")
    def CmRegisterCallbackEx(self, Function, Altitude, Driver, Context, Reserved) -> tuple[int, int]:
        """As CmRegisterCallback, ordered by altitude (highest first): an altitude that is
        not a decimal number is STATUS_INVALID_PARAMETER, one taken
        STATUS_FLT_INSTANCE_ALTITUDE_COLLISION."""
        altitude = self._altitude(Altitude)
        if altitude is None:
            return STATUS_INVALID_PARAMETER, 0
        return self._cm_register(Function, altitude, Context)

    def _cm_register(self, function: int, altitude: str | None, context: int) -> tuple[int, int]:
        self._check_irql_at_most(APC_LEVEL, "CmRegisterCallback")
        if altitude is not None and any(_altitude_key(a) == _altitude_key(altitude)
                                        for _, a in self.cm_callbacks if a is not None):
            return STATUS_FLT_INSTANCE_ALTITUDE_COLLISION, 0
        encoded = (altitude or "").encode("utf-16-le")
        entry = self._io_allocate(self._cm_pool(), CM_CALLBACK_ENTRY_SIZE + len(encoded), TAG_CM_CALLBACK, False)
        if not entry:
            return NtStatus.STATUS_INSUFFICIENT_RESOURCES, 0
        self._cm_cookie += 1
        self.write(entry, bytes(CM_CALLBACK_ENTRY_SIZE) + encoded)
        self._put64(entry + CM_ENTRY_FUNCTION, function)
        self._put64(entry + CM_ENTRY_FUNCTION + 8, context)
        self._put64(entry + CM_ENTRY_COOKIE, self._cm_cookie)
        if altitude is not None:
            self._put_unicode_string(entry + CM_ENTRY_ALTITUDE, len(encoded), len(encoded),
                                     entry + CM_CALLBACK_ENTRY_SIZE)
        index = len(self.cm_callbacks)
        if altitude is None:
            index = sum(1 for _, a in self.cm_callbacks if a is None)
        else:
            key = _altitude_key(altitude)
            index = next((i for i, (_, a) in enumerate(self.cm_callbacks)
                          if a is not None and _altitude_key(a) < key), len(self.cm_callbacks))
        self.cm_callbacks.insert(index, (entry, altitude))
        return NtStatus.STATUS_SUCCESS, self._cm_cookie

    def _cm_pool(self) -> int:
        return PoolType.NonPagedPool if self.windows.build < 9200 else PoolType.NonPagedPoolNx

    @routine("NTSTATUS CmUnRegisterCallback(LARGE_INTEGER Cookie)")
    def CmUnRegisterCallback(self, Cookie) -> int:
        """Remove the callback the cookie names; an unknown cookie is STATUS_INVALID_PARAMETER."""
        self._check_irql_at_most(APC_LEVEL, "CmUnRegisterCallback")
        for index, (entry, _) in enumerate(self.cm_callbacks):
            if self._get64(entry + CM_ENTRY_COOKIE) == Cookie & MASK64:
                del self.cm_callbacks[index]
                self.pool.free(entry, None)
                return NtStatus.STATUS_SUCCESS
        return STATUS_INVALID_PARAMETER

    def registry_set_value_callbacks(self, key_body: int, value_name: int, title_index: int,
                                     value_type: int, data: int, size: int, operation) -> int:
        """ZwSetValueKey with the registry callbacks around it: RegNtPreSetValueKey to each
        (a failure stops there and is the result; STATUS_CALLBACK_BYPASS skips the write,
        STATUS_SUCCESS), ``operation()`` (the write: its status), then
        RegNtPostSetValueKey to those that saw the pre-notification, last first."""
        if not self.cm_callbacks:
            return operation()
        info = self._notify_scratch
        self.write(info, bytes(REG_SET_VALUE_KEY_INFORMATION_SIZE))
        for offset, value, put in ((0, key_body, self._put64), (8, value_name, self._put64),
                                   (0x10, title_index, self._put32), (0x14, value_type, self._put32),
                                   (0x18, data, self._put64), (0x20, size, self._put32)):
            put(info + offset, value)
        called = []
        status = None
        for entry, _ in list(self.cm_callbacks):
            function, context = struct.unpack("<QQ", self.read(entry + CM_ENTRY_FUNCTION, 16))
            self._check_code_not_unloaded(function, "registry callback")
            result = self.call_code(function, context, REG_NT_PRE_SET_VALUE_KEY, info) & 0xFFFFFFFF
            if result == STATUS_CALLBACK_BYPASS:
                status = NtStatus.STATUS_SUCCESS
                break
            if result & 0x80000000:
                status = result
                break
            called.append(entry)
        if status is None:
            status = operation()
        post = self._notify_scratch + 0x40
        for entry in reversed(called):
            if entry not in (e for e, _ in self.cm_callbacks):
                continue
            function, context = struct.unpack("<QQ", self.read(entry + CM_ENTRY_FUNCTION, 16))
            self.write(post, struct.pack("<QIIQIIQQQ", key_body, status & 0xFFFFFFFF, 0, info,
                                         status & 0xFFFFFFFF, 0, 0, 0, 0)[:REG_POST_OPERATION_INFORMATION_SIZE])
            self._check_code_not_unloaded(function, "registry callback")
            self.call_code(function, context, REG_NT_POST_SET_VALUE_KEY, post)
        return status

    # --- object callbacks ------------------------------------------------------------------

    @routine("NTSTATUS ObRegisterCallbacks(POB_CALLBACK_REGISTRATION CallbackRegistration, "
             "_Out_ PVOID *RegistrationHandle)")
    def ObRegisterCallbacks(self, CallbackRegistration) -> tuple[int, int]:
        """(status, handle). The OB_CALLBACK_REGISTRATION is read from the caller's memory and
        checked as Windows documents: a Version other than OB_FLT_REGISTRATION_VERSION, no
        operation registrations, an altitude that is not a decimal number, an object type
        other than PsProcessType / PsThreadType, no operation or an unknown one, or neither
        callback: STATUS_INVALID_PARAMETER; an altitude taken:
        STATUS_FLT_INSTANCE_ALTITUDE_COLLISION; a callback outside an image linked with
        /integritycheck: STATUS_ACCESS_DENIED."""
        self._check_irql_at_most(APC_LEVEL, "ObRegisterCallbacks")
        version, count = struct.unpack("<HH", self.read(CallbackRegistration, 4))
        if version != OB_FLT_REGISTRATION_VERSION or not count:
            return STATUS_INVALID_PARAMETER, 0
        altitude = self._altitude(CallbackRegistration + 8)
        if altitude is None:
            return STATUS_INVALID_PARAMETER, 0
        context, operations = struct.unpack("<QQ", self.read(CallbackRegistration + 0x18, 16))
        table = self.read(operations, count * OB_OPERATION_REGISTRATION_SIZE)
        allowed = {self.object_types[name] for name in OB_CALLBACK_TYPES}
        parsed = []
        for index in range(count):
            type_pointer, ops, pre, post = struct.unpack_from("<QI4xQQ", table, index * OB_OPERATION_REGISTRATION_SIZE)
            object_type = self._get64(type_pointer) if type_pointer else 0
            if object_type not in allowed or not ops or ops & ~(OB_OPERATION_HANDLE_CREATE | OB_OPERATION_HANDLE_DUPLICATE) \
                    or not (pre or post):
                return STATUS_INVALID_PARAMETER, 0
            if any(routine and not self._in_integrity_checked_image(routine) for routine in (pre, post)):
                return STATUS_ACCESS_DENIED, 0
            parsed.append((object_type, ops, pre, post))
        if any(_altitude_key(a) == _altitude_key(altitude) for a in self.ob_registrations.values()):
            return STATUS_FLT_INSTANCE_ALTITUDE_COLLISION, 0
        encoded = altitude.encode("utf-16-le")
        size = OB_REGISTRATION_BLOCK_HEADER + count * OB_REGISTRATION_BLOCK_ENTRY + len(encoded)
        block = self._io_allocate(PoolType.PagedPool, size, TAG_OB_CALLBACK, False)
        if not block:
            return NtStatus.STATUS_INSUFFICIENT_RESOURCES, 0
        self.write(block, struct.pack("<HHI", version, count, 0) + bytes(OB_REGISTRATION_BLOCK_HEADER - 8))
        self._put64(block + 0x18, context)
        for index, (object_type, ops, pre, post) in enumerate(parsed):
            self.write(block + OB_REGISTRATION_BLOCK_HEADER + index * OB_REGISTRATION_BLOCK_ENTRY,
                       struct.pack("<QIIQQ", object_type, ops, 0, pre, post))
        text = block + OB_REGISTRATION_BLOCK_HEADER + count * OB_REGISTRATION_BLOCK_ENTRY
        self.write(text, encoded)
        self._put_unicode_string(block + 8, len(encoded), len(encoded), text)
        self.ob_registrations[block] = altitude
        return NtStatus.STATUS_SUCCESS, block

    @routine("VOID ObUnRegisterCallbacks(PVOID RegistrationHandle)")
    def ObUnRegisterCallbacks(self, RegistrationHandle) -> None:
        """Remove the callbacks registered under the handle. A handle ObRegisterCallbacks did
        not return has no public answer (Windows reads it as its block): a ValueError
        (``NativeError`` from a compiled driver)."""
        self._check_irql_at_most(APC_LEVEL, "ObUnRegisterCallbacks")
        if self.ob_registrations.pop(RegistrationHandle, None) is None:
            raise ValueError(f"ObUnRegisterCallbacks of {RegistrationHandle:#x}, which no "
                             f"ObRegisterCallbacks returned (or was unregistered already)")
        self.pool.free(RegistrationHandle, None)

    def ob_callbacks(self) -> list[tuple[int, int, int, int]]:
        """(object type, operations, PreOperation, PostOperation) of every registration."""
        found = []
        for block in self.ob_registrations:
            count = self._get16(block + 2)
            for index in range(count):
                entry = block + OB_REGISTRATION_BLOCK_HEADER + index * OB_REGISTRATION_BLOCK_ENTRY
                found.append(struct.unpack("<QI4xQQ", self.read(entry, OB_REGISTRATION_BLOCK_ENTRY)))
        return found


def _altitude_key(altitude: str) -> tuple[int, str]:
    """Order altitudes as numbers: by the integer part, then the fraction."""
    whole, _, fraction = altitude.partition(".")
    return int(whole or "0"), fraction
