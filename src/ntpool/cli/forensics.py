"""``ntpool symbols``: what volatility3 needs to analyse ntpool's dumps, and where it is."""

from ..dump import isf


def _cmd_symbols(args) -> int:
    if args.install:
        print(isf.install_symbols(args.install))
        return 0
    symbols, plugins = isf.package_symbols_directory(), isf.package_plugins_directory()
    print(f"symbols: {symbols}")
    print(f"plugins: {plugins}")
    print(f"symbol file: {isf.relative_path()} (GUID {isf.guid()}, age 1)")
    print(f"use: vol --offline -f DUMP -s {symbols} -p {plugins} windows.info")
    return 0


def add_forensics_commands(sub) -> None:
    symbols = sub.add_parser("symbols", help="print where volatility3's symbol file (-s) and "
                                             "ntpool's volatility3 plugins (-p) are")
    symbols.add_argument("--install", metavar="DIR",
                         help="write the symbol file under DIR (a folder to give vol -s) instead")
    symbols.set_defaults(func=_cmd_symbols)
