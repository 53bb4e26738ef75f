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
