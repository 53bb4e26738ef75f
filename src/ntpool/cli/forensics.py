"""Forensics commands: ``ntpool symbols`` (what volatility3 needs, and where), ``ntpool score``,
``ntpool corpus``."""

from ..dump import isf
from .sources import add_windows_argument
from .verify import add_engine_arguments


def _cmd_symbols(args) -> int:
    if args.install:
        for path in isf.install_every_symbol_file(args.install):
            print(path)
        return 0
    symbols, plugins = isf.package_symbols_directory(), isf.package_plugins_directory()
    print(f"symbols: {symbols}")
    print(f"plugins: {plugins}")
    for windows in isf.every_windows():
        print(f"symbol file for {windows}: {isf.relative_path(windows)} "
              f"(GUID {isf.guid(windows)}, age 1)")
    print(f"use: vol --offline -f DUMP -s {symbols} -p {plugins} windows.info")
    return 0


def add_forensics_commands(sub) -> None:
    symbols = sub.add_parser("symbols", help="print where volatility3's symbol file (-s) and "
                                             "ntpool's volatility3 plugins (-p) are")
    symbols.add_argument("--install", metavar="DIR",
                         help="write the symbol files (one per modelled build) under DIR (a "
                              "folder to give vol -s) instead")
    symbols.set_defaults(func=_cmd_symbols)
    add_score_command(sub)
    add_corpus_command(sub)


def _cmd_score(args) -> int:
    import json

    from ..forensics.score import format_score, score_files
    from ..tags import from_display

    # --tags may be given more than once (each comma-separated): all of them are scored
    given = ",".join(args.tags) if args.tags is not None else None
    tags = [t for t in given.split(",") if t] if given else None
    if given is not None and not tags:
        raise ValueError(f"--tags {given!r} names no tag")
    for tag in tags or ():  # a typo would score nothing without a word
        try:
            from_display(tag)
        except ValueError as error:
            raise ValueError(f"--tags: {error}") from None
    if args.corpus:
        if args.truth or args.results:
            raise ValueError("give either --corpus DIR or TRUTH.json RESULTS..., not both")
        return _score_corpus(args, tags)
    if not args.truth or not args.results:
        raise ValueError("score needs TRUTH.json and at least one RESULTS file (or --corpus DIR)")
    result = score_files(args.truth, args.results, tags)
    print(json.dumps(result, indent=1) if args.json else format_score(result))
    return 0


SCORED_ROWS = ("headers", "live allocations", "big allocations")


def _score_corpus(args, tags) -> int:
    """ntpool's !poolfind * scored on every dump of a corpus, one campaign run per dump."""
    import json
    import os

    from rich.console import Console

    from .verify import engine_for

    index_path = os.path.join(args.corpus, "corpus.json")
    try:
        with open(index_path, encoding="utf-8") as handle:
            index = json.load(handle)
        dumps = index["dumps"]
        truths = [os.path.abspath(os.path.join(args.corpus, entry["truth"])) for entry in dumps]
    except UnicodeDecodeError:
        raise ValueError(f"{index_path}: not an ntpool corpus index (not UTF-8 text)") from None
    except RecursionError:
        raise ValueError(f"{index_path}: not an ntpool corpus index (JSON nested too deeply)") from None
    except (ValueError, KeyError, TypeError) as error:  # broken JSON, a number of 5,000 digits
        raise ValueError(f"{index_path}: not an ntpool corpus index ({error})") from None
    tasks = [{"kind": "score", "truth": truth, "tags": tags} for truth in truths]
    description = {"command": "score", "corpus": os.path.abspath(args.corpus), "tags": tags}
    with engine_for(args, description, Console(stderr=True), "score") as engine:
        records = engine.run(tasks)
    failed = [r for r in records if "score" not in r]
    if failed:
        raise ValueError(f"scoring failed: {failed[0].get('evidence', '')}")
    total = {name: {"truth": 0, "found": 0, "right": 0} for name in SCORED_ROWS}
    rows = []
    for record in records:
        cells = []
        for name in SCORED_ROWS:
            row = record["score"][name]
            for key in ("truth", "found", "right"):
                total[name][key] += row[key]
            cells.append(_pair(row["right"], row["found"], row["truth"]))
        rows.append((record["truth"].removesuffix(".truth.json"), *cells))
    if args.json:
        print(json.dumps({"dumps": records, "total": total}, indent=1))
        return 0
    print(f"ntpool !poolfind * on {len(records)} corpus dumps (precision / recall)")
    print(f"{'dump':16} " + " ".join(f"{name:>17}" for name in SCORED_ROWS))
    for name, *cells in rows + [("all dumps", *(_pair(t["right"], t["found"], t["truth"])
                                                for t in total.values()))]:
        print(f"{name:16} " + " ".join(f"{cell:>17}" for cell in cells))
    return 0


