# ntpool's volatility3 plugin: scan for pool headers of any tag with volatility3's own engine.
# Run it with: vol --offline -f DUMP -s SYMBOLS -p PLUGINS ntpool.tagscan [--tags Fred NDam]
# (`ntpool symbols` prints SYMBOLS and PLUGINS). Without --tags it scans for every tag the
# dump's PoolTrackTable knows, each also with the protected bit (0x80 in its last byte).
"""Scan a Windows dump's memory for pool headers by tag (PoolScanner.pool_scan, any tag)."""

from typing import List

from volatility3.framework import interfaces, renderers
from volatility3.framework.configuration import requirements
from volatility3.framework.renderers import format_hints
from volatility3.framework.symbols.windows import extensions  # noqa: F401  (before poolscanner: import cycle)
from volatility3.plugins.windows import poolscanner


def _tag_bytes(text: str) -> bytes:
    """A tag as tools show it ('Fred', 'NDam', 'Cc', or '0xdeadbeef', the ULONG of a tag with
    a byte that is not printable ASCII) as the four bytes memory holds."""
    if len(text) == 10 and text.startswith("0x"):
        try:
            return int(text, 16).to_bytes(4, "little")
        except ValueError:
            pass
    raw = text.encode("latin-1")[:4]
    return raw.ljust(4, b" ")


def _shown(raw: int) -> str:
    """As ntpool's tools show a tag: four characters, or the ULONG in hex when a byte is
    outside 0x20..0x7E (bit 31, the protected bit, stripped either way)."""
    data = (raw & 0x7FFFFFFF).to_bytes(4, "little")
    if all(32 <= b < 127 for b in data):
        return data.decode("ascii")
    return f"0x{raw & 0x7FFFFFFF:08x}"


class TagScan(interfaces.plugins.PluginInterface):
    """Pool headers of any tag, found as windows.poolscanner finds object pools."""

    _required_framework_version = (2, 0, 0)
    _version = (1, 0, 0)

    @classmethod
    def get_requirements(cls) -> List[interfaces.configuration.RequirementInterface]:
        return [
            requirements.ModuleRequirement(name="kernel", description="Windows kernel",
                                           architectures=["Intel32", "Intel64"]),
            requirements.VersionRequirement(name="poolscanner", component=poolscanner.PoolScanner,
                                            version=(3, 0, 0)),
            requirements.ListRequirement(name="tags", element_type=str, optional=True,
                                         description="tags as shown (default: every tag in "
                                                     "PoolTrackTable)"),
        ]

    def _tracker_tags(self, kernel) -> List[bytes]:
        table = kernel.object(object_type="pointer", offset=kernel.get_symbol("PoolTrackTable").address)
        size = kernel.object(object_type="unsigned long long",
                             offset=kernel.get_symbol("PoolTrackTableSize").address)
        entries = kernel.object(object_type="array", offset=int(table), absolute=True,
                                subtype=kernel.get_type("_POOL_TRACKER_TABLE"), count=int(size))
        return [int(entry.Key).to_bytes(4, "little") for entry in entries if int(entry.Key)]

    def _generator(self):
        kernel = self.context.modules[self.config["kernel"]]
        tags = [_tag_bytes(t) for t in self.config.get("tags") or []] or self._tracker_tags(kernel)
        wanted = set()
        for tag in tags:
            wanted.add(tag)
            wanted.add(tag[:3] + bytes([tag[3] | 0x80]))  # the protected form
        constraints = [poolscanner.PoolConstraint(tag, type_name="_POOL_HEADER") for tag in sorted(wanted)]
        layer_name = self.context.layers[kernel.layer_name].config["memory_layer"]  # physical, as for Windows 7
        for constraint, header in poolscanner.PoolScanner.pool_scan(
                self.context, self.config["kernel"], layer_name, kernel.symbol_table_name,
                constraints, alignment=16):
            pool_type = int(header.PoolType)
            state = "Free" if pool_type == 0 else "Allocated"
            kind = "Paged" if pool_type % 2 else ("NonPaged" if pool_type else "")
            yield 0, (_shown(int(header.PoolTag)), format_hints.Hex(header.vol.offset), layer_name,
                      format_hints.Hex(pool_type), int(header.BlockSize) * 16, kind, state,
                      bool(int(header.PoolTag) & 0x80000000))

    def run(self):
        return renderers.TreeGrid([("Tag", str), ("Offset", format_hints.Hex), ("Layer", str),
                                   ("PoolType", format_hints.Hex), ("Size", int), ("Pool", str),
                                   ("State", str), ("Protected", bool)], self._generator())
