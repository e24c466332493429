"""``mpsearch-report <run dir>``: rebuild a run's report files from its stored ``summary.json``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from mpsearch.errors import MPSearchError

PROG = "mpsearch-report"
log = logging.getLogger("mpsearch")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Rebuild report.md, report.html, pareto.csv/.parquet and the plots of an mpsearch run "
        "from the summary.json stored in its folder, without recomputing anything.",
    )
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folder, e.g. results/<run>")
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns 0, or 2 after one ``mpsearch-report: error: ...`` line on stderr."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    from mpsearch.report.writer import rebuild_report

    for run_dir in args.run_dirs:
        try:
            paths = rebuild_report(run_dir)
        except MPSearchError as e:
            print(f"{PROG}: error: {e}", file=sys.stderr)
            return 2
        log.info("%s: rebuilt %d files (%s)", run_dir, len(paths), ", ".join(sorted(p.name for p in paths.values())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
