"""Security descriptors, ACLs and SIDs in simulated memory, the Rtl* routines that build
and read them, SeCaptureSecurityDescriptor, and the SeExports table of well-known SIDs.

Descriptors come in Windows' two forms: absolute (SECURITY_DESCRIPTOR, pointers, 0x28
bytes) and self-relative (SE_SELF_RELATIVE set, ULONG offsets, 0x14 bytes then the parts,
each LONG-aligned). A captured descriptor is self-relative, in the pool type the caller
asks for, tagged "SeSc" as SeCaptureSecurityDescriptor tags it.
"""

from __future__ import annotations

from ..constants import NtStatus
from . import layouts as L
from .registry import register_data, register_type, routine

STATUS_UNKNOWN_REVISION = 0xC0000058
STATUS_INVALID_SECURITY_DESCR = 0xC0000079
STATUS_BAD_DESCRIPTOR_FORMAT = 0xC00000E7
STATUS_BUFFER_TOO_SMALL = 0xC0000023
STATUS_ALLOTTED_SPACE_EXCEEDED = 0xC0000099
STATUS_INVALID_ACL = 0xC0000077
STATUS_INVALID_SID = 0xC0000078
STATUS_INVALID_PARAMETER = 0xC000000D
SID_MAX_SUB_AUTHORITIES = 15

for _name, _size, _pointer, _pointee in (
        ("PACL", 8, True, None), ("PSID", 8, True, None), ("PSE_EXPORTS", 8, True, None),
        ("PBOOLEAN", 8, True, "BOOLEAN"), ("SECURITY_DESCRIPTOR_CONTROL", 2, False, None)):
    register_type(_name, _size, pointer=_pointer, pointee=_pointee)

# Windows 7's SeExports: (offset, SID as S-1-authority-subauthorities) and privilege LUIDs.
_WELL_KNOWN_SIDS = (
    (0xB8, (0, 0)), (0xC0, (1, 0)), (0xC8, (2, 0)), (0xD0, (3, 0)), (0xD8, (3, 1)),
    (0xE0, (5,)), (0xE8, (5, 1)), (0xF0, (5, 2)), (0xF8, (5, 3)), (0x100, (5, 4)),
    (0x108, (5, 18)), (0x110, (5, 32, 544)), (0x118, (5, 32, 545)), (0x120, (5, 32, 546)),
    (0x128, (5, 32, 547)), (0x130, (5, 32, 548)), (0x138, (5, 32, 549)), (0x140, (5, 32, 550)),
    (0x148, (5, 32, 551)), (0x150, (5, 11)), (0x158, (5, 12)), (0x160, (5, 7)),
    (0x180, (5, 19)), (0x188, (5, 20)), (0x1D0, (5, 17)), (0x1D8, (16, 0)), (0x1E0, (16, 4096)),
    (0x1E8, (16, 8192)), (0x1F0, (16, 12288)), (0x1F8, (16, 16384)), (0x200, (3, 4)))
_PRIVILEGE_LUIDS = tuple((8 * i, value) for i, value in enumerate(
    (2, 3, 4, 5, 6, 7, 8, 9, 10, 15, 14, 11, 12, 13, 16, 17, 18, 19, 20, 21, 22, 23, 24))) + \
    ((0x168, 25), (0x170, 26), (0x178, 27), (0x190, 28), (0x198, 29), (0x1A0, 30), (0x1A8, 31),
     (0x1B0, 32), (0x1B8, 33), (0x1C0, 34), (0x1C8, 35))
SE_EXPORTS_SIZE = 0x218


def sid_bytes(authority: int, *subauthorities: int) -> bytes:
    """A SID: revision 1, count, 48-bit big-endian authority, little-endian subauthorities."""
    return bytes([1, len(subauthorities)]) + authority.to_bytes(6, "big") + \
        b"".join(s.to_bytes(4, "little") for s in subauthorities)


def _align4(n: int) -> int:
    return (n + 3) & ~3


