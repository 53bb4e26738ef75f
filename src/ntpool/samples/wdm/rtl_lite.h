/* rtl_lite.h: the run-time library's slice of wdm.h/ntstrsafe that rtl.c uses (bitmaps, time,
 * the printf family, generic tables), on top of wdm_lite.h. Kept apart from wdm_lite.h so
 * that adding to it changes no other sample's build. */
#ifndef RTL_LITE_H
#define RTL_LITE_H
#include "wdm_lite.h"

typedef struct _RTL_BITMAP {  /* x64: 16 bytes */
    ULONG SizeOfBitMap;
    PULONG Buffer;
} RTL_BITMAP, *PRTL_BITMAP;
NTSYSAPI VOID NTAPI RtlInitializeBitMap(PRTL_BITMAP BitMapHeader, PULONG BitMapBuffer,
                                        ULONG SizeOfBitMap);
NTSYSAPI VOID NTAPI RtlClearAllBits(PRTL_BITMAP BitMapHeader);
NTSYSAPI VOID NTAPI RtlSetAllBits(PRTL_BITMAP BitMapHeader);
NTSYSAPI VOID NTAPI RtlClearBits(PRTL_BITMAP BitMapHeader, ULONG StartingIndex, ULONG NumberToClear);
NTSYSAPI VOID NTAPI RtlSetBits(PRTL_BITMAP BitMapHeader, ULONG StartingIndex, ULONG NumberToSet);
NTSYSAPI VOID NTAPI RtlClearBit(PRTL_BITMAP BitMapHeader, ULONG BitNumber);
NTSYSAPI VOID NTAPI RtlSetBit(PRTL_BITMAP BitMapHeader, ULONG BitNumber);
NTSYSAPI BOOLEAN NTAPI RtlTestBit(PRTL_BITMAP BitMapHeader, ULONG BitNumber);
NTSYSAPI BOOLEAN NTAPI RtlAreBitsClear(PRTL_BITMAP BitMapHeader, ULONG StartingIndex, ULONG Length);
NTSYSAPI BOOLEAN NTAPI RtlAreBitsSet(PRTL_BITMAP BitMapHeader, ULONG StartingIndex, ULONG Length);
NTSYSAPI ULONG NTAPI RtlFindClearBits(PRTL_BITMAP BitMapHeader, ULONG NumberToFind, ULONG HintIndex);
NTSYSAPI ULONG NTAPI RtlFindSetBits(PRTL_BITMAP BitMapHeader, ULONG NumberToFind, ULONG HintIndex);
NTSYSAPI ULONG NTAPI RtlFindClearBitsAndSet(PRTL_BITMAP BitMapHeader, ULONG NumberToFind,
                                            ULONG HintIndex);
NTSYSAPI ULONG NTAPI RtlFindSetBitsAndClear(PRTL_BITMAP BitMapHeader, ULONG NumberToFind,
                                            ULONG HintIndex);
NTSYSAPI ULONG NTAPI RtlNumberOfClearBits(PRTL_BITMAP BitMapHeader);
NTSYSAPI ULONG NTAPI RtlNumberOfSetBits(PRTL_BITMAP BitMapHeader);
NTSYSAPI ULONG NTAPI RtlFindFirstRunClear(PRTL_BITMAP BitMapHeader, PULONG StartingIndex);
NTSYSAPI ULONG NTAPI RtlFindNextForwardRunClear(PRTL_BITMAP BitMapHeader, ULONG FromIndex,
                                                PULONG StartingRunIndex);

/* Time (KeQueryTickCount and KeQuerySystemTime are wdm.h's x64 macros over KUSER_SHARED_DATA) */
typedef short CSHORT;
typedef ULONG64 *PULONG64;
typedef struct _TIME_FIELDS {
    CSHORT Year, Month, Day, Hour, Minute, Second, Milliseconds, Weekday;
} TIME_FIELDS, *PTIME_FIELDS;
#define KI_USER_SHARED_DATA 0xFFFFF78000000000ULL
#define SharedSystemTime (KI_USER_SHARED_DATA + 0x14)
#define SharedTickCount (KI_USER_SHARED_DATA + 0x320)
#define KeQuerySystemTime(CurrentTime) \
    (*((PULONG64)(CurrentTime)) = *((volatile ULONG64 *)(SharedSystemTime)))
#define KeQueryTickCount(CurrentCount) \
    (*((PULONG64)(CurrentCount)) = *((volatile ULONG64 *)(SharedTickCount)))
