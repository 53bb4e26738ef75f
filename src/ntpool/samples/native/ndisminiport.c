/* ndisminiport.sys: the NDIS 5.1 miniport sample, compiled (the C twin of
 * ntpool/samples/ndis_miniport.py). NdisAllocateMemoryWithTag is an NDIS 5.x routine, so
 * the miniport registers as NDIS 5.1. Its receive buffers are allocated once, in
 * DriverEntry (NmRx), and reused for every frame; each send takes a small context (NmTx)
 * that is freed when the send completes. */
#include "ntddk_lite.h"

#define RECEIVE_TAG 'xRmN'  /* shows "NmRx" */
#define SEND_TAG 'xTmN'     /* shows "NmTx" */
#define RECEIVE_BUFFERS 64
#define RECEIVE_BYTES 1536  /* an Ethernet frame, rounded up */
#define SEND_BYTES 72
#define MAX_SENDS 64

typedef struct _SEND_CONTEXT {
    ULONG64 Length;
    UCHAR Reserved[SEND_BYTES - 8];
} SEND_CONTEXT, *PSEND_CONTEXT;

static NDIS_HANDLE Wrapper;
static PUCHAR FreeBuffers[RECEIVE_BUFFERS];  /* a stack */
static ULONG FreeCount;
static PUCHAR Indicated[RECEIVE_BUFFERS];    /* buffers the protocol still holds, oldest first */
static ULONG IndicatedFirst, IndicatedCount;
static PSEND_CONTEXT Sends[MAX_SENDS];       /* sends in flight, oldest first */
static ULONG SendFirst, SendCount;
static ULONG Dropped;

/* A frame arrived: copy it into a free receive buffer and indicate it up. */
__declspec(dllexport) PVOID IndicateReceive(const UCHAR *Frame, ULONG Length) {
    PUCHAR buffer;
    if (FreeCount == 0) {
        Dropped += 1;  /* no buffer: the frame is dropped, as hardware would */
        return NULL;
    }
    buffer = FreeBuffers[--FreeCount];
    NdisMoveMemory(buffer, Frame, Length < RECEIVE_BYTES ? Length : RECEIVE_BYTES);
    Indicated[(IndicatedFirst + IndicatedCount++) % RECEIVE_BUFFERS] = buffer;
    return buffer;
}

/* The protocol is done with the oldest indicated buffer (MiniportReturnPacket). */
__declspec(dllexport) VOID ReturnBuffer(void) {
    if (IndicatedCount == 0)
        return;
    FreeBuffers[FreeCount++] = Indicated[IndicatedFirst];
    IndicatedFirst = (IndicatedFirst + 1) % RECEIVE_BUFFERS;
    IndicatedCount -= 1;
}

__declspec(dllexport) NDIS_STATUS SendFrame(ULONG Length) {
    PVOID context;
    NDIS_STATUS status;
    if (SendCount == MAX_SENDS)
        return NDIS_STATUS_RESOURCES;
    status = NdisAllocateMemoryWithTag(&context, SEND_BYTES, SEND_TAG);
    if (status != NDIS_STATUS_SUCCESS)
        return status;  /* NDIS_STATUS_RESOURCES back to the protocol; nothing leaked */
    ((PSEND_CONTEXT)context)->Length = Length;
    Sends[(SendFirst + SendCount++) % MAX_SENDS] = context;
    return NDIS_STATUS_SUCCESS;
}

__declspec(dllexport) VOID SendComplete(void) {
    if (SendCount == 0)
        return;
    NdisFreeMemory(Sends[SendFirst], SEND_BYTES, 0);
    SendFirst = (SendFirst + 1) % MAX_SENDS;
    SendCount -= 1;
}

__declspec(dllexport) ULONG SendsInFlight(void) { return SendCount; }

__declspec(dllexport) ULONG DroppedFrames(void) { return Dropped; }

static VOID FreeReceiveBuffers(void) {
    while (IndicatedCount)
        ReturnBuffer();
    while (FreeCount)
        NdisFreeMemory(FreeBuffers[--FreeCount], RECEIVE_BYTES, 0);
}

static VOID NTAPI Unload(PDRIVER_OBJECT DriverObject) {
    while (SendCount)
        SendComplete();
    FreeReceiveBuffers();
}

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath) {
    NDIS_MINIPORT_CHARACTERISTICS characteristics;
    NDIS_STATUS status;
    NdisZeroMemory(&characteristics, sizeof(characteristics));
    characteristics.MajorNdisVersion = 5;
    characteristics.MinorNdisVersion = 1;
    NdisMInitializeWrapper(&Wrapper, DriverObject, RegistryPath, NULL);
    status = NdisMRegisterMiniport(Wrapper, &characteristics, sizeof(characteristics));
    if (status != NDIS_STATUS_SUCCESS)
        return status;
    while (FreeCount < RECEIVE_BUFFERS) {
        status = NdisAllocateMemoryWithTag((PVOID *)&FreeBuffers[FreeCount], RECEIVE_BYTES,
                                           RECEIVE_TAG);
        if (status != NDIS_STATUS_SUCCESS) {
            FreeReceiveBuffers();
            return NDIS_STATUS_RESOURCES;
        }
        FreeCount += 1;
    }
    DriverObject->DriverUnload = Unload;
    DbgPrint("ndisminiport: NDIS %d.%d miniport with %d receive buffers\n",
             characteristics.MajorNdisVersion, characteristics.MinorNdisVersion, RECEIVE_BUFFERS);
    return STATUS_SUCCESS;
}
