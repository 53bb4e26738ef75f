"""Driver Verifier's pool options, per driver, named after verifier.exe's.

``k.verifier.enable("buggy.sys", special_pool=True, pool_tracking=True, ...)`` turns options
on for a driver (loaded or not yet). While any driver is verified the allocator's
allocation fast path is off and allocations pass through ``DriverVerifier.check_allocate``
/ ``allocate`` (the allocator's ``PoolLayer``), which hand the ones from verified drivers to
the options, except those it only watches: ``lane`` lets the allocator serve a request of a
driver not verified, or of one verified with pool tracking alone whose tag passed the tag
stops, as its fast path would (``record`` then keeps the tracking record). The free fast
path stays on (a chunk it frees meets none of ``check_free``'s stops) and tells ``forget``;
every other free passes through ``check_free`` / ``free``. The options listen to the
machine's events (``ntpool.hooks``) only while they are on, so nothing is paid while the
verifier is off.
"""

from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from enum import IntFlag

from ..constants import (
    BASE_POOL_TYPE_MASK,
    MUST_SUCCEED_POOL_TYPE_MASK,
    PAGE_SIZE,
    BadPoolCaller,
    BugCheckCode,
    VerifierStop,
)
from ..machine.irql import pool_usable_at
from ..hooks import DriverUnloading, IrqlRaised, attach_to_every_kernel
from ..pool.checks import header_ulong
from ..pool.descriptor import PAGE_SMALL
from ..pool.layout import BLOCK, is_allocated
from ..tags import BIG_TAG, PROTECTED_POOL, display, from_display, has_letter_or_digit, is_hex_tag
from .low_resources import LowResourcesSimulation, SystematicLowResources
from .special_pool import SpecialPool
from .tracking import PoolTracking
from .uninitialized import UninitializedMemoryTracking


# 'BIG ' is reserved for the kernel's big-page entries. The kernel's literal is ' GIB' (shown
# "BIG "); a driver that writes 'BIG ' in its source gets " GIB" in memory. Both are refused.
RESERVED_TAGS = frozenset({BIG_TAG, from_display(" GIB")})


DRIVER_VERIFIER_DETECTED_VIOLATION = BugCheckCode.DRIVER_VERIFIER_DETECTED_VIOLATION

# What DriverVerifier._site_options.get gives for a site not looked at yet (None is a site's
# answer: no verified driver's).
_UNRESOLVED = object()


class VerifierFlags(IntFlag):
    """verifier.exe /flags values (the last is ntpool's own)."""

    SPECIAL_POOL = 0x1
    FORCE_IRQL_CHECKING = 0x2
    LOW_RESOURCES_SIMULATION = 0x4
    POOL_TRACKING = 0x8
    SYSTEMATIC_LOW_RESOURCES_SIMULATION = 0x40000
    UNINITIALIZED_MEMORY_DISCLOSURE = 0x1_0000_0000  # ntpool's: Bochspwn-style taint tracking


# The flags as plain ints, for the tests made on every allocation.
_SPECIAL_POOL = int(VerifierFlags.SPECIAL_POOL)
_LOW_RESOURCES = int(VerifierFlags.LOW_RESOURCES_SIMULATION)
_POOL_TRACKING = int(VerifierFlags.POOL_TRACKING)
_SYSTEMATIC = int(VerifierFlags.SYSTEMATIC_LOW_RESOURCES_SIMULATION)
_UNINITIALIZED = int(VerifierFlags.UNINITIALIZED_MEMORY_DISCLOSURE)
# The options whose verified requests the allocator's lane may serve (``lane``): each only
# observes (a record of the allocation, a shadow of its bytes, IRQL raises), and of those
# the ones that keep something of each allocation (``record``).
_OBSERVE_ONLY = _POOL_TRACKING | _UNINITIALIZED | int(VerifierFlags.FORCE_IRQL_CHECKING)
_RECORDED = _POOL_TRACKING | _UNINITIALIZED