NTSYSAPI VOID NTAPI RtlTimeToTimeFields(PLARGE_INTEGER Time, PTIME_FIELDS TimeFields);
NTSYSAPI BOOLEAN NTAPI RtlTimeFieldsToTime(PTIME_FIELDS TimeFields, PLARGE_INTEGER Time);
NTSYSAPI VOID NTAPI ExSystemTimeToLocalTime(PLARGE_INTEGER SystemTime, PLARGE_INTEGER LocalTime);
NTSYSAPI VOID NTAPI ExLocalTimeToSystemTime(PLARGE_INTEGER LocalTime, PLARGE_INTEGER SystemTime);
NTSYSAPI ULONG NTAPI RtlRandom(PULONG Seed);
NTSYSAPI ULONG NTAPI RtlRandomEx(PULONG Seed);

/* The printf family ntoskrnl exports (_snprintf is ntddk_lite.h's), and ntstrsafe's way of
 * using it: RtlStringCbVPrintfW, an inline in ntstrsafe.h over _vsnwprintf. */
typedef __builtin_va_list va_list;
#define va_start(list, last) __builtin_va_start(list, last)
#define va_end(list) __builtin_va_end(list)
#define STATUS_BUFFER_OVERFLOW ((NTSTATUS)0x80000005L)
#define STATUS_INVALID_PARAMETER ((NTSTATUS)0xC000000DL)
#define NTSTRSAFE_MAX_CCH 2147483647
NTSYSAPI INT __cdecl _snwprintf(PWSTR Buffer, SIZE_T Count, PCWSTR Format, ...);
NTSYSAPI INT __cdecl _vsnprintf(char *Buffer, SIZE_T Count, PCSTR Format, va_list ArgList);
NTSYSAPI INT __cdecl _vsnwprintf(PWSTR Buffer, SIZE_T Count, PCWSTR Format, va_list ArgList);
NTSYSAPI INT __cdecl sprintf(char *Buffer, PCSTR Format, ...);
NTSYSAPI INT __cdecl swprintf(PWSTR Buffer, PCWSTR Format, ...);
NTSYSAPI INT __cdecl vsprintf(char *Buffer, PCSTR Format, va_list ArgList);
FORCEINLINE NTSTATUS RtlStringCbVPrintfW(PWSTR Dest, SIZE_T CbDest, PCWSTR Format, va_list Args) {
    SIZE_T cch = CbDest / sizeof(WCHAR);
    INT written;
    if (cch == 0 || cch > NTSTRSAFE_MAX_CCH)
        return STATUS_INVALID_PARAMETER;
    written = _vsnwprintf(Dest, cch - 1, Format, Args);
    if (written < 0 || (SIZE_T)written > cch - 1) {
        Dest[cch - 1] = 0;  /* truncated: terminated at the end */
        return STATUS_BUFFER_OVERFLOW;
    }
    if ((SIZE_T)written == cch - 1)
        Dest[cch - 1] = 0;
    return STATUS_SUCCESS;
}
FORCEINLINE NTSTATUS RtlStringCbPrintfW(PWSTR Dest, SIZE_T CbDest, PCWSTR Format, ...) {
    va_list args;
    NTSTATUS status;
    va_start(args, Format);
    status = RtlStringCbVPrintfW(Dest, CbDest, Format, args);
    va_end(args);
    return status;
}

/* Generic tables, the AVL form (ntddk.h) */
typedef ULONG CLONG;
typedef struct _RTL_BALANCED_LINKS {  /* x64: 0x20 bytes */
    struct _RTL_BALANCED_LINKS *Parent, *LeftChild, *RightChild;
    CHAR Balance;
    UCHAR Reserved[3];
} RTL_BALANCED_LINKS, *PRTL_BALANCED_LINKS;
typedef enum _RTL_GENERIC_COMPARE_RESULTS {
    GenericLessThan, GenericGreaterThan, GenericEqual
} RTL_GENERIC_COMPARE_RESULTS;
struct _RTL_AVL_TABLE;
typedef RTL_GENERIC_COMPARE_RESULTS (NTAPI *PRTL_AVL_COMPARE_ROUTINE)(struct _RTL_AVL_TABLE *Table,
                                                                     PVOID FirstStruct, PVOID SecondStruct);
typedef PVOID (NTAPI *PRTL_AVL_ALLOCATE_ROUTINE)(struct _RTL_AVL_TABLE *Table, CLONG ByteSize);
typedef VOID (NTAPI *PRTL_AVL_FREE_ROUTINE)(struct _RTL_AVL_TABLE *Table, PVOID Buffer);
typedef struct _RTL_AVL_TABLE {  /* x64: 0x68 bytes */
    RTL_BALANCED_LINKS BalancedRoot;
    PVOID OrderedPointer;
    ULONG WhichOrderedElement;
    ULONG NumberGenericTableElements;
    ULONG DepthOfTree;
    PRTL_BALANCED_LINKS RestartKey;
    ULONG DeleteCount;
    PRTL_AVL_COMPARE_ROUTINE CompareRoutine;
    PRTL_AVL_ALLOCATE_ROUTINE AllocateRoutine;
    PRTL_AVL_FREE_ROUTINE FreeRoutine;
    PVOID TableContext;
} RTL_AVL_TABLE, *PRTL_AVL_TABLE;
NTSYSAPI VOID NTAPI RtlInitializeGenericTableAvl(PRTL_AVL_TABLE Table, PRTL_AVL_COMPARE_ROUTINE CompareRoutine,
        PRTL_AVL_ALLOCATE_ROUTINE AllocateRoutine, PRTL_AVL_FREE_ROUTINE FreeRoutine, PVOID TableContext);
