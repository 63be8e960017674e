"""``python -m benchmarks [--quick] [--only NAME ...]``: run, print the table, write the results."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from benchmarks.common import RESULTS_JSON, RESULTS_MD, Size, machine, table_row, write_report  # noqa: E402

SUITES = ("llm", "llamacpp", "remote", "media", "voice", "memory", "startup", "gui")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (the test suite's smoke run)")
    parser.add_argument("--only", nargs="+", choices=SUITES, default=list(SUITES), metavar="NAME",
                        help=f"which benchmarks to run: {', '.join(SUITES)}")
    parser.add_argument("--no-write", action="store_true", help="print only; do not update the results files")
    args = parser.parse_args(argv)
    size = Size.make(quick=args.quick)
    meta = {**machine(), "date": time.strftime("%Y-%m-%d"), "quick": args.quick}
    engine = None
    if {"llm", "llamacpp", "media", "voice"} & set(args.only):
        from mmchat.engine import Engine

        engine = Engine()
    results = []
    for name in args.only:
        started = time.perf_counter()
        module = importlib.import_module(f"benchmarks.{name}")
        got = module.run(size, engine=engine)
        print(f"[{name}: {time.perf_counter() - started:.0f} s]", file=sys.stderr)
        results.extend(got)
        for r in got:
            print(table_row({**r.to_dict(), "meta": meta}))
    if not args.no_write and not args.quick:
        write_report(results, meta=meta)
        print(f"wrote {RESULTS_JSON} and {RESULTS_MD}", file=sys.stderr)
    return 0 if all(r.passed is not False for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
