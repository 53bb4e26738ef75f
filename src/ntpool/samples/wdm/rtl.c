/* rtl.sys: the run-time library's bitmaps, time, printf and generic tables as drivers use
 * them (tests/test_rtl_native.py drives the exports). Its slot map is a bitmap over pool it
 * allocates in DriverEntry (tag 'RtlB'), the way drivers hand out ids or buffer slots. */
#include "rtl_lite.h"

#define SLOT_TAG 'BltR'
#define SLOTS 256

static RTL_BITMAP Slots;
static PULONG SlotBits;

static VOID NTAPI RtlUnload(PDRIVER_OBJECT DriverObject) {
    (void)DriverObject;
    if (SlotBits != NULL)
        ExFreePoolWithTag(SlotBits, SLOT_TAG);
}

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath) {
    (void)RegistryPath;
    DriverObject->DriverUnload = RtlUnload;
    SlotBits = ExAllocatePoolWithTag(NonPagedPool, SLOTS / 8, SLOT_TAG);
    if (SlotBits == NULL)
        return STATUS_INSUFFICIENT_RESOURCES;
    RtlInitializeBitMap(&Slots, SlotBits, SLOTS);
    RtlClearAllBits(&Slots);
    return STATUS_SUCCESS;
}

/* --- bitmaps --- */

/* Count slots in a row, first looked for at Hint: the first slot's number, ~0 if none. */
__declspec(dllexport) ULONG SlotsTake(ULONG Count, ULONG Hint) {
    return RtlFindClearBitsAndSet(&Slots, Count, Hint);
}

__declspec(dllexport) VOID SlotsGive(ULONG First, ULONG Count) { RtlClearBits(&Slots, First, Count); }

__declspec(dllexport) ULONG SlotsFree(VOID) { return RtlNumberOfClearBits(&Slots); }

__declspec(dllexport) PRTL_BITMAP SlotMap(VOID) { return &Slots; }

enum { OP_INIT, OP_CLEAR_ALL, OP_SET_ALL, OP_CLEAR, OP_SET, OP_CLEAR_BIT, OP_SET_BIT, OP_TEST_BIT,
       OP_ARE_CLEAR, OP_ARE_SET, OP_FIND_CLEAR, OP_FIND_SET, OP_FIND_CLEAR_AND_SET,
       OP_FIND_SET_AND_CLEAR, OP_NUMBER_CLEAR, OP_NUMBER_SET, OP_FIRST_RUN_CLEAR, OP_NEXT_RUN_CLEAR };

/* Any bitmap routine on any header (OP_INIT: A is the buffer, B the size): what it returns
 * (a run's length; its index in *Index). Counted after the call, so no tail jump: a bug
 * check names this function's line. */
static volatile ULONG BitmapCalls;
__declspec(dllexport) ULONG64 BitmapOp(ULONG Op, PRTL_BITMAP Header, ULONG64 A, ULONG B, PULONG Index) {
    ULONG64 result = 0;
    switch (Op) {
    case OP_INIT: RtlInitializeBitMap(Header, (PULONG)A, B); break;
    case OP_CLEAR_ALL: RtlClearAllBits(Header); break;
    case OP_SET_ALL: RtlSetAllBits(Header); break;
    case OP_CLEAR: RtlClearBits(Header, (ULONG)A, B); break;
    case OP_SET: RtlSetBits(Header, (ULONG)A, B); break;
    case OP_CLEAR_BIT: RtlClearBit(Header, (ULONG)A); break;
    case OP_SET_BIT: RtlSetBit(Header, (ULONG)A); break;
    case OP_TEST_BIT: result = RtlTestBit(Header, (ULONG)A); break;
    case OP_ARE_CLEAR: result = RtlAreBitsClear(Header, (ULONG)A, B); break;
    case OP_ARE_SET: result = RtlAreBitsSet(Header, (ULONG)A, B); break;
    case OP_FIND_CLEAR: result = RtlFindClearBits(Header, (ULONG)A, B); break;
    case OP_FIND_SET: result = RtlFindSetBits(Header, (ULONG)A, B); break;
    case OP_FIND_CLEAR_AND_SET: result = RtlFindClearBitsAndSet(Header, (ULONG)A, B); break;
    case OP_FIND_SET_AND_CLEAR: result = RtlFindSetBitsAndClear(Header, (ULONG)A, B); break;
    case OP_NUMBER_CLEAR: result = RtlNumberOfClearBits(Header); break;
    case OP_NUMBER_SET: result = RtlNumberOfSetBits(Header); break;
    case OP_FIRST_RUN_CLEAR: result = RtlFindFirstRunClear(Header, Index); break;
    case OP_NEXT_RUN_CLEAR: result = RtlFindNextForwardRunClear(Header, (ULONG)A, Index); break;
    default: result = ~0ULL;
    }
    BitmapCalls += 1;
    return result;
}

