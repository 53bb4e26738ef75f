"""Pool tracking: each verified driver's outstanding allocations, checked at unload."""

from typing import NamedTuple

from ..constants import BugCheckCode


class Outstanding(NamedTuple):
    address: int
    pool: str
    size: int
    tag: int
    site: int


POOL_NAMES = ("NonPagedPool", "PagedPool")


class PoolTracking:
    def __init__(self, kernel):
        self.kernel = kernel
        # address -> (base type, size, tag, site): a plain tuple per allocation, as cheap as
        # a record gets (each free pops it); Outstanding rows are made only for reports.
        self.records: dict[int, tuple[int, int, int, int]] = {}

    def record(self, address: int, base_type: int, size: int, tag: int, site: int) -> None:
        self.records[address] = (base_type, size, tag, site)

    def forget(self, address: int) -> None:
        self.records.pop(address, None)

    @property
    def allocations(self) -> dict[int, Outstanding]:
        """Every recorded allocation, address -> Outstanding."""
        return {address: Outstanding(address, POOL_NAMES[base_type], size, tag, site)
                for address, (base_type, size, tag, site) in self.records.items()}

    def outstanding_for(self, driver_name: str) -> list[Outstanding]:
        sites = self.kernel.call_sites
        wanted = driver_name.lower()
        rows = []
        for row in self.allocations.values():
            owner = sites.owner(row.site)
            if owner is not None and owner.name.lower() == wanted:
                rows.append(row)
        return sorted(rows)

    def check_unload(self, driver) -> None:
        rows = self.outstanding_for(driver.name)
        if rows:
            self.kernel.KeBugCheckEx(
                BugCheckCode.DRIVER_VERIFIER_DETECTED_VIOLATION, 0x62, driver.name_va, 0, len(rows),
                detail=f"{driver.name} unloaded with {len(rows)} pool allocation(s) outstanding",
                culprit=driver)