class SecurityRoutines:
    """Rtl* security descriptor routines, SeCaptureSecurityDescriptor, SeExports."""

    def _init_security(self) -> None:
        sids = b"".join(sid_bytes(*sid) for _, sid in _WELL_KNOWN_SIDS)
        table = self.kernel_data.reserve(SE_EXPORTS_SIZE + len(sids) + 8 * len(_WELL_KNOWN_SIDS))
        self.se_exports = table
        data = bytearray(SE_EXPORTS_SIZE)
        place = table + SE_EXPORTS_SIZE
        for offset, sid in _WELL_KNOWN_SIDS:
            encoded = sid_bytes(*sid)
            self.write(place, encoded)
            data[offset:offset + 8] = place.to_bytes(8, "little")
            place += _align4(len(encoded))
        for offset, value in _PRIVILEGE_LUIDS:
            data[offset:offset + 8] = value.to_bytes(8, "little")
        self.write(table, bytes(data))

    def well_known_sid(self, offset: int) -> int:
        """The SID SeExports points to at ``offset`` (0x108: SeLocalSystemSid)."""
        return self._get64(self.se_exports + offset)

    # --- SIDs and ACLs -----------------------------------------------------------------------

    @routine("ULONG RtlLengthSid(PSID Sid)")
    def RtlLengthSid(self, Sid) -> int:
        return 8 + 4 * self.read(Sid + 1, 1)[0]

    @routine("BOOLEAN RtlValidSid(PSID Sid)")
    def RtlValidSid(self, Sid) -> int:
        if not Sid:
            return 0
        revision, count = self.read(Sid, 2)
        return int(revision == 1 and count <= SID_MAX_SUB_AUTHORITIES)

    @routine("BOOLEAN RtlEqualSid(PSID Sid1, PSID Sid2)")
    def RtlEqualSid(self, Sid1, Sid2) -> int:
        a = self.read(Sid1, self.RtlLengthSid(Sid1))
        return int(a == self.read(Sid2, self.RtlLengthSid(Sid2)))

    @routine("NTSTATUS RtlCopySid(ULONG DestinationSidLength, PSID DestinationSid, PSID SourceSid)")
    def RtlCopySid(self, DestinationSidLength, DestinationSid, SourceSid) -> int:
        length = self.RtlLengthSid(SourceSid)
        if DestinationSidLength < length:
            return STATUS_BUFFER_TOO_SMALL
        self.write(DestinationSid, self.read(SourceSid, length))
        return NtStatus.STATUS_SUCCESS

    @routine("NTSTATUS RtlCreateAcl(PACL Acl, ULONG AclLength, ULONG AclRevision)")
    def RtlCreateAcl(self, Acl, AclLength, AclRevision) -> int:
        if AclLength < L.ACL.SIZE or AclLength > 0xFFFF:
            return STATUS_BUFFER_TOO_SMALL
        if AclRevision not in (L.ACL_REVISION, 3, L.ACL_REVISION_DS):
            return STATUS_INVALID_PARAMETER
        self.write(Acl, bytes([AclRevision, 0]) + (AclLength & ~3).to_bytes(2, "little") + bytes(4))
        return NtStatus.STATUS_SUCCESS

    def _acl_used(self, acl: int) -> int:
        """Bytes the ACL header and its ACEs use."""
        count = self._get16(acl + L.ACL.AceCount)
        end = acl + L.ACL.SIZE
        for _ in range(count):
            end += self._get16(end + 2)
        return end - acl

    @routine("NTSTATUS RtlAddAccessAllowedAce(PACL Acl, ULONG AceRevision, ACCESS_MASK AccessMask, PSID Sid)")
    def RtlAddAccessAllowedAce(self, Acl, AceRevision, AccessMask, Sid) -> int:
        """Append an ACCESS_ALLOWED_ACE; STATUS_ALLOTTED_SPACE_EXCEEDED when it does not fit."""
        if not self.RtlValidSid(Sid):
            return STATUS_INVALID_SID
        revision = self.read(Acl, 1)[0]
        if revision not in (L.ACL_REVISION, 3, L.ACL_REVISION_DS):
            return STATUS_INVALID_ACL
        sid_length = self.RtlLengthSid(Sid)
        ace_size = L.ACE_HEADER_SIZE + 4 + sid_length
        used = self._acl_used(Acl)
        if used + ace_size > self._get16(Acl + L.ACL.AclSize):
            return STATUS_ALLOTTED_SPACE_EXCEEDED
        ace = bytes([L.ACCESS_ALLOWED_ACE_TYPE, 0]) + ace_size.to_bytes(2, "little") + \
            (AccessMask & 0xFFFFFFFF).to_bytes(4, "little") + self.read(Sid, sid_length)
        self.write(Acl + used, ace)
        self._put16(Acl + L.ACL.AceCount, self._get16(Acl + L.ACL.AceCount) + 1)
        if AceRevision > revision:
            self._put8(Acl, AceRevision)
        return NtStatus.STATUS_SUCCESS

    @routine("BOOLEAN RtlValidAcl(PACL Acl)")
    def RtlValidAcl(self, Acl) -> int:
        revision = self.read(Acl, 1)[0]
        return int(revision in (L.ACL_REVISION, 3, L.ACL_REVISION_DS) and
                   self._acl_used(Acl) <= self._get16(Acl + L.ACL.AclSize))

    # --- security descriptors ----------------------------------------------------------------

    @routine("NTSTATUS RtlCreateSecurityDescriptor(PSECURITY_DESCRIPTOR SecurityDescriptor, ULONG Revision)")
    def RtlCreateSecurityDescriptor(self, SecurityDescriptor, Revision) -> int:
        if Revision != L.SECURITY_DESCRIPTOR_REVISION:
            return STATUS_UNKNOWN_REVISION
        self.write(SecurityDescriptor, bytes([Revision]) + bytes(L.SECURITY_DESCRIPTOR.SIZE - 1))
        return NtStatus.STATUS_SUCCESS

    def _sd_control(self, sd: int) -> int:
        return self._get16(sd + L.SECURITY_DESCRIPTOR.Control)

    def _sd_part(self, sd: int, which: str) -> int:
        """The address of the owner/group/sacl/dacl of either form (0: none)."""
        if self._sd_control(sd) & L.SE_SELF_RELATIVE:
            offset = self._get32(sd + getattr(L.SECURITY_DESCRIPTOR, "RELATIVE_" + which.upper()))
            return sd + offset if offset else 0
        return self._get64(sd + getattr(L.SECURITY_DESCRIPTOR, which.capitalize()))

    def _set_part(self, sd: int, which: str, present_bit: int, present, value, defaulted,
                  defaulted_bit: int) -> int:
        control = self._sd_control(sd)
        if self.read(sd, 1)[0] != L.SECURITY_DESCRIPTOR_REVISION:
            return STATUS_UNKNOWN_REVISION
        if control & L.SE_SELF_RELATIVE:
            return STATUS_INVALID_SECURITY_DESCR
        control &= ~(present_bit | defaulted_bit)
        if present:
            control |= present_bit | (defaulted_bit if defaulted else 0)
            self._put64(sd + getattr(L.SECURITY_DESCRIPTOR, which), value)
        else:
            self._put64(sd + getattr(L.SECURITY_DESCRIPTOR, which), 0)
        self._put16(sd + L.SECURITY_DESCRIPTOR.Control, control)
        return NtStatus.STATUS_SUCCESS

    @routine("NTSTATUS RtlSetDaclSecurityDescriptor(PSECURITY_DESCRIPTOR SecurityDescriptor, "
             "BOOLEAN DaclPresent, PACL Dacl, BOOLEAN DaclDefaulted)")
    def RtlSetDaclSecurityDescriptor(self, SecurityDescriptor, DaclPresent, Dacl, DaclDefaulted) -> int:
        return self._set_part(SecurityDescriptor, "Dacl", L.SE_DACL_PRESENT, DaclPresent, Dacl,
                              DaclDefaulted, L.SE_DACL_DEFAULTED)

    @routine("NTSTATUS RtlSetSaclSecurityDescriptor(PSECURITY_DESCRIPTOR SecurityDescriptor, "
             "BOOLEAN SaclPresent, PACL Sacl, BOOLEAN SaclDefaulted)")
    def RtlSetSaclSecurityDescriptor(self, SecurityDescriptor, SaclPresent, Sacl, SaclDefaulted) -> int:
        return self._set_part(SecurityDescriptor, "Sacl", L.SE_SACL_PRESENT, SaclPresent, Sacl,
                              SaclDefaulted, L.SE_SACL_DEFAULTED)

    @routine("NTSTATUS RtlSetOwnerSecurityDescriptor(PSECURITY_DESCRIPTOR SecurityDescriptor, "
             "PSID Owner, BOOLEAN OwnerDefaulted)")
    def RtlSetOwnerSecurityDescriptor(self, SecurityDescriptor, Owner, OwnerDefaulted) -> int:
        status = self._set_part(SecurityDescriptor, "Owner", 0, True, Owner, OwnerDefaulted,
                                L.SE_OWNER_DEFAULTED)
        return status

    @routine("NTSTATUS RtlSetGroupSecurityDescriptor(PSECURITY_DESCRIPTOR SecurityDescriptor, "
             "PSID Group, BOOLEAN GroupDefaulted)")
    def RtlSetGroupSecurityDescriptor(self, SecurityDescriptor, Group, GroupDefaulted) -> int:
        return self._set_part(SecurityDescriptor, "Group", 0, True, Group, GroupDefaulted,
                              L.SE_GROUP_DEFAULTED)

    @routine("NTSTATUS RtlGetDaclSecurityDescriptor(PSECURITY_DESCRIPTOR SecurityDescriptor, "
             "_Out_ PBOOLEAN DaclPresent, _Out_ PACL *Dacl, _Out_ PBOOLEAN DaclDefaulted)")
    def RtlGetDaclSecurityDescriptor(self, SecurityDescriptor) -> tuple[int, int, int, int]:
        """(status, present, dacl, defaulted)."""
        if self.read(SecurityDescriptor, 1)[0] != L.SECURITY_DESCRIPTOR_REVISION:
            return STATUS_UNKNOWN_REVISION, 0, 0, 0
        control = self._sd_control(SecurityDescriptor)
        present = int(bool(control & L.SE_DACL_PRESENT))
        dacl = self._sd_part(SecurityDescriptor, "dacl") if present else 0
        return NtStatus.STATUS_SUCCESS, present, dacl, int(bool(control & L.SE_DACL_DEFAULTED))

    @routine("NTSTATUS RtlGetSaclSecurityDescriptor(PSECURITY_DESCRIPTOR SecurityDescriptor, "
             "_Out_ PBOOLEAN SaclPresent, _Out_ PACL *Sacl, _Out_ PBOOLEAN SaclDefaulted)")
    def RtlGetSaclSecurityDescriptor(self, SecurityDescriptor) -> tuple[int, int, int, int]:
        if self.read(SecurityDescriptor, 1)[0] != L.SECURITY_DESCRIPTOR_REVISION:
            return STATUS_UNKNOWN_REVISION, 0, 0, 0
        control = self._sd_control(SecurityDescriptor)
        present = int(bool(control & L.SE_SACL_PRESENT))
        sacl = self._sd_part(SecurityDescriptor, "sacl") if present else 0
        return NtStatus.STATUS_SUCCESS, present, sacl, int(bool(control & L.SE_SACL_DEFAULTED))

    @routine("NTSTATUS RtlGetOwnerSecurityDescriptor(PSECURITY_DESCRIPTOR SecurityDescriptor, "
             "_Out_ PSID *Owner, _Out_ PBOOLEAN OwnerDefaulted)")
    def RtlGetOwnerSecurityDescriptor(self, SecurityDescriptor) -> tuple[int, int, int]:
        if self.read(SecurityDescriptor, 1)[0] != L.SECURITY_DESCRIPTOR_REVISION:
            return STATUS_UNKNOWN_REVISION, 0, 0
        control = self._sd_control(SecurityDescriptor)
        return (NtStatus.STATUS_SUCCESS, self._sd_part(SecurityDescriptor, "owner"),
                int(bool(control & L.SE_OWNER_DEFAULTED)))

    @routine("NTSTATUS RtlGetGroupSecurityDescriptor(PSECURITY_DESCRIPTOR SecurityDescriptor, "
             "_Out_ PSID *Group, _Out_ PBOOLEAN GroupDefaulted)")
    def RtlGetGroupSecurityDescriptor(self, SecurityDescriptor) -> tuple[int, int, int]:
        if self.read(SecurityDescriptor, 1)[0] != L.SECURITY_DESCRIPTOR_REVISION:
            return STATUS_UNKNOWN_REVISION, 0, 0
        control = self._sd_control(SecurityDescriptor)
        return (NtStatus.STATUS_SUCCESS, self._sd_part(SecurityDescriptor, "group"),
                int(bool(control & L.SE_GROUP_DEFAULTED)))

    def _sd_parts(self, sd: int) -> dict:
        """The parts of a descriptor of either form, as bytes."""
        control = self._sd_control(sd)
        parts = {"control": control & ~L.SE_SELF_RELATIVE,
                 "dacl_present": bool(control & L.SE_DACL_PRESENT),
                 "sacl_present": bool(control & L.SE_SACL_PRESENT)}
        for which in ("owner", "group"):
            address = self._sd_part(sd, which)
            parts[which] = self.read(address, self.RtlLengthSid(address)) if address else None
        for which in ("dacl", "sacl"):
            address = self._sd_part(sd, which) if parts[which + "_present"] else 0
            parts[which] = self.read(address, self._get16(address + L.ACL.AclSize)) if address else None
        return parts

    def _sd_self_relative(self, parts: dict) -> bytes:
        control = (parts.get("control", 0) & ~(L.SE_DACL_PRESENT | L.SE_SACL_PRESENT)) | L.SE_SELF_RELATIVE
        if parts.get("dacl_present") or parts.get("dacl") is not None:
            control |= L.SE_DACL_PRESENT
        if parts.get("sacl_present") or parts.get("sacl") is not None:
            control |= L.SE_SACL_PRESENT
        body = bytearray()
        offsets = {}
        # Windows' order in a self-relative descriptor: SACL, DACL, owner, group.
        for which in ("sacl", "dacl", "owner", "group"):
            data = parts.get(which)
            if data:
                offsets[which] = L.SECURITY_DESCRIPTOR.RELATIVE_SIZE + len(body)
                body += data + bytes(_align4(len(data)) - len(data))
        header = bytes([L.SECURITY_DESCRIPTOR_REVISION, 0]) + control.to_bytes(2, "little") + \
            b"".join(offsets.get(w, 0).to_bytes(4, "little") for w in ("owner", "group", "sacl", "dacl"))
        return header + bytes(body)

    @routine("ULONG RtlLengthSecurityDescriptor(PSECURITY_DESCRIPTOR SecurityDescriptor)")
    def RtlLengthSecurityDescriptor(self, SecurityDescriptor) -> int:
        relative = self._sd_control(SecurityDescriptor) & L.SE_SELF_RELATIVE
        length = L.SECURITY_DESCRIPTOR.RELATIVE_SIZE if relative else L.SECURITY_DESCRIPTOR.SIZE
        parts = self._sd_parts(SecurityDescriptor)
        for which in ("owner", "group", "dacl", "sacl"):
            if parts[which]:
                length += _align4(len(parts[which]))
        return length

    @routine("BOOLEAN RtlValidSecurityDescriptor(PSECURITY_DESCRIPTOR SecurityDescriptor)")
    def RtlValidSecurityDescriptor(self, SecurityDescriptor) -> int:
        if self.read(SecurityDescriptor, 1)[0] != L.SECURITY_DESCRIPTOR_REVISION:
            return 0
        for which in ("owner", "group"):
            address = self._sd_part(SecurityDescriptor, which)
            if address and not self.RtlValidSid(address):
                return 0
        return 1

    @routine("NTSTATUS RtlAbsoluteToSelfRelativeSD(PSECURITY_DESCRIPTOR AbsoluteSecurityDescriptor, "
             "PSECURITY_DESCRIPTOR SelfRelativeSecurityDescriptor, PULONG BufferLength)")
    def RtlAbsoluteToSelfRelativeSD(self, AbsoluteSecurityDescriptor, SelfRelativeSecurityDescriptor,
                                    BufferLength) -> int:
        """Write the self-relative form; a buffer too small gets STATUS_BUFFER_TOO_SMALL
        and *BufferLength set to the size needed."""
        if self._sd_control(AbsoluteSecurityDescriptor) & L.SE_SELF_RELATIVE:
            return STATUS_BAD_DESCRIPTOR_FORMAT
        blob = self._sd_self_relative(self._sd_parts(AbsoluteSecurityDescriptor))
        if self._get32(BufferLength) < len(blob):
            self._put32(BufferLength, len(blob))
            return STATUS_BUFFER_TOO_SMALL
        self.write(SelfRelativeSecurityDescriptor, blob)
        self._put32(BufferLength, len(blob))
        return NtStatus.STATUS_SUCCESS

    @routine("NTSTATUS SeCaptureSecurityDescriptor(PSECURITY_DESCRIPTOR InputSecurityDescriptor, "
             "KPROCESSOR_MODE RequestorMode, POOL_TYPE PoolType, BOOLEAN ForceCapture, "
             "_Out_ PSECURITY_DESCRIPTOR *OutputSecurityDescriptor)")
    def SeCaptureSecurityDescriptor(self, InputSecurityDescriptor, RequestorMode, PoolType,
                                    ForceCapture) -> tuple[int, int]:
        """(status, captured): a self-relative copy in PoolType ("SeSc"), or the input itself
        from kernel mode without ForceCapture. Free it with SeReleaseSecurityDescriptor or
        ExFreePool."""
        if not InputSecurityDescriptor:
            return NtStatus.STATUS_SUCCESS, 0
        if RequestorMode == 0 and not ForceCapture:
            return NtStatus.STATUS_SUCCESS, InputSecurityDescriptor
        if self.read(InputSecurityDescriptor, 1)[0] != L.SECURITY_DESCRIPTOR_REVISION:
            return STATUS_UNKNOWN_REVISION, 0
        blob = self._sd_self_relative(self._sd_parts(InputSecurityDescriptor))
        copy = self._io_allocate(PoolType, len(blob), L.TAG_CAPTURED_SD)
        if not copy:
            return NtStatus.STATUS_INSUFFICIENT_RESOURCES, 0
        self.write(copy, blob)
        return NtStatus.STATUS_SUCCESS, copy

    @routine("VOID SeReleaseSecurityDescriptor(PSECURITY_DESCRIPTOR CapturedSecurityDescriptor, "
             "KPROCESSOR_MODE RequestorMode, BOOLEAN ForceCapture)")
    def SeReleaseSecurityDescriptor(self, CapturedSecurityDescriptor, RequestorMode, ForceCapture) -> None:
        if CapturedSecurityDescriptor and (RequestorMode != 0 or ForceCapture):
            self.pool.free(CapturedSecurityDescriptor, None)


register_data("SeExports", "PSE_EXPORTS", lambda k: k.se_exports)