/* --- time --- */

__declspec(dllexport) ULONG64 TickCount(VOID) {
    LARGE_INTEGER ticks;
    KeQueryTickCount(&ticks);
    return (ULONG64)ticks.QuadPart;
}

/* The local time now, as a driver stamps a log record: KeQuerySystemTime (inline), local time,
 * fields. Returns the system time. */
__declspec(dllexport) ULONG64 LocalNow(PTIME_FIELDS Fields) {
    LARGE_INTEGER system, local;
    KeQuerySystemTime(&system);
    ExSystemTimeToLocalTime(&system, &local);
    RtlTimeToTimeFields(&local, Fields);
    return (ULONG64)system.QuadPart;
}

/* Fields to a time and back to system time: the time, or ~0 if the fields are refused. */
__declspec(dllexport) ULONG64 FieldsToSystemTime(PTIME_FIELDS Fields) {
    LARGE_INTEGER local, system;
    if (!RtlTimeFieldsToTime(Fields, &local))
        return ~0ULL;
    ExLocalTimeToSystemTime(&local, &system);
    return (ULONG64)system.QuadPart;
}

static volatile ULONG TimeCalls;
__declspec(dllexport) VOID TimeToFields(PLARGE_INTEGER Time, PTIME_FIELDS Fields) {
    RtlTimeToTimeFields(Time, Fields);
    TimeCalls += 1;
}

/* Count numbers from RtlRandomEx (Ex) or RtlRandom into Out, the seed in *Seed. */
__declspec(dllexport) VOID Randoms(PULONG Seed, PULONG Out, ULONG Count, BOOLEAN Ex) {
    ULONG n;
    for (n = 0; n < Count; n++)
        Out[n] = Ex ? RtlRandomEx(Seed) : RtlRandom(Seed);
}

/* --- the printf family --- */

static volatile ULONG PrintCalls;

/* _snprintf with three 64-bit arguments: its result. */
__declspec(dllexport) INT Format(char *Buffer, SIZE_T Count, PCSTR FormatText, ULONG64 A, ULONG64 B,
                                 ULONG64 C) {
    INT result = _snprintf(Buffer, Count, FormatText, A, B, C);
    PrintCalls += 1;
    return result;
}

__declspec(dllexport) INT FormatWide(PWSTR Buffer, SIZE_T Count, PCWSTR FormatText, ULONG64 A,
                                     ULONG64 B, ULONG64 C) {
    INT result = _snwprintf(Buffer, Count, FormatText, A, B, C);
    PrintCalls += 1;
    return result;
}

/* sprintf / swprintf (Wide) with no count: the whole text, however long. */
__declspec(dllexport) INT FormatUncounted(PVOID Buffer, PCSTR FormatText, ULONG64 A, BOOLEAN Wide) {
    INT result = Wide ? swprintf((PWSTR)Buffer, (PCWSTR)FormatText, A) : sprintf((char *)Buffer, FormatText, A);
    PrintCalls += 1;
    return result;
}

static INT FormatListed(char *Buffer, SIZE_T Count, PCSTR FormatText, ...) {
    va_list args;
    INT result;
    va_start(args, FormatText);
    result = Count ? _vsnprintf(Buffer, Count, FormatText, args) : vsprintf(Buffer, FormatText, args);
    va_end(args);
    return result;
}

