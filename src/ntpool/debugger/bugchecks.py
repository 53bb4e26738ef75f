"""What each pool-related bug check and its parameters mean, for ``!analyze -v``.

Descriptions follow the bug check reference (reference sheet section 7). ``POOL_ARGUMENT``
says which parameter holds the pool address to examine; when a code or subcode is not
listed, the first parameter that lies in a pool is examined.
"""

from ..constants import BugCheckCode as B

DESCRIPTIONS = {
    B.IRQL_NOT_LESS_OR_EQUAL: "An attempt was made to access a pageable (or completely invalid) "
                              "address at an interrupt request level (IRQL) that is too high.",
    B.BAD_POOL_HEADER: "The pool is already corrupt at the time of the current request. This may "
                       "or may not be due to the caller.",
    B.MUST_SUCCEED_POOL_EMPTY: "No more must-succeed pool is available.",
    B.PAGE_FAULT_IN_NONPAGED_AREA: "Invalid system memory was referenced. This cannot be "
                                   "protected by try-except. Typically the address is just plain "
                                   "bad or it is pointing at freed memory.",
    B.SPECIAL_POOL_DETECTED_MEMORY_CORRUPTION: "Special pool has detected memory corruption.",
    B.BAD_POOL_CALLER: "The current thread is making a bad pool request. Typically this is at a "
                       "bad IRQL level or double freeing the same allocation, etc.",
    B.DRIVER_VERIFIER_DETECTED_VIOLATION: "A device driver attempting to corrupt the system has "
                                          "been caught. This is because the driver was specified "
                                          "in the registry as being suspect (by the "
                                          "administrator) and the kernel has enabled substantial "
                                          "checking of this driver.",
    B.DRIVER_CORRUPTED_EXPOOL: "An attempt was made to access a pageable (or completely invalid) "
                               "address at an interrupt request level (IRQL) that is too high. "
                               "This is caused by drivers that have corrupted the system pool.",
    B.PAGE_FAULT_IN_FREED_SPECIAL_POOL: "Memory was referenced after it was freed.",
    B.PAGE_FAULT_BEYOND_END_OF_ALLOCATION: "N bytes of memory was allocated and more than N bytes "
                                           "are being referenced.",
    B.DRIVER_IRQL_NOT_LESS_OR_EQUAL: "An attempt was made to access a pageable (or completely "
                                     "invalid) address at an interrupt request level (IRQL) that "
                                     "is too high. This is usually caused by drivers using "
                                     "improper addresses.",
    B.DRIVER_PORTION_MUST_BE_NONPAGED: "The system attempted to access pageable memory at a "
                                       "raised IRQL: a driver marked part of its image "
                                       "pageable that must stay resident.",
    B.SYSTEM_SCAN_AT_RAISED_IRQL_CAUGHT_IMPROPER_DRIVER_UNLOAD: "A driver unloaded without "
                                                                "cancelling pending operations "
                                                                "(a lookaside list, timer or DPC "
                                                                "left in its image), and a system "
                                                                "scan at raised IRQL found it.",
    B.DRIVER_PAGE_FAULT_IN_FREED_SPECIAL_POOL: "Memory was referenced after it was freed.",
    B.DRIVER_PAGE_FAULT_BEYOND_END_OF_ALLOCATION: "N bytes of memory was allocated and more than "
                                                  "N bytes are being referenced.",
    B.ATTEMPTED_EXECUTE_OF_NOEXECUTE_MEMORY: "An attempt was made to execute non-executable "
                                             "memory.",
    B.MANUALLY_INITIATED_CRASH: "The user manually initiated this crash dump.",
    B.MAXIMUM_WAIT_OBJECTS_EXCEEDED: "A thread waited on more objects than its wait blocks hold.",
    B.TIMER_OR_DPC_INVALID: "A kernel timer or DPC was found somewhere in memory where it is "
                            "not permitted.",
    B.DRIVER_UNLOADED_WITHOUT_CANCELLING_PENDING_OPERATIONS: "A driver unloaded without "
                                                             "cancelling pending operations "
                                                             "(timers, DPCs, worker threads).",
    B.WORKER_INVALID: "Memory that should not contain an executive worker item does, or a "
                      "currently active worker item was queued.",
    B.KERNEL_MODE_HEAP_CORRUPTION: "The kernel mode heap manager has detected corruption in a heap.",
}

