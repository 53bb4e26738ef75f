/* lifetime.sys: driver lifetime as WDM drivers guard it. DriverEntry allocates its per-driver
 * context as a driver object extension (identified by the address of DriverEntry, as drivers
 * commonly do; a second allocation under it collides), finds it again with
 * IoGetDriverObjectExtension, and keeps in it an EX_RUNDOWN_REF that guards a device. An I/O
 * work item DriverUnload queues holds one protection and releases it when it runs: the
 * unload's ExWaitForRundownProtectionRelease lets it run, then completes the run-down, and no
 * protection is granted after it. The extension goes with the driver object. Export
 * HoldProtection takes a protection nothing will release: the unload's wait never ends. */
#include "wdm_lite.h"

typedef struct _LIFETIME_CONTEXT {
    EX_RUNDOWN_REF Guard;
    PDEVICE_OBJECT Device;
    PIO_WORKITEM Item;
    ULONG Uses;
} LIFETIME_CONTEXT, *PLIFETIME_CONTEXT;

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath);

static PDRIVER_OBJECT Driver;

static PLIFETIME_CONTEXT Context(VOID) {
    return IoGetDriverObjectExtension(Driver, (PVOID)DriverEntry);
}

static VOID NTAPI ReleaseLater(PDEVICE_OBJECT DeviceObject, PVOID Parameter) {
    PLIFETIME_CONTEXT context = Parameter;
    (void)DeviceObject;
    context->Uses++;
    DbgPrint("lifetime: work item releases its protection (run-down %s)\n",
             context->Guard.Count & 1 ? "begun" : "not begun");
    ExReleaseRundownProtection(&context->Guard);
}

__declspec(dllexport) VOID HoldProtection(VOID) {
    ExAcquireRundownProtection(&Context()->Guard);
}

/* Take and give back protections; returns what the EX_RUNDOWN_REF held at each step. */
__declspec(dllexport) ULONG64 CountSteps(VOID) {
    PLIFETIME_CONTEXT context = Context();
    ULONG64 steps = 0;
    if (!ExAcquireRundownProtection(&context->Guard))
        return ~0ull;
    steps = context->Guard.Count;
    ExAcquireRundownProtectionEx(&context->Guard, 3);
    steps = steps << 8 | context->Guard.Count;
    ExReleaseRundownProtectionEx(&context->Guard, 3);
    ExReleaseRundownProtection(&context->Guard);
    return steps << 8 | context->Guard.Count;
}

static VOID NTAPI LifetimeUnload(PDRIVER_OBJECT DriverObject) {
    PLIFETIME_CONTEXT context = IoGetDriverObjectExtension(DriverObject, (PVOID)DriverEntry);
    if (ExAcquireRundownProtection(&context->Guard))
        IoQueueWorkItem(context->Item, ReleaseLater, DelayedWorkQueue, context);
    DbgPrint("lifetime: unload waits for run-down\n");
    ExWaitForRundownProtectionRelease(&context->Guard);
    DbgPrint("lifetime: run-down over after %u use(s), count %s\n", context->Uses,
             context->Guard.Count == 1 ? "1" : "a wait block");
    ExRundownCompleted(&context->Guard);
    DbgPrint("lifetime: completed (count %llu), acquire now %u\n", (ULONG64)context->Guard.Count,
             (ULONG)ExAcquireRundownProtection(&context->Guard));
    IoFreeWorkItem(context->Item);
    IoDeleteDevice(context->Device);
}

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath) {
    PLIFETIME_CONTEXT context, again;
    NTSTATUS status;
    (void)RegistryPath;
    Driver = DriverObject;
    status = IoAllocateDriverObjectExtension(DriverObject, (PVOID)DriverEntry, sizeof(*context),
                                             (PVOID *)&context);
    if (!NT_SUCCESS(status))
        return status;
    status = IoAllocateDriverObjectExtension(DriverObject, (PVOID)DriverEntry, 8, (PVOID *)&again);
    DbgPrint("lifetime: second extension %08X, %s; found %s\n", status, again ? "given" : "NULL",
             IoGetDriverObjectExtension(DriverObject, (PVOID)DriverEntry) == context ? "ours" : "another");
    ExInitializeRundownProtection(&context->Guard);
    status = IoCreateDevice(DriverObject, 0, NULL, FILE_DEVICE_UNKNOWN, 0, FALSE, &context->Device);
    if (!NT_SUCCESS(status))
        return status;
    context->Item = IoAllocateWorkItem(context->Device);
    if (context->Item == NULL) {
        IoDeleteDevice(context->Device);
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    DriverObject->DriverUnload = LifetimeUnload;
    return STATUS_SUCCESS;
}