/* Through a va_list (_vsnprintf, or vsprintf when Count is 0): five arguments of mixed size. */
__declspec(dllexport) INT FormatVa(char *Buffer, SIZE_T Count, PCSTR FormatText, ULONG A, ULONG64 B,
                                   PCSTR C, PCWSTR D, ULONG E) {
    return FormatListed(Buffer, Count, FormatText, A, B, C, D, E);
}

/* A device's description as drivers build it with ntstrsafe: "\Device\Name-N (0xFLAGS)" into
 * a buffer of Bytes bytes; the status RtlStringCbPrintfW gives. */
__declspec(dllexport) NTSTATUS DescribeDevice(PWSTR Buffer, SIZE_T Bytes, PUNICODE_STRING Name,
                                              ULONG Number, ULONG Flags) {
    return RtlStringCbPrintfW(Buffer, Bytes, L"\\Device\\%wZ-%u (0x%08X)", Name, Number, Flags);
}

/* --- generic tables: connection records by id, in an AVL table whose nodes come from pool
 * under the driver's tag 'RtlT' --- */

#define RECORD_TAG 'TltR'
typedef struct _RECORD { ULONG Id; ULONG64 Value; } RECORD, *PRECORD;

static RTL_AVL_TABLE Records;
static BOOLEAN FailAllocations;
static ULONG LastAllocationSize;
BOOLEAN LeakOnUnload;

static RTL_GENERIC_COMPARE_RESULTS NTAPI CompareRecords(PRTL_AVL_TABLE Table, PVOID First, PVOID Second) {
    ULONG a = ((PRECORD)First)->Id, b = ((PRECORD)Second)->Id;
    (void)Table;
    return a < b ? GenericLessThan : a > b ? GenericGreaterThan : GenericEqual;
}

static PVOID NTAPI AllocateRecord(PRTL_AVL_TABLE Table, CLONG ByteSize) {
    (void)Table;
    LastAllocationSize = ByteSize;
    if (FailAllocations)
        return NULL;
    return ExAllocatePoolWithTag(PagedPool, ByteSize, RECORD_TAG);
}

static VOID NTAPI FreeRecord(PRTL_AVL_TABLE Table, PVOID Buffer) {
    (void)Table;
    ExFreePoolWithTag(Buffer, RECORD_TAG);
}

__declspec(dllexport) PRTL_AVL_TABLE RecordsInit(VOID) {
    RtlInitializeGenericTableAvl(&Records, CompareRecords, AllocateRecord, FreeRecord, &Records);
    return &Records;
}

/* The record's element (NULL if allocation failed); *New says whether it was inserted. */
__declspec(dllexport) PRECORD RecordInsert(ULONG Id, ULONG64 Value, BOOLEAN *New) {
    RECORD record;
    record.Id = Id;
    record.Value = Value;
    return RtlInsertElementGenericTableAvl(&Records, &record, sizeof(record), New);
}

__declspec(dllexport) ULONG64 RecordValue(ULONG Id) {
    RECORD key;
    PRECORD found;
    key.Id = Id;
    found = RtlLookupElementGenericTableAvl(&Records, &key);
    return found ? found->Value : ~0ULL;
}

__declspec(dllexport) BOOLEAN RecordDelete(ULONG Id) {
    RECORD key;
    key.Id = Id;
    return RtlDeleteElementGenericTableAvl(&Records, &key);
}

/* The ids in order into Out (at most Max), by the splaying enumeration (Splaying) or the
 * restart-key one; how many there were. */
__declspec(dllexport) ULONG RecordIds(PULONG Out, ULONG Max, BOOLEAN Splaying) {
    ULONG n = 0;
    PRECORD record;
    PVOID key = NULL;
    if (Splaying) {
        for (record = RtlEnumerateGenericTableAvl(&Records, TRUE); record != NULL;
             record = RtlEnumerateGenericTableAvl(&Records, FALSE))
            if (n < Max) Out[n++] = record->Id; else n++;
    } else {
        for (record = RtlEnumerateGenericTableWithoutSplayingAvl(&Records, &key); record != NULL;
             record = RtlEnumerateGenericTableWithoutSplayingAvl(&Records, &key))
            if (n < Max) Out[n++] = record->Id; else n++;
    }
    return n;
}

