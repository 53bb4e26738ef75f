"""Forensics commands: ``ntpool symbols`` (what volatility3 needs, and where), ``ntpool score``,
``ntpool corpus``."""

from ..dump import isf
from .verify import add_engine_arguments


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
    add_corpus_command(sub)


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


def _cmd_corpus(args) -> int:
    from ..forensics.corpus import CorpusOptions, make_corpus, parse_mib_range

    if args.count < 1:
        raise ValueError(f"--count must be at least 1, got {args.count}")
    if not 0 < args.fill < 0.95:
        raise ValueError(f"--fill must be between 0 and 0.95, got {args.fill}")
    kinds = tuple(k for k in args.kinds.split(",") if k)
    if not kinds or any(k not in ("kernel", "full") for k in kinds):
        raise ValueError(f"--kinds {args.kinds!r}: 'kernel', 'full' or both")
    low, high = parse_mib_range(args.pool_mib)
    options = CorpusOptions(args.count, args.seed, low, high, args.fill, kinds)

    def progress(done, entry):
        print(f"{entry['dump']}: {entry['kind']}, {entry['pool_mib_each']:.1f} MiB each pool, "
              f"{entry['chunks']} chunks {entry['states']}, {entry['big_allocations']} big, "
              f"{entry['paged_out_pages']} paged out, {len(entry['corrupt_pages'])} corrupt pages, "
              f"{entry['decoys']} decoys", flush=True)

    from rich.console import Console

    from .verify import engine_for

    description = {"command": "corpus", "out": str(args.out), "count": args.count,
                   "seed": args.seed, "pool_mib": args.pool_mib, "fill": args.fill, "kinds": kinds}
    with engine_for(args, description, Console(stderr=True), "corpus") as engine:
        make_corpus(args.out, options, progress, engine=engine)
    print(f"wrote {args.count} dumps, their manifests and corpus.json to {args.out} "
          f"(symbols for vol -s: {args.out}/symbols)")
    return 0


def add_corpus_command(sub) -> None:
    corpus = sub.add_parser("corpus", help="write dumps with truth manifests for scoring scanners")
    corpus.add_argument("--out", required=True, metavar="DIR", help="the corpus folder")
    corpus.add_argument("--count", type=int, default=4, help="how many dumps (default 4)")
    corpus.add_argument("--seed", type=int, default=1, help="seed of the whole corpus (default 1)")
    corpus.add_argument("--pool-mib", default="1-16", metavar="MIN-MAX",
                        help="size of each pool, drawn log-uniformly (default 1-16; up to 1024 and more)")
    corpus.add_argument("--fill", type=float, default=0.5, help="live share of each pool (default 0.5)")
    corpus.add_argument("--kinds", default="kernel,full", help="dump kinds, alternating (default kernel,full)")
    add_engine_arguments(corpus)
    corpus.set_defaults(func=_cmd_corpus)
