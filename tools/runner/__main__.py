"""Command line of the accuracy runner (run from the repository root):

    python -m tools.runner list      --table chaost2_s1 [--only PATTERN] [--keys]
    python -m tools.runner run       --table chaost2_s1 [--only PATTERN] [--max-jobs N] [--steps N] [--commit]
    python -m tools.runner start     --table chaost2_s1 [same options as run]      # nohup, background
    python -m tools.runner status    [--table NAME ...] [-v]
    python -m tools.runner stop      --table chaost2_s1
    python -m tools.runner aggregate [--table NAME ...]       # also rewrites the results page (below)
    python -m tools.runner results-page [--check]              # docs/results.md, README tables, eval_metrics

Common options: --home (checkpoints, caches, logs; default $SDFSMIS_RUNNER_HOME or ~/.cache/sdfsmis),
--results (default <repo>/results/accuracy), --shared (data and weights; default $SDFSMIS_SHARED or
<repo>/../shared).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import results_page
from .jobs import REPO, Workspace, expand, select
from .tables import TABLES, get_table


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--home", default=None, help="checkpoints, latent caches, logs, state")
    common.add_argument("--results", default=str(REPO / "results" / "accuracy"), help="result files and tables")
    common.add_argument("--shared", default=None, help="folder with data/ and weights/")
    common.add_argument("--steps", type=int, default=None, help="training steps of every job (default: the table's)")

    jobs = argparse.ArgumentParser(add_help=False)
    jobs.add_argument("--table", required=True, choices=sorted(TABLES))
    jobs.add_argument("--only", default=None, help="comma-separated job name patterns (fnmatch; a word = substring)")
    jobs.add_argument("--max-jobs", type=int, default=1, help="jobs at a time (each gets cores / N threads)")
    jobs.add_argument("--commit", action="store_true", help="git-commit each result file and the table as it finishes")

    parser = argparse.ArgumentParser(prog="python -m tools.runner", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", parents=[common, jobs], help="run (or resume) a table's jobs in the foreground")
    sub.add_parser("start", parents=[common, jobs], help="the same in the background (nohup; log and pid file)")
    listing = sub.add_parser("list", parents=[common], help="the jobs of a table")
    listing.add_argument("--table", required=True, choices=sorted(TABLES))
    listing.add_argument("--only", default=None)
    listing.add_argument("--keys", action="store_true", help="also each job's training run folder (runs/<key>)")
    stopping = sub.add_parser("stop", parents=[common], help="stop a table's runners (checkpoints stay)")
    stopping.add_argument("--table", required=True, choices=sorted(TABLES))
    state = sub.add_parser("status", parents=[common], help="done / running / failed / left, per table")
    state.add_argument("--table", action="append", choices=sorted(TABLES))
    state.add_argument("-v", "--verbose", action="store_true", help="list every job")
    agg = sub.add_parser("aggregate", parents=[common], help="markdown and JSON tables from the result files")
    agg.add_argument("--table", action="append", choices=sorted(TABLES))
    page = sub.add_parser("results-page", parents=[common],
                          help="docs/results.md and the README's headline table from the aggregated tables")
    page.add_argument("--source", default=None, help="the page's prose with its fields (default docs/results.src.md)")
    page.add_argument("--page", default=None, help="the page to write (default docs/results.md)")
    page.add_argument("--readme", default=None, help="the README whose headline block is rewritten (default README.md)")
    page.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file is not what it would be")
    return parser


def _workspace(args) -> Workspace:
    keys = {"results": args.results}
    if args.home:
        keys["home"] = args.home
    if args.shared:
        keys["shared"] = args.shared
    return Workspace(**keys)


def _run(args, ws: Workspace) -> int:
    from .aggregate import write_table
    from .background import register_runner
    from .execute import install_signal_handlers, run_table

    table = get_table(args.table)
    jobs = select(expand(table, args.steps), args.only)
    if not jobs:
        print(f"no job of {table.name} matches {args.only!r}", file=sys.stderr)
        return 2
    install_signal_handlers()
    pid_file = register_runner(ws, table.name, sys.argv)
    try:
        outcome = run_table(table, jobs, ws, max_jobs=args.max_jobs, commit=args.commit,
                            after_job=lambda: write_table(table, ws, args.steps))
        paths = write_table(table, ws, args.steps)
    finally:
        pid_file.unlink(missing_ok=True)
    failed = [name for name, state in outcome.items() if state.startswith("failed")]
    print(f"table {table.name}: {sum(s in ('done', 'finished') for s in outcome.values())}/{len(jobs)} finished, "
          f"{len(failed)} failed; tables: {', '.join(map(str, paths))}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    ws = _workspace(args)
    if args.command == "run":
        return _run(args, ws)
    if args.command == "start":
        from .background import start

        forwarded = ["--home", str(ws.home), "--results", str(ws.results), "--shared", str(ws.shared),
                     "--max-jobs", str(args.max_jobs)]
        for flag, value in (("--steps", args.steps), ("--only", args.only)):
            forwarded += [flag, str(value)] if value is not None else []
        forwarded += ["--commit"] if args.commit else []
        info = start(ws, get_table(args.table), forwarded)
        print(f"runner of {args.table} started: pid {info['pid']}, log {info['log']}\n"
              f"  python -m tools.runner status --table {args.table}")
        return 0
    if args.command == "list":
        for job in select(expand(get_table(args.table), args.steps), args.only):
            print(f"{job.name}  {ws.train_dir(job) or '(no training)'}" if args.keys else job.name)
        return 0
    if args.command == "stop":
        from .background import stop

        pids = stop(ws, get_table(args.table))
        print(f"sent SIGTERM to {pids}" if pids else f"no live runner of {args.table}")
        return 0
    if args.command == "status":
        from .background import status

        print(status(ws, TABLES, args.table, args.steps, args.verbose))
        return 0
    if args.command == "aggregate":
        from .aggregate import tables_with_results, write_table

        tables = [get_table(n) for n in args.table] if args.table else tables_with_results(ws, TABLES)
        if not tables:
            print(f"no result files under {ws.results}")
        for table in tables:
            print("\n".join(map(str, write_table(table, ws, args.steps))))
        if ws.results.resolve() == results_page.RESULTS.resolve():  # the page shows the repository's tables only
            for path in results_page.write_results_page(metadata=results_page.METADATA):
                print(path)
        return 0
    if args.command == "results-page":
        defaults = not (args.source or args.page or args.readme)  # the repository's pages: the bundle's too
        stale = results_page.write_results_page(
            ws.results, Path(args.source or results_page.SOURCE), Path(args.page or results_page.PAGE),
            Path(args.readme or results_page.README), check=args.check,
            bundle_page=results_page.BUNDLE_PAGES if defaults else None,
            metadata=results_page.METADATA if defaults else None)
        for path in stale:
            print(f"{path} {'differs from what the tables give' if args.check else 'written'}")
        return 1 if args.check and stale else 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
