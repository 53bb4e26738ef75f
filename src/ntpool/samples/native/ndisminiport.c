/* ndisminiport.sys: the NDIS 5.1 miniport sample, compiled. Receive buffers come from
 * NdisAllocateMemoryWithTag (NmRx), a send context per frame (NmTx). */
#include "ntddk_lite.h"

#define RECEIVE_TAG 'xRmN'  /* shows "NmRx" */
#define SEND_TAG 'xTmN'     /* shows "NmTx" */
#define RECEIVE_BUFFERS 16
#define RECEIVE_BYTES 1514
#define SEND_BYTES 64

static NDIS_HANDLE Wrapper;
static PVOID Receive[RECEIVE_BUFFERS];

__declspec(dllexport) NDIS_STATUS SendFrame(ULONG Length) {
    PVOID context;
    NDIS_STATUS status = NdisAllocateMemoryWithTag(&context, SEND_BYTES, SEND_TAG);
    if (status != NDIS_STATUS_SUCCESS)
        return status;
    NdisZeroMemory(context, SEND_BYTES);
    *(ULONG *)context = Length;
    NdisFreeMemory(context, SEND_BYTES, 0);
    return NDIS_STATUS_SUCCESS;
}

static VOID NTAPI Unload(PDRIVER_OBJECT DriverObject) {
    int i;
    for (i = 0; i < RECEIVE_BUFFERS; i++)
        if (Receive[i])
            NdisFreeMemory(Receive[i], RECEIVE_BYTES, 0);
}

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath) {
    NDIS_MINIPORT_CHARACTERISTICS characteristics;
    NDIS_STATUS status;
    int i;
    NdisZeroMemory(&characteristics, sizeof(characteristics));
    characteristics.MajorNdisVersion = 5;
    characteristics.MinorNdisVersion = 1;
    NdisMInitializeWrapper(&Wrapper, DriverObject, RegistryPath, NULL);
    status = NdisMRegisterMiniport(Wrapper, &characteristics, sizeof(characteristics));
    if (status != NDIS_STATUS_SUCCESS)
        return status;
    for (i = 0; i < RECEIVE_BUFFERS; i++) {
        status = NdisAllocateMemoryWithTag(&Receive[i], RECEIVE_BYTES, RECEIVE_TAG);
        if (status != NDIS_STATUS_SUCCESS) {
            Unload(DriverObject);
            return status;
        }
    }
    DriverObject->DriverUnload = Unload;
    DbgPrint("ndisminiport: NDIS %d.%d miniport with %d receive buffers\n",
             characteristics.MajorNdisVersion, characteristics.MinorNdisVersion, RECEIVE_BUFFERS);
    return STATUS_SUCCESS;
}