_ACCESS = "0: read operation, 1: write operation, 8: execute"

# (code, subcode or None) -> the four arguments' meanings.
ARGUMENTS = {
    (B.BAD_POOL_CALLER, 0x00): ("Attempt to allocate zero bytes", "0", "Pool type",
                                "Pool tag"),
    (B.BAD_POOL_CALLER, 0x06): ("Attempt to free pool which was already freed", "Reserved",
                                "Pointer to pool header", "Pool header contents"),
    (B.BAD_POOL_CALLER, 0x07): ("Attempt to free pool which was already freed", "Reserved (source line)",
                                "Pool header contents (its first ULONG)", "Address of the block of pool being freed"),
    (B.BAD_POOL_CALLER, 0x08): ("Attempt to allocate pool at invalid IRQL", "Current IRQL",
                                "Pool type", "Size of allocation"),
    (B.BAD_POOL_CALLER, 0x09): ("Attempt to free pool at invalid IRQL", "Current IRQL",
                                "Pool type", "Address of pool"),
    (B.BAD_POOL_CALLER, 0x0A): ("Attempt to free pool with an incorrect tag",
                                "Address of the pool being freed", "Tag of the pool block",
                                "Tag being used in the call"),
    (B.BAD_POOL_CALLER, 0x40): ("Attempt to free a user-mode address to kernel pool",
                                "Starting address", "Start of system address space", "0"),
    (B.BAD_POOL_CALLER, 0x41): ("Attempt to free a non-allocated nonpaged pool address",
                                "Starting address", "Physical page frame", "Highest physical page frame"),
    (B.BAD_POOL_CALLER, 0x42): ("Attempt to free a virtual address which was never in any pool",
                                "Address being freed", "0", "0"),
    (B.BAD_POOL_CALLER, 0x50): ("Attempt to free a non-allocated paged pool address",
                                "Starting address", "Start offset, in pages, from beginning of paged pool",
                                "Size, in bytes, of paged pool"),
    (B.BAD_POOL_CALLER, 0x99): ("Attempt to free pool with invalid address (or corruption in pool header)",
                                "Address being freed", "0", "0"),
    (B.BAD_POOL_CALLER, 0x9A): ("Attempt to allocate must-succeed pool (obsolete)", "Pool type",
                                "Size of allocation, in bytes", "Allocation's pool tag"),
    (B.BAD_POOL_CALLER, 0x9B): ("Attempt to allocate pool with a tag of 0", "Pool type",
                                "Size of allocation, in bytes", "Caller's address"),
    (B.BAD_POOL_CALLER, 0x9C): ("Attempt to allocate pool with the reserved tag 'BIG '",
                                "Pool type", "Size of allocation, in bytes", "Caller's address"),
    (B.BAD_POOL_CALLER, 0x9D): ("Attempt to allocate pool with a tag that has no letter or digit",
                                "Incorrect pool tag", "Pool type", "Caller's address"),
    (B.BAD_POOL_CALLER, 0x41286): ("Attempt to free paged pool in the middle of an allocation",
                                   "Reserved", "Reserved", "Start offset, in pages, from beginning of paged pool"),
    (B.BAD_POOL_HEADER, 0x3): ("The pool freelist is corrupt", "The pool entry being checked",
                               "The read-back flink freelist value", "The read-back blink freelist value"),
    (B.BAD_POOL_HEADER, 0x5): ("Neighbouring pool headers disagree", "One of the pool entries",
                               "Reserved", "The other pool entry"),
    (B.BAD_POOL_HEADER, 0x6): ("The pool block header's previous size is too large",
                               "The pool entry", "Reserved", "The bad pool header"),
    (B.BAD_POOL_HEADER, 0x7): ("The pool block header size is corrupt", "Reserved",
                               "The pool entry", "The bad pool header"),
    (B.BAD_POOL_HEADER, 0x8): ("The pool block header size is zero", "Reserved", "Reserved",
                               "The pool entry"),
    (B.BAD_POOL_HEADER, 0x9): ("The pool block header size runs past the page", "The pool entry",
                               "Reserved", "The bad pool entry"),
    (B.BAD_POOL_HEADER, 0xA): ("The pool block was not found in the page walk", "The pool entry",
                               "Reserved", "Reserved"),
    (B.BAD_POOL_HEADER, 0x20): ("A pool block header size is corrupt (the block was overrun)",
                                "The pool entry that should have been found",
                                "The next pool entry", "Reserved"),
    (B.BAD_POOL_HEADER, 0x21): ("The data following the pool block is corrupt",
                                "The pool pointer being freed", "The number of bytes allocated",
                                "The corrupted value"),
    (B.BAD_POOL_HEADER, 0x22): ("An address being freed has no tracking entry",
                                "The address being freed", "Reserved", "Reserved"),
    (B.BAD_POOL_HEADER, 0xE): ("The pool block's ProcessBilled does not decode to a process",
                               "The pool header", "The decoded process pointer",
                               "The stored (encoded) ProcessBilled"),
    (B.MUST_SUCCEED_POOL_EMPTY, None): ("The size of the request that could not be satisfied",
                                        "The number of pages used from nonpaged pool",
                                        "The number of requests from nonpaged pool larger than PAGE_SIZE",
                                        "The number of pages available"),
    (B.PAGE_FAULT_IN_NONPAGED_AREA, None): ("Memory referenced", _ACCESS, "If non-zero, the "
                                            "instruction address which referenced the bad memory",
                                            "Reserved"),
    (B.ATTEMPTED_EXECUTE_OF_NOEXECUTE_MEMORY, None): ("Virtual address for the attempted execute",
                                                      "PTE contents", "Reserved", "Reserved"),
    (B.IRQL_NOT_LESS_OR_EQUAL, None): ("Memory referenced", "IRQL", _ACCESS,
                                       "Address which referenced memory"),
    (B.DRIVER_IRQL_NOT_LESS_OR_EQUAL, None): ("Memory referenced", "IRQL", _ACCESS,
                                              "Address which referenced memory"),
    (B.DRIVER_PORTION_MUST_BE_NONPAGED, None): ("Memory referenced", "IRQL", _ACCESS,
                                                "Address which referenced memory"),
    (B.DRIVER_UNLOADED_WITHOUT_CANCELLING_PENDING_OPERATIONS, None): (
        "Memory referenced", _ACCESS, "Address which referenced memory", "Reserved"),
    (B.SYSTEM_SCAN_AT_RAISED_IRQL_CAUGHT_IMPROPER_DRIVER_UNLOAD, None): (
        "Memory referenced", "IRQL", _ACCESS, "Address which referenced memory"),
    (B.DRIVER_CORRUPTED_EXPOOL, None): ("Memory referenced", "IRQL", "0: read, 1: write",
                                        "Address which referenced memory"),
    (B.PAGE_FAULT_IN_FREED_SPECIAL_POOL, None): ("Memory referenced", "0: read, 1: write",
                                                 "Address that referenced memory", "Reserved"),
    (B.DRIVER_PAGE_FAULT_IN_FREED_SPECIAL_POOL, None): ("Memory referenced", "0: read, 1: write",
                                                        "Address that referenced memory", "Reserved"),
    # Arg4 is Reserved (Microsoft's pages for 0xCD and 0xD6): the size is in the allocation
    (B.PAGE_FAULT_BEYOND_END_OF_ALLOCATION, None): ("Memory referenced", "0: read, 1: write",
                                                    "Address that referenced memory",
                                                    "Reserved"),
    (B.DRIVER_PAGE_FAULT_BEYOND_END_OF_ALLOCATION, None): ("Memory referenced", "0: read, 1: write",
                                                           "Address that referenced memory",
                                                           "Reserved"),
    (B.SPECIAL_POOL_DETECTED_MEMORY_CORRUPTION, None): ("Address trying to free",
                                                        "Size of the allocation / reserved",
                                                        "Corrupted value or reserved",
                                                        "Subclass of driver violation"),
    (B.DRIVER_VERIFIER_DETECTED_VIOLATION, 0x00): ("Caller is trying to allocate zero bytes",
                                                   "Current IRQL", "Pool type", "Number of bytes"),
    (B.DRIVER_VERIFIER_DETECTED_VIOLATION, 0x01): ("Caller is trying to allocate paged pool at "
                                                   "DISPATCH_LEVEL or above", "Current IRQL",
                                                   "Pool type", "Number of bytes"),
    (B.DRIVER_VERIFIER_DETECTED_VIOLATION, 0x02): ("Caller is trying to allocate nonpaged pool "
                                                   "above DISPATCH_LEVEL", "Current IRQL",
                                                   "Pool type", "Number of bytes"),
    (B.DRIVER_VERIFIER_DETECTED_VIOLATION, 0x10): ("Caller is freeing an address that was never "
                                                   "allocated", "Bad address", "Reserved", "Reserved"),
    (B.DRIVER_VERIFIER_DETECTED_VIOLATION, 0x11): ("Caller is freeing paged pool above "
                                                   "APC_LEVEL", "Current IRQL", "Pool type",
                                                   "Address of pool"),
    (B.DRIVER_VERIFIER_DETECTED_VIOLATION, 0x12): ("Caller is freeing nonpaged pool above "
                                                   "DISPATCH_LEVEL", "Current IRQL", "Pool type",
                                                   "Address of pool"),
    (B.DRIVER_VERIFIER_DETECTED_VIOLATION, 0x13): ("Caller is freeing pool that was already "
                                                   "freed", "Reserved", "Pointer to pool header",
                                                   "Pool header contents"),
    (B.DRIVER_VERIFIER_DETECTED_VIOLATION, 0x14): ("Caller is freeing pool that was already "
                                                   "freed", "Reserved", "Pointer to pool header",
                                                   "Pool header contents"),
    (B.DRIVER_VERIFIER_DETECTED_VIOLATION, 0x60): ("A driver has forgotten to free its pool "
                                                   "allocations prior to unloading",
                                                   "Paged bytes", "Nonpaged bytes",
                                                   "Total outstanding allocations"),
    (B.DRIVER_VERIFIER_DETECTED_VIOLATION, 0x62): ("A driver is unloading without freeing its "
                                                   "pool allocations", "Name of the driver",
                                                   "Reserved", "Total outstanding allocations"),
}

