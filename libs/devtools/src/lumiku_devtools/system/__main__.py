"""`python -m lumiku_devtools.system [--seconds N] [--users N] [--seed N] [--no-chaos]`: exit status 1 when an
invariant failed; the report is printed and written as JSON under .data/system-test/."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TEST_DB_TAG", "system")  # before lumiku_devtools.testing names the databases
    from lumiku_devtools.system.run import Config, render, run, write

    defaults = Config()
    parser = argparse.ArgumentParser(prog="python -m lumiku_devtools.system", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seconds", type=float, default=float(os.environ.get("SYSTEM_LOAD_SECONDS", defaults.load_seconds))
    )
    parser.add_argument("--users", type=int, default=defaults.users)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--no-chaos", action="store_true", help="load only (a baseline)")
    parser.add_argument("--report-dir", type=Path, default=defaults.report_dir)
    args = parser.parse_args(argv)
    config = Config(
        load_seconds=args.seconds, users=args.users, seed=args.seed, chaos=not args.no_chaos, report_dir=args.report_dir
    )
    report = asyncio.run(run(config))
    print(render(report))
    print(f"report: {write(report, config.report_dir)}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
