"""Forensics commands: ``ntpool symbols`` (what volatility3 needs, and where), ``ntpool score``,
``ntpool corpus``."""

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
    add_score_command(sub)


def _cmd_score(args) -> int:
    import json

    from ..forensics.score import format_score, score_files

    tags = [t for t in args.tags.split(",") if t] if args.tags else None
    result = score_files(args.truth, args.results, tags)
    print(json.dumps(result, indent=1) if args.json else format_score(result))
    return 0


def add_score_command(sub) -> None:
    score = sub.add_parser("score", help="score a pool scanner's findings against a truth manifest")
    score.add_argument("truth", metavar="TRUTH.json", help="the manifest (ntpool corpus, --truth)")
    score.add_argument("results", nargs="+", metavar="RESULTS",
                       help="vol -r json output (windows.bigpools, ntpool.tagscan, "
                            "windows.poolscanner), ntpool kd !poolfind output, or CSV address,tag[,state]")
    score.add_argument("--tags", help="score only these tags (comma-separated, as shown)")
    score.add_argument("--json", action="store_true", help="the scores as JSON")
    score.set_defaults(func=_cmd_score)
