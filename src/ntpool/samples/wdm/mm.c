/* mm.sys: the memory manager's routines as drivers for DMA-capable and memory-mapped
 * devices call them, one export each (tests/test_mm_native.py drives them): physically
 * contiguous and noncached buffers, physical addresses, pages for an MDL and a partial MDL
 * of them, I/O space, error log entries. And a rootkit's way to patch its own read-only
 * code without touching CR0.WP: a second, writable mapping of the code's frames (an MDL
 * of its .text mapped by MmMapLockedPagesSpecifyCache, or MmMapIoSpace of the frame). */
#include "wdm_lite.h"

#define PATTERN_TAG 'tPmM'

static PDRIVER_OBJECT Driver;

static VOID NTAPI MmUnload(PDRIVER_OBJECT DriverObject) { (void)DriverObject; }

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath) {
    (void)RegistryPath;
    Driver = DriverObject;
    DriverObject->DriverUnload = MmUnload;
    return STATUS_SUCCESS;
}

static PHYSICAL_ADDRESS Physical(ULONG64 Value) {
    PHYSICAL_ADDRESS address;
    address.QuadPart = (LONGLONG)Value;
    return address;
}

/* A DMA buffer below 4 GiB, as a 32-bit bus master needs, filled and read back. */
__declspec(dllexport) PVOID AllocateContiguous(SIZE_T Bytes, ULONG64 Highest) {
    UCHAR *buffer = MmAllocateContiguousMemory(Bytes, Physical(Highest));
    if (buffer != NULL) {
        buffer[0] = 0x5A;
        buffer[Bytes - 1] = 0xA5;
    }
    return buffer;
}

__declspec(dllexport) PVOID AllocateContiguousSpecifyCache(SIZE_T Bytes, ULONG64 Lowest,
        ULONG64 Highest, ULONG64 Boundary, ULONG CacheType) {
    return MmAllocateContiguousMemorySpecifyCacheNode(Bytes, Physical(Lowest), Physical(Highest),
                                                      Physical(Boundary), CacheType, 0);
}

static volatile ULONG Frees;

/* Counted after the call, so the call is no tail jump: a bug check names this line. */
__declspec(dllexport) VOID FreeContiguous(PVOID Buffer) {
    MmFreeContiguousMemory(Buffer);
    Frees += 1;
}

__declspec(dllexport) VOID FreeContiguousSpecifyCache(PVOID Buffer, SIZE_T Bytes) {
    MmFreeContiguousMemorySpecifyCache(Buffer, Bytes, MmNonCached);
}

/* Noncached memory for a device's descriptors: written, checked, freed. 1 when all went well. */
__declspec(dllexport) ULONG NonCachedRoundTrip(SIZE_T Bytes) {
    ULONG *ring = MmAllocateNonCachedMemory(Bytes);
    SIZE_T i;
    ULONG good = 1;
    if (ring == NULL)
        return 0;
    for (i = 0; i < Bytes / sizeof(ULONG); i++)
        if (ring[i] != 0)
            good = 0;  /* handed out zeroed */
    for (i = 0; i < Bytes / sizeof(ULONG); i++)
        ring[i] = (ULONG)i;
    MmFreeNonCachedMemory(ring, Bytes);
    return good;
}

__declspec(dllexport) PVOID AllocateNonCached(SIZE_T Bytes) { return MmAllocateNonCachedMemory(Bytes); }

__declspec(dllexport) VOID FreeNonCached(PVOID Buffer, SIZE_T Bytes) {
    MmFreeNonCachedMemory(Buffer, Bytes);
}

__declspec(dllexport) ULONG64 PhysicalAddressOf(PVOID Address) {
    return (ULONG64)MmGetPhysicalAddress(Address).QuadPart;
}

__declspec(dllexport) BOOLEAN IsAddressValid(PVOID Address) { return MmIsAddressValid(Address); }

__declspec(dllexport) PVOID VirtualFor(ULONG64 Physical_) {
    return MmGetVirtualForPhysical(Physical(Physical_));
}

/* Pages for a scatter/gather list: allocated, mapped, a partial MDL of the second page
 * mapped too, both mappings compared, everything given back. The MDL's page count, or 0. */