# (code, subcode or None) -> the 1-based parameter holding the pool address to examine.
POOL_ARGUMENT = {
    (B.BAD_POOL_CALLER, 0x06): 3, (B.BAD_POOL_CALLER, 0x07): 4, (B.BAD_POOL_CALLER, 0x09): 4,
    (B.BAD_POOL_CALLER, 0x0A): 2, (B.BAD_POOL_CALLER, 0x41): 2, (B.BAD_POOL_CALLER, 0x42): 2,
    (B.BAD_POOL_CALLER, 0x50): 2, (B.BAD_POOL_CALLER, 0x99): 2,
    (B.BAD_POOL_HEADER, 0x3): 2, (B.BAD_POOL_HEADER, 0x5): 4, (B.BAD_POOL_HEADER, 0x6): 2,
    (B.BAD_POOL_HEADER, 0x7): 3, (B.BAD_POOL_HEADER, 0x8): 4, (B.BAD_POOL_HEADER, 0x9): 2,
    (B.BAD_POOL_HEADER, 0xA): 2, (B.BAD_POOL_HEADER, 0x20): 2, (B.BAD_POOL_HEADER, 0x21): 2,
    (B.BAD_POOL_HEADER, 0x22): 2, (B.BAD_POOL_HEADER, 0xE): 2,
    (B.PAGE_FAULT_IN_NONPAGED_AREA, None): 1, (B.DRIVER_CORRUPTED_EXPOOL, None): 1,
    (B.PAGE_FAULT_IN_FREED_SPECIAL_POOL, None): 1, (B.PAGE_FAULT_BEYOND_END_OF_ALLOCATION, None): 1,
    (B.DRIVER_PAGE_FAULT_IN_FREED_SPECIAL_POOL, None): 1,
    (B.DRIVER_PAGE_FAULT_BEYOND_END_OF_ALLOCATION, None): 1,
    (B.SPECIAL_POOL_DETECTED_MEMORY_CORRUPTION, None): 1,
    (B.DRIVER_VERIFIER_DETECTED_VIOLATION, 0x10): 2, (B.DRIVER_VERIFIER_DETECTED_VIOLATION, 0x13): 3,
    (B.DRIVER_VERIFIER_DETECTED_VIOLATION, 0x11): 4, (B.DRIVER_VERIFIER_DETECTED_VIOLATION, 0x12): 4,
    (B.DRIVER_VERIFIER_DETECTED_VIOLATION, 0x14): 3,
}