@dataclass
class DriverOptions:
    name: str
    flags: VerifierFlags = VerifierFlags(0)
    special_pool_tags: tuple = ()  # wildcards on the tag as tools show it; empty: every tag
    special_pool_sizes: tuple | None = None  # (smallest, largest) request in bytes
    special_pool_underruns: bool = False
    fault_probability: float = 0.06
    fault_seed: int = 0
    fault_tags: tuple = ()
    fault_delay: int = 0  # allocations let through before injection starts
    extras: dict = field(default_factory=dict)

    @property
    def bits(self) -> int:
        """``flags`` as a plain int (IntFlag's ``&`` costs about a microsecond a test)."""
        flags = self.flags
        if flags is not self._bits_of:
            self._bits_of, self._bits = flags, int(flags)
        return self._bits

    _bits_of = None
    _bits = 0

    @property
    def lane_keeps(self) -> int | None:
        """``DriverVerifier.lane``'s answer for these options once the tag is checked: the
        bits of the options whose record the lane keeps, or None when one of the options
        needs the checks. Made once per ``flags`` (the test of a 33-bit mask's complement,
        a negative big int, costs about 200 ns)."""
        flags = self.flags
        if flags is not self._lane_of:
            bits = int(flags)
            self._lane_of, self._lane = flags, None if bits & ~_OBSERVE_ONLY else bits & _RECORDED
        return self._lane

    _lane_of = None
    _lane = None