__declspec(dllexport) ULONG PagesForMdlRoundTrip(SIZE_T Bytes) {
    PMDL mdl = MmAllocatePagesForMdlEx(Physical(0), Physical(~0ULL), Physical(0), Bytes, MmCached,
                                       MM_ALLOCATE_FULLY_REQUIRED);
    PMDL partial;
    UCHAR *whole, *part;
    ULONG pages = 0;
    if (mdl == NULL)
        return 0;
    whole = MmGetSystemAddressForMdlSafe(mdl, NormalPagePriority);
    partial = IoAllocateMdl((UCHAR *)mdl->StartVa + mdl->ByteOffset + 0x1000 + 8, 16, FALSE,
                            FALSE, NULL);
    if (whole != NULL && partial != NULL) {
        whole[0x1000 + 8] = 0x77;
        IoBuildPartialMdl(mdl, partial, (UCHAR *)mdl->StartVa + mdl->ByteOffset + 0x1000 + 8, 16);
        part = MmGetSystemAddressForMdlSafe(partial, NormalPagePriority);
        if (part != NULL && part[0] == 0x77 && (partial->MdlFlags & MDL_PARTIAL))
            pages = (mdl->Size - sizeof(MDL)) / sizeof(ULONG64);
        if (part != NULL && part != whole + 0x1000 + 8)
            MmUnmapLockedPages(part, partial);
        MmUnmapLockedPages(whole, mdl);
    }
    if (partial != NULL)
        IoFreeMdl(partial);
    MmFreePagesFromMdl(mdl);
    ExFreePool(mdl);
    return pages;
}

/* The MDL's size for a range, and an MDL made for a pool buffer: 1 when they agree. */
__declspec(dllexport) ULONG CreateMdlFor(PVOID Buffer, SIZE_T Length) {
    PMDL mdl = MmCreateMdl(NULL, Buffer, Length);
    ULONG good;
    if (mdl == NULL)
        return 0;
    good = (SIZE_T)mdl->Size == MmSizeOfMdl(Buffer, Length) && mdl->ByteCount == Length;
    ExFreePool(mdl);
    return good;
}

__declspec(dllexport) PVOID MapIoSpace(ULONG64 Physical_, SIZE_T Bytes, ULONG CacheType) {
    return MmMapIoSpace(Physical(Physical_), Bytes, CacheType);
}

__declspec(dllexport) VOID UnmapIoSpace(PVOID Address, SIZE_T Bytes) { MmUnmapIoSpace(Address, Bytes); }

/* An error log entry with one insertion string and two ULONGs of dump data. */
__declspec(dllexport) ULONG LogError(NTSTATUS ErrorCode, ULONG UniqueValue) {
    static const WCHAR text[] = {'m', 'm', '.', 's', 'y', 's', 0};
    UCHAR size = (UCHAR)(sizeof(IO_ERROR_LOG_PACKET) + sizeof(ULONG) + sizeof(text));
    PIO_ERROR_LOG_PACKET packet = IoAllocateErrorLogEntry(Driver, size);
    if (packet == NULL)
        return 0;
    packet->ErrorCode = ErrorCode;
    packet->UniqueErrorValue = UniqueValue;
    packet->FinalStatus = STATUS_INSUFFICIENT_RESOURCES;
    packet->DumpDataSize = 2 * sizeof(ULONG);
    packet->DumpData[0] = 0x11111111;
    packet->DumpData[1] = 0x22222222;
    packet->NumberOfStrings = 1;
    packet->StringOffset = (USHORT)(sizeof(IO_ERROR_LOG_PACKET) + sizeof(ULONG));
    memcpy((UCHAR *)packet + packet->StringOffset, text, sizeof(text));
    IoWriteErrorLogEntry(packet);
    return size;
}

__declspec(dllexport) PVOID AllocateErrorLogEntry(ULONG Size) {
    return IoAllocateErrorLogEntry(Driver, (UCHAR)Size);
}

__declspec(dllexport) VOID WriteErrorLogEntry(PVOID Entry) { IoWriteErrorLogEntry(Entry); }

__declspec(dllexport) VOID FreeErrorLogEntry(PVOID Entry) { IoFreeErrorLogEntry(Entry); }