# KERNEL_MODE_HEAP_CORRUPTION (0x13A): parameter 1 is the _HEAP_FAILURE_TYPE.
HEAP_FAILURES = {
    0x3: "Corrupt heap entry header", 0x4: "Several corrupt entry headers",
    0x5: "Corrupt header of a large allocation", 0x6: "Corruption looks like a buffer overrun",
    0x7: "Corruption looks like a buffer underrun", 0x8: "A free block was passed where a busy "
    "one is required", 0x9: "Invalid argument", 0xA: "Invalid allocation type",
    0xB: "Corruption looks like a use after free", 0xC: "The wrong heap was given",
    0xD: "Corrupt free list", 0xE: "Corrupt list (other than the free list)",
    0xF: "A free block was passed where a busy one is required (LFH bitmap)",
    0x10: "Corrupt LFH bitmap", 0x11: "LFH double free", 0x12: "Corrupt VS subsegment",
    0x13: "NULL heap handle", 0x14: "Requested allocation above the allocation limit",
    0x15: "Commit limit exceeded", 0x16: "Invalid VA manager query",
}
for _failure, _text in HEAP_FAILURES.items():
    ARGUMENTS[(B.KERNEL_MODE_HEAP_CORRUPTION, _failure)] = (
        f"Type of corruption detected: {_text}", "Address of the heap that reported the corruption",
        "Address at which the corruption was detected", "Reserved")
    POOL_ARGUMENT[(B.KERNEL_MODE_HEAP_CORRUPTION, _failure)] = 3

# Codes whose first parameter is a subcode.
SUBCODED = {B.BAD_POOL_CALLER, B.BAD_POOL_HEADER, B.DRIVER_VERIFIER_DETECTED_VIOLATION,
            B.KERNEL_MODE_HEAP_CORRUPTION}

# (code, subcode) -> parameters (1-based) that hold pool tags.
TAG_ARGUMENTS = {
    (B.BAD_POOL_CALLER, 0x00): (4,), (B.BAD_POOL_CALLER, 0x0A): (3, 4),
    (B.BAD_POOL_CALLER, 0x9A): (4,), (B.BAD_POOL_CALLER, 0x9D): (2,),
}


def key_of(code: int, parameters) -> tuple:
    return (code, parameters[0]) if code in SUBCODED else (code, None)


def arguments(code: int, parameters) -> tuple[str, str, str, str]:
    """What each parameter means; the first is the subcode's meaning when there is one."""
    return ARGUMENTS.get(key_of(code, parameters), ("", "", "", ""))


def pool_argument(code: int, parameters) -> int | None:
    return POOL_ARGUMENT.get(key_of(code, parameters))


def tag_arguments(code: int, parameters) -> tuple:
    return TAG_ARGUMENTS.get(key_of(code, parameters), ())