class DriverVerifier:
    def __init__(self, kernel):
        self.kernel = kernel
        self.options: dict[str, DriverOptions] = {}
        self.special_pool = SpecialPool(kernel)
        self.tracking = PoolTracking(kernel)
        self.low_resources = LowResourcesSimulation(kernel)
        self.systematic = SystematicLowResources(kernel)
        self.uninitialized = UninitializedMemoryTracking(kernel, self._verifies_disclosure)
        self._site_options: dict[int, DriverOptions | None] = {}
        # Tag values that passed check_allocate's three tag stops: a pure function of the
        # value, so each is checked once.
        self._good_tags: set[int] = set()
        kernel.hooks.subscribe(DriverUnloading, self._on_unload)

    # --- turning options on and off --------------------------------------------------------

    def enable(self, driver: str, *, special_pool: bool = False, pool_tracking: bool = False,
               low_resources: bool = False, systematic_low_resources: bool = False,
               force_irql_checking: bool = False, uninitialized_memory: bool = False,
               flags: int = 0, special_pool_tags=(), special_pool_sizes=None,
               special_pool_underruns: bool = False, fault_probability: float = 0.06,
               fault_seed: int = 0, fault_tags=(), fault_delay: int = 0) -> DriverOptions:
        """Verify ``driver`` ("name.sys"; wildcards allowed) with the options named."""
        name = _driver_pattern(driver)
        chosen = VerifierFlags(_checked_flags(flags))
        for wanted, flag in ((special_pool, VerifierFlags.SPECIAL_POOL),
                             (pool_tracking, VerifierFlags.POOL_TRACKING),
                             (low_resources, VerifierFlags.LOW_RESOURCES_SIMULATION),
                             (systematic_low_resources, VerifierFlags.SYSTEMATIC_LOW_RESOURCES_SIMULATION),
                             (force_irql_checking, VerifierFlags.FORCE_IRQL_CHECKING),
                             (uninitialized_memory, VerifierFlags.UNINITIALIZED_MEMORY_DISCLOSURE)):
            if wanted:
                chosen |= flag
        if not chosen:
            raise ValueError("enable() needs at least one verifier option")
        if not 0.0 <= fault_probability <= 1.0:
            raise ValueError(f"fault_probability must be between 0 and 1, got {fault_probability}")
        if not isinstance(fault_delay, int) or fault_delay < 0:
            raise ValueError(f"fault_delay must be a non-negative number of allocations, got {fault_delay!r}")
        if special_pool_sizes is not None:
            low, high = special_pool_sizes
            if not 0 <= low <= high:
                raise ValueError(f"special_pool_sizes must be (smallest, largest), got {special_pool_sizes!r}")
        options = DriverOptions(name, chosen, tuple(_as_patterns(special_pool_tags)),
                                special_pool_sizes, special_pool_underruns, fault_probability,
                                fault_seed, tuple(_as_patterns(fault_tags)), fault_delay)
        self.options[name] = options
        self.low_resources.configure(options)
        self._changed()
        return options

    def disable(self, driver: str | None = None) -> None:
        if driver is None:
            self.options.clear()
        else:
            self.options.pop(_driver_pattern(driver), None)
        self._changed()

    @property
    def active(self) -> bool:
        return bool(self.options)

    def _changed(self) -> None:
        self._site_options.clear()
        kernel = self.kernel
        kernel.pool.set_layer(self if self.options else None)
        # Windows 7 turns delayed pool frees off on a machine booted with Driver Verifier
        # (WRK InitializePool): the verifier's checks then see every free as it happens.
        for pool in getattr(kernel.pool, "pools", ()):
            if not hasattr(pool, "delay_frees"):
                continue
            if self.options:
                pool.deferred_free()
                pool.delay_frees = False
            else:
                pool.delay_frees = kernel.delayed_frees_at_boot
        if self.options and kernel.minimum_lookaside_depth:
            # Verifier turns lookaside lists off so drivers' problems can be isolated (WRK
            # lookasid.c; ExDisableAllLookasideLists): until the machine restarts.
            kernel.disable_all_lookaside_lists()
        self.special_pool.install(self.options_with(VerifierFlags.SPECIAL_POOL) != [])
        self.uninitialized.install(self.options_with(VerifierFlags.UNINITIALIZED_MEMORY_DISCLOSURE) != [])
        if self.options_with(VerifierFlags.FORCE_IRQL_CHECKING):
            kernel.hooks.subscribe(IrqlRaised, self._trim_on_raise)
        else:
            kernel.hooks.unsubscribe(IrqlRaised, self._trim_on_raise)

    def options_with(self, flag: VerifierFlags) -> list[DriverOptions]:
        return [o for o in self.options.values() if o.flags & flag]

    def _verifies_disclosure(self, driver_name: str) -> bool:
        options = self.options_for_driver(driver_name) if driver_name else None
        return bool(options and options.flags & VerifierFlags.UNINITIALIZED_MEMORY_DISCLOSURE)

    def options_for_driver(self, driver_name: str) -> DriverOptions | None:
        lowered = driver_name.lower()
        for pattern, options in self.options.items():
            if fnmatchcase(lowered, pattern):
                return options
        return None

    def options_for_site(self, site: int) -> DriverOptions | None:
        """The options of the driver whose call site ``site`` is (None: no verified driver's).
        The hot paths look in ``_site_options`` themselves and call this for a new site."""
        try:
            return self._site_options[site]
        except KeyError:
            pass
        owner = self.kernel.call_sites.owner(site)
        options = self.options_for_driver(owner.name) if owner else None
        self._site_options[site] = options
        return options

    def _trim_on_raise(self, event: IrqlRaised) -> None:
        """Force IRQL checking: when a verified driver raises IRQL to DISPATCH_LEVEL or
        above (a spin lock included), all pageable memory leaves the working set, so a
        touch of paged pool there faults at once instead of only when memory is short."""
        if event.new < 2:
            return
        kernel = self.kernel
        options = self.options_for_site(kernel.call_sites.site_of_caller())
        if options is not None and options.flags & VerifierFlags.FORCE_IRQL_CHECKING:
            kernel.page_out()

    # --- the allocator's PoolLayer ----------------------------------------------------------

    def check_allocate(self, pool_type: int, number_of_bytes: int, tag: int, site: int) -> None:
        """A verified driver's request, checked as Driver Verifier checks it before the pool
        sees it (VeAllocatePoolWithTagPriority, ExAllocatePoolSanityChecks): the tag stops
        (0xC2 0x9B / 0x9C / 0x9D, the caller's address last), then 0xC4's own pool stops
        (0x00 zero bytes, 0x01 / 0x02 bad IRQL), then must-succeed (0xC2 0x9A)."""
        options = self._site_options.get(site, _UNRESOLVED)
        if options is _UNRESOLVED:
            options = self.options_for_site(site)
        if options is None:
            return
        kernel = self.kernel
        if tag not in self._good_tags:
            self._check_tag(pool_type, number_of_bytes, tag, site)
            self._good_tags.add(tag)
        irql = kernel.pool.irql
        if number_of_bytes == 0:
            kernel.KeBugCheckEx(BugCheckCode.DRIVER_VERIFIER_DETECTED_VIOLATION,
                                VerifierStop.ZERO_BYTES, irql, pool_type, 0,
                                detail="zero-byte pool allocation by a verified driver")
        paged = pool_type & BASE_POOL_TYPE_MASK
        if not pool_usable_at(irql, paged):
            stop = VerifierStop.ALLOCATE_PAGED_AT_BAD_IRQL if paged else \
                VerifierStop.ALLOCATE_NONPAGED_AT_BAD_IRQL
            kernel.KeBugCheckEx(BugCheckCode.DRIVER_VERIFIER_DETECTED_VIOLATION, stop, irql,
                                pool_type, number_of_bytes,
                                detail=f"allocation of {'paged' if paged else 'nonpaged'} pool "
                                       f"at IRQL {irql} by a verified driver")
        if pool_type & MUST_SUCCEED_POOL_TYPE_MASK:
            kernel.KeBugCheckEx(BugCheckCode.BAD_POOL_CALLER, BadPoolCaller.MUST_SUCCEED, pool_type,
                                number_of_bytes, tag,
                                detail="must-succeed pool requested by a verified driver")

    def _check_tag(self, pool_type: int, number_of_bytes: int, tag: int, site: int) -> None:
        """check_allocate's tag stops: 0 (0xC2 0x9B), 'BIG ' (0x9C), no letter or digit (0x9D)."""
        kernel = self.kernel
        caller = kernel.call_sites.table[site].address if site else 0
        bare = tag & ~PROTECTED_POOL
        if bare == 0:
            kernel.KeBugCheckEx(BugCheckCode.BAD_POOL_CALLER, BadPoolCaller.TAG_ZERO, pool_type,
                                number_of_bytes, caller, detail="allocation with pool tag 0")
        if bare in RESERVED_TAGS:
            kernel.KeBugCheckEx(BugCheckCode.BAD_POOL_CALLER, BadPoolCaller.TAG_BIG, pool_type,
                                number_of_bytes, caller,
                                detail="allocation with the reserved pool tag 'BIG '")
        if not has_letter_or_digit(bare):
            kernel.KeBugCheckEx(BugCheckCode.BAD_POOL_CALLER, BadPoolCaller.TAG_NO_ALNUM, tag,
                                pool_type, caller,
                                detail=f"pool tag {tag:#010x} has no letter or digit")

    def check_free(self, address: int, site: int) -> None:
        """A verified driver's free, checked as Driver Verifier checks it before the pool
        does (ExFreePoolSanityChecks): 0xC4 0x10 for an address no allocation returned,
        0x11 / 0x12 at a bad IRQL, 0x13 for a chunk already freed."""
        options = self._site_options.get(site, _UNRESOLVED)
        if options is _UNRESOLVED:
            options = self.options_for_site(site)
        if options is None or self.special_pool.region_of(address) is not None:
            return  # (special pool's free checks its own)
        kernel = self.kernel
        allocator = kernel.pool
        pool = allocator.pool_at(address)
        stop = DRIVER_VERIFIER_DETECTED_VIOLATION
        if pool is None:
            kernel.KeBugCheckEx(stop, VerifierStop.FREE_BAD_ADDRESS, address, 0, 0,
                                detail=f"free of {address:#x}, which no allocation returned")
        irql = allocator.irql
        if not pool_usable_at(irql, pool.base_type):
            code = VerifierStop.FREE_PAGED_AT_BAD_IRQL if pool.base_type == 1 else \
                VerifierStop.FREE_NONPAGED_AT_BAD_IRQL
            kernel.KeBugCheckEx(stop, code, irql, pool.base_type, address,
                                detail=f"free of {pool.name} at IRQL {irql} by a verified driver")
        kind = pool.page_kind_of(address)
        if not address & (PAGE_SIZE - 1) and address in pool.big_pages:
            return  # big pages, or (segment heap) a VS chunk holding a big allocation
        if kind != PAGE_SMALL or address & (BLOCK - 1) or not address & (PAGE_SIZE - BLOCK):
            kernel.KeBugCheckEx(stop, VerifierStop.FREE_BAD_ADDRESS, address, 0, 0,
                                detail=f"free of {address:#x}, which no allocation returned")
        header = address - BLOCK
        # The header's first four bytes, read where the pool code reads them (a paged-out
        # page faults in: the IRQL was checked above).
        first = header_ulong(allocator.mem, pool._pa(header, False, irql))
        if not is_allocated((first >> 24) & 0xFF):
            kernel.KeBugCheckEx(stop, VerifierStop.DOUBLE_FREE, 0, header, first,
                                detail=f"{address:#x} was already freed (by a verified driver)")

    def allocate(self, pool, number_of_bytes: int, tag: int, site: int, aligned: bool = False,
                 contiguous=None):
        options = self._site_options.get(site, _UNRESOLVED)
        if options is _UNRESOLVED:
            options = self.options_for_site(site)
        if options is None:
            return None
        flags = options.bits
        if flags & _SYSTEMATIC and self.systematic.should_fail(site):
            return 0
        if flags & _LOW_RESOURCES and self.low_resources.should_fail(options, tag, site):
            return 0
        address = 0
        if flags & _SPECIAL_POOL and not aligned and contiguous is None and \
                self.special_pool.wants(options, number_of_bytes, tag):
            address = self.special_pool.allocate(pool, number_of_bytes, tag, site,
                                                 options.special_pool_underruns)
        if not address:
            allocator = self.kernel.pool
            address = allocator.allocate_plain(pool, number_of_bytes, tag, site, aligned) \
                if contiguous is None else \
                allocator.allocate_contiguous_plain(pool, number_of_bytes, tag, site, contiguous)
        if address:
            if flags & _POOL_TRACKING:
                self.tracking.record(address, pool.base_type, number_of_bytes, tag, site)
            if flags & _UNINITIALIZED:
                self.uninitialized.track(address, number_of_bytes, tag, site)
        return address

    def free(self, address: int, tag: int | None) -> bool:
        self.forget(address)
        return self.special_pool.free(address, tag)

    # --- what lets the allocator keep its fast paths for calls the verifier only watches ---

    def lane(self, site: int, tag: int) -> int | None:
        """For a request the allocator's fast path would serve (a small size, a pool type
        and IRQL that need no check): 0 when there is nothing to do (the caller is not
        verified, or only with IRQL checking, which acts on IRQL raises); for a caller
        verified with nothing but options that only observe (pool tracking, uninitialized
        memory, IRQL checking) whose tag has passed the tag stops, which of the first two
        ``record`` keeps (their VerifierFlags bits); None when the request must meet the
        checks and options (``check_allocate``, ``allocate``)."""
        options = self._site_options.get(site, _UNRESOLVED)
        if options is _UNRESOLVED:
            options = self.options_for_site(site)
        if options is None:
            return 0
        return options.lane_keeps if tag in self._good_tags else None

    def record(self, address: int, base_type: int, number_of_bytes: int, tag: int,
               site: int, kept: int) -> None:
        """What ``allocate`` keeps of an allocation for the options in ``kept`` (``lane``'s
        answer): the pool-tracking record, the uninitialized-memory shadow."""
        if kept & _POOL_TRACKING:
            self.tracking.record(address, base_type, number_of_bytes, tag, site)
        if kept & _UNINITIALIZED:
            self.uninitialized.track(address, number_of_bytes, tag, site)

    def forget(self, address: int) -> None:
        """``address`` was freed (the allocator's free fast path tells this for each chunk
        it frees: such a free meets none of check_free's stops). With Verifier on, every
        free is checked for timers, DPCs and work items still active in the block (the
        kernel's ``check_free_for_deferred``; nothing to look at unless some are)."""
        kernel = self.kernel
        if kernel.timers or kernel.deferred_queued:
            kernel.check_free_for_deferred(address, self._block_size(address))
        # Each option's record of it, when the option keeps any (a call less for one that
        # is off): the uninitialized-memory checker's SystemBuffers are shadowed too.
        if self.tracking.records:
            self.tracking.forget(address)
        if self.uninitialized.shadows:
            self.uninitialized.forget(address)

    def _block_size(self, address: int) -> int:
        if self.special_pool.contains(address):
            return 0x1000 - (address & 0xFFF)  # to the page's end: the guard page follows
        return self.kernel.pool.allocation_size(address)

    def site_of(self, address: int):
        return self.special_pool.site_of(address)

    # --- reports -------------------------------------------------------------------------

    def _on_unload(self, event: DriverUnloading) -> None:
        driver = event.driver
        options = self.options_for_driver(driver.name)
        if options is not None and options.flags & VerifierFlags.POOL_TRACKING:
            self.tracking.check_unload(driver)

    def outstanding(self, driver: str):
        return self.tracking.outstanding_for(driver)

    def format_outstanding(self, driver: str) -> str:
        """The driver's outstanding allocations, laid out like ``!verifier 3``."""
        rows = self.outstanding(driver)
        lines = ["Driver Verification List", "",
                 f"Module: {driver}", "",
                 f"    Current Pool Allocations  {len(rows):8d}", "",
                 "      Address          Size     Tag   Caller"]
        for row in rows:
            lines.append(f"      {row.address:016x} {row.size:#8x} {display(row.tag)}  "
                         f"{self.kernel.call_sites.describe(row.site)}")
        return "\n".join(lines)

    @property
    def failed_sites(self):
        return self.systematic.failed_sites

    @property
    def disclosures(self):
        return self.uninitialized.reports