/* A mapping reserved once and used for each transfer, as a storage driver keeps one for
 * when memory is low: reserved, an MDL's pages mapped there and written, unmapped, mapped
 * again, freed. The byte read back through the second mapping, or 0. */
#define RESERVE_TAG 'vsRM'
__declspec(dllexport) ULONG ReservedMappingRoundTrip(SIZE_T Bytes) {
    PVOID reserved = MmAllocateMappingAddress(Bytes, RESERVE_TAG);
    PMDL mdl;
    UCHAR *va;
    ULONG seen = 0;
    if (reserved == NULL)
        return 0;
    mdl = MmAllocatePagesForMdlEx(Physical(0), Physical(~0ULL), Physical(0), Bytes, MmCached,
                                  MM_ALLOCATE_FULLY_REQUIRED);
    if (mdl != NULL) {
        va = MmMapLockedPagesWithReservedMapping(reserved, RESERVE_TAG, mdl, MmCached);
        if (va != NULL) {
            va[Bytes - 1] = 0x3C;
            MmUnmapReservedMapping(reserved, RESERVE_TAG, mdl);
            va = MmMapLockedPagesWithReservedMapping(reserved, RESERVE_TAG, mdl, MmCached);
            if (va != NULL) {
                seen = va[Bytes - 1];
                MmUnmapReservedMapping(reserved, RESERVE_TAG, mdl);
            }
        }
        MmFreePagesFromMdl(mdl);
        ExFreePool(mdl);
    }
    MmFreeMappingAddress(reserved, RESERVE_TAG);
    return seen;
}

/* The reservation freed with its mapping still in place: SYSTEM_PTE_MISUSE 0x103. */
__declspec(dllexport) VOID FreeReservedWhileMapped(SIZE_T Bytes) {
    PVOID reserved = MmAllocateMappingAddress(Bytes, RESERVE_TAG);
    PMDL mdl = MmAllocatePagesForMdl(Physical(0), Physical(~0ULL), Physical(0), Bytes);
    MmMapLockedPagesWithReservedMapping(reserved, RESERVE_TAG, mdl, MmCached);
    MmFreeMappingAddress(reserved, RESERVE_TAG);
    Frees += 1;
}

/* The code a patch replaces: read-only .text, scanned when the driver loaded. */
__declspec(dllexport) __declspec(noinline) ULONG64 Victim(ULONG64 Value) { return Value * 3 + 1; }

/* mov cr0, rcx; ret: with paging off in rcx, a #GP at the mov, as the processor answers. */
static const UCHAR MovCr0Rcx[4] = {0x0F, 0x22, 0xC1, 0xC3};

/* The patch through an MDL of the code itself, mapped writable in system space: CR0.WP
 * stays on, the stores are the CPU's. */
__declspec(dllexport) ULONG PatchThroughMdl(PVOID Target) {
    PMDL mdl = IoAllocateMdl(Target, sizeof(MovCr0Rcx), FALSE, FALSE, NULL);
    volatile UCHAR *alias;
    ULONG i;
    if (mdl == NULL)
        return 0;
    MmProbeAndLockPages(mdl, KernelMode, IoReadAccess);
    alias = MmMapLockedPagesSpecifyCache(mdl, KernelMode, MmCached, NULL, FALSE, NormalPagePriority);
    if (alias != NULL) {
        for (i = 0; i < sizeof(MovCr0Rcx); i++)
            alias[i] = MovCr0Rcx[i];
        MmUnmapLockedPages((PVOID)alias, mdl);
    }
    MmUnlockPages(mdl);
    IoFreeMdl(mdl);
    return alias != NULL;
}

/* The same through MmMapIoSpace of the code's physical address, copied by memcpy. */
__declspec(dllexport) ULONG PatchThroughIoSpace(PVOID Target) {
    PVOID alias = MmMapIoSpace(MmGetPhysicalAddress(Target), sizeof(MovCr0Rcx), MmNonCached);
    if (alias == NULL)
        return 0;
    memcpy(alias, MovCr0Rcx, sizeof(MovCr0Rcx));
    MmUnmapIoSpace(alias, sizeof(MovCr0Rcx));
    return 1;
}