def _pair(right: int, found: int, truth: int) -> str:
    precision = f"{right / found:.3f}" if found else "-"
    recall = f"{right / truth:.3f}" if truth else "-"
    return f"{precision} / {recall}"


def add_score_command(sub) -> None:
    score = sub.add_parser("score", help="score a pool scanner's findings against a truth manifest")
    score.add_argument("truth", nargs="?", metavar="TRUTH.json",
                       help="the manifest (ntpool corpus, --truth)")
    score.add_argument("results", nargs="*", metavar="RESULTS",
                       help="vol -r json output (windows.bigpools, ntpool.tagscan, "
                            "windows.poolscanner), ntpool kd !poolfind output, or CSV address,tag[,state]")
    score.add_argument("--corpus", metavar="DIR",
                       help="instead: score ntpool's !poolfind * on every dump of this corpus, "
                            "one campaign run per dump")
    score.add_argument("--tags", action="append", metavar="T,T",
                       help="score only these tags (comma-separated, as shown; repeatable)")
    score.add_argument("--json", action="store_true", help="the scores as JSON")
    add_engine_arguments(score)
    score.set_defaults(func=_cmd_score)


def _cmd_corpus(args) -> int:
    from ..forensics.corpus import CorpusOptions, make_corpus, parse_mib_range

    import os

    if args.count < 1:
        raise ValueError(f"--count must be at least 1, got {args.count}")
    if os.path.exists(args.out) and not os.path.isdir(args.out):  # said before any dump is made
        raise ValueError(f"--out {args.out}: not a directory (the corpus is a folder)")
    if not 0 < args.fill < 0.95:
        raise ValueError(f"--fill must be between 0 and 0.95, got {args.fill}")
    kinds = tuple(k for k in args.kinds.split(",") if k)
    if not kinds or any(k not in ("kernel", "full") for k in kinds):
        raise ValueError(f"--kinds {args.kinds!r}: 'kernel', 'full' or both")
    low, high = parse_mib_range(args.pool_mib)
    options = CorpusOptions(args.count, args.seed, low, high, args.fill, kinds,
                            "7" if args.windows is None else args.windows)

    def progress(done, entry):
        print(f"{entry['dump']}: {entry['kind']}, {entry['pool_mib_each']:.1f} MiB each pool, "
              f"{entry['chunks']} chunks {entry['states']}, {entry['big_allocations']} big, "
              f"{entry['paged_out_pages']} paged out, {len(entry['corrupt_pages'])} corrupt pages, "
              f"{entry['decoys']} decoys, {entry['windows']}", flush=True)

    from rich.console import Console

    from .verify import engine_for

    description = {"command": "corpus", "out": str(args.out), "count": args.count,
                   "seed": args.seed, "pool_mib": args.pool_mib, "fill": args.fill, "kinds": kinds,
                   "windows": options.windows}
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
    add_windows_argument(corpus)
    add_engine_arguments(corpus)
    corpus.set_defaults(func=_cmd_corpus)