NTSYSAPI PVOID NTAPI RtlInsertElementGenericTableAvl(PRTL_AVL_TABLE Table, PVOID Buffer, CLONG BufferSize,
                                                     BOOLEAN *NewElement);
NTSYSAPI PVOID NTAPI RtlLookupElementGenericTableAvl(PRTL_AVL_TABLE Table, PVOID Buffer);
NTSYSAPI BOOLEAN NTAPI RtlDeleteElementGenericTableAvl(PRTL_AVL_TABLE Table, PVOID Buffer);
NTSYSAPI PVOID NTAPI RtlEnumerateGenericTableAvl(PRTL_AVL_TABLE Table, BOOLEAN Restart);
NTSYSAPI PVOID NTAPI RtlEnumerateGenericTableWithoutSplayingAvl(PRTL_AVL_TABLE Table, PVOID *RestartKey);
NTSYSAPI PVOID NTAPI RtlGetElementGenericTableAvl(PRTL_AVL_TABLE Table, ULONG I);
NTSYSAPI ULONG NTAPI RtlNumberGenericTableElementsAvl(PRTL_AVL_TABLE Table);
NTSYSAPI BOOLEAN NTAPI RtlIsGenericTableEmptyAvl(PRTL_AVL_TABLE Table);

/* Generic tables, the splay-tree form (ntddk.h) */
typedef struct _RTL_SPLAY_LINKS {  /* x64: 0x18 bytes */
    struct _RTL_SPLAY_LINKS *Parent, *LeftChild, *RightChild;
} RTL_SPLAY_LINKS, *PRTL_SPLAY_LINKS;
struct _RTL_GENERIC_TABLE;
typedef RTL_GENERIC_COMPARE_RESULTS (NTAPI *PRTL_GENERIC_COMPARE_ROUTINE)(
        struct _RTL_GENERIC_TABLE *Table, PVOID FirstStruct, PVOID SecondStruct);
typedef PVOID (NTAPI *PRTL_GENERIC_ALLOCATE_ROUTINE)(struct _RTL_GENERIC_TABLE *Table, CLONG ByteSize);
typedef VOID (NTAPI *PRTL_GENERIC_FREE_ROUTINE)(struct _RTL_GENERIC_TABLE *Table, PVOID Buffer);
typedef struct _RTL_GENERIC_TABLE {  /* x64: 0x48 bytes */
    PRTL_SPLAY_LINKS TableRoot;
    LIST_ENTRY InsertOrderList;
    PLIST_ENTRY OrderedPointer;
    ULONG WhichOrderedElement;
    ULONG NumberGenericTableElements;
    PRTL_GENERIC_COMPARE_ROUTINE CompareRoutine;
    PRTL_GENERIC_ALLOCATE_ROUTINE AllocateRoutine;
    PRTL_GENERIC_FREE_ROUTINE FreeRoutine;
    PVOID TableContext;
} RTL_GENERIC_TABLE, *PRTL_GENERIC_TABLE;
NTSYSAPI VOID NTAPI RtlInitializeGenericTable(PRTL_GENERIC_TABLE Table, PRTL_GENERIC_COMPARE_ROUTINE CompareRoutine,
        PRTL_GENERIC_ALLOCATE_ROUTINE AllocateRoutine, PRTL_GENERIC_FREE_ROUTINE FreeRoutine, PVOID TableContext);
NTSYSAPI PVOID NTAPI RtlInsertElementGenericTable(PRTL_GENERIC_TABLE Table, PVOID Buffer, CLONG BufferSize,
                                                  BOOLEAN *NewElement);
NTSYSAPI PVOID NTAPI RtlLookupElementGenericTable(PRTL_GENERIC_TABLE Table, PVOID Buffer);
NTSYSAPI BOOLEAN NTAPI RtlDeleteElementGenericTable(PRTL_GENERIC_TABLE Table, PVOID Buffer);
NTSYSAPI PVOID NTAPI RtlGetElementGenericTable(PRTL_GENERIC_TABLE Table, ULONG I);
NTSYSAPI ULONG NTAPI RtlNumberGenericTableElements(PRTL_GENERIC_TABLE Table);
NTSYSAPI PVOID NTAPI RtlEnumerateGenericTable(PRTL_GENERIC_TABLE Table, BOOLEAN Restart);

#endif