/* The I-th id in order, ~0 past the end. */
__declspec(dllexport) ULONG RecordAt(ULONG I) {
    PRECORD record = RtlGetElementGenericTableAvl(&Records, I);
    return record ? record->Id : ~0u;
}

/* bits 0-15: the number of records; bit 16: empty; bits 32-63: the last size asked for. */
__declspec(dllexport) ULONG64 RecordFacts(VOID) {
    return RtlNumberGenericTableElementsAvl(&Records) | (RtlIsGenericTableEmptyAvl(&Records) ? 0x10000u : 0) |
           (ULONG64)LastAllocationSize << 32;
}

__declspec(dllexport) VOID RecordSettings(BOOLEAN Fail, BOOLEAN Leak) {
    FailAllocations = Fail;
    LeakOnUnload = Leak;
}

/* Every record freed (by the table's FreeRoutine), as an unload does. */
__declspec(dllexport) VOID RecordsClear(VOID) {
    PRECORD record;
    while ((record = RtlGetElementGenericTableAvl(&Records, 0)) != NULL)
        RtlDeleteElementGenericTableAvl(&Records, record);
}

/* --- the splay-tree form: ids in a RTL_GENERIC_TABLE, nodes under the same tag --- */

static RTL_GENERIC_TABLE Ids;

static RTL_GENERIC_COMPARE_RESULTS NTAPI CompareIds(PRTL_GENERIC_TABLE Table, PVOID First, PVOID Second) {
    ULONG a = *(PULONG)First, b = *(PULONG)Second;
    (void)Table;
    return a < b ? GenericLessThan : a > b ? GenericGreaterThan : GenericEqual;
}

static PVOID NTAPI AllocateId(PRTL_GENERIC_TABLE Table, CLONG ByteSize) {
    (void)Table;
    LastAllocationSize = ByteSize;
    return ExAllocatePoolWithTag(PagedPool, ByteSize, RECORD_TAG);
}

static VOID NTAPI FreeId(PRTL_GENERIC_TABLE Table, PVOID Buffer) {
    (void)Table;
    ExFreePoolWithTag(Buffer, RECORD_TAG);
}

__declspec(dllexport) PRTL_GENERIC_TABLE IdsInit(VOID) {
    RtlInitializeGenericTable(&Ids, CompareIds, AllocateId, FreeId, NULL);
    return &Ids;
}

/* 1 if the id was new, 0 if it was there, ~0 if the allocation failed. */
__declspec(dllexport) ULONG IdsAdd(ULONG Id) {
    BOOLEAN added = FALSE;
    return RtlInsertElementGenericTable(&Ids, &Id, sizeof(Id), &added) ? added : ~0u;
}

/* 1 if the id is there (it is then the root, splayed there), else 0. */
__declspec(dllexport) ULONG IdsHas(ULONG Id) {
    PULONG found = RtlLookupElementGenericTable(&Ids, &Id);
    return found != NULL && (PVOID)Ids.TableRoot == (PVOID)((PUCHAR)found - 0x28);
}

__declspec(dllexport) BOOLEAN IdsRemove(ULONG Id) { return RtlDeleteElementGenericTable(&Ids, &Id); }

/* The I-th id in insertion order (~0 past the end). */
__declspec(dllexport) ULONG IdsAt(ULONG I) {
    PULONG id = RtlGetElementGenericTable(&Ids, I);
    return id ? *id : ~0u;
}

/* The ids in order into Out; how many. */
__declspec(dllexport) ULONG IdsSorted(PULONG Out, ULONG Max) {
    ULONG n = 0;
    PULONG id;
    for (id = RtlEnumerateGenericTable(&Ids, TRUE); id != NULL; id = RtlEnumerateGenericTable(&Ids, FALSE))
        if (n < Max) Out[n++] = *id; else n++;
    return n == RtlNumberGenericTableElements(&Ids) ? n : ~0u;
}