def _driver_pattern(driver) -> str:
    if not isinstance(driver, str) or not driver:
        name = getattr(driver, "name", None)
        if not isinstance(name, str) or not name:
            raise TypeError(f"driver must be a driver name such as 'buggy.sys', not {driver!r}")
        driver = name
    driver = driver.lower()
    return driver if driver.endswith(".sys") or "*" in driver else driver + ".sys"


def _as_patterns(values) -> list[str]:
    """Tag patterns as the checks match them: the text tools show for a tag, with * and ?.
    A tag tools show as its ULONG (a byte they cannot print) is given as that text,
    ``0x5eadbeef``, or as any ULONG, which is shown as tools show it (bit 31 stripped)."""
    if isinstance(values, (str, int)):
        values = [values]
    patterns = []
    for pattern in values:
        if type(pattern) is int and 0 <= pattern <= 0xFFFFFFFF:
            pattern = display(pattern)
        elif isinstance(pattern, str) and len(pattern) == 10 and is_hex_tag(pattern):
            pattern = display(from_display(pattern))  # (8 lower-case digits, bit 31 stripped)
        elif not isinstance(pattern, str) or not 1 <= len(pattern) <= 4 and "*" not in pattern:
            raise ValueError(f"tag pattern {pattern!r} must be a tag as tools show it, with * and ?, "
                             f"or a ULONG")
        patterns.append(pattern)
    return patterns


def _checked_flags(flags) -> int:
    if not isinstance(flags, int) or flags < 0:
        raise ValueError(f"flags must be a non-negative verifier flags value, got {flags!r}")
    unknown = flags & ~sum(VerifierFlags)
    if unknown:
        raise ValueError(f"flags {unknown:#x} are not verifier pool options ntpool models")
    return flags


@attach_to_every_kernel
def _attach_verifier(kernel) -> None:
    kernel.verifier = DriverVerifier(kernel)


__all__ = ["DriverOptions", "DriverVerifier", "VerifierFlags", "VerifierStop"]
