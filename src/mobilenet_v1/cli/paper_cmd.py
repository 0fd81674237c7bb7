from __future__ import annotations

import argparse

from ..paper import paper_report


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    report = paper_report()
    print(report.to_json() if args.json else report.markdown())
    return 0 if all(r.verdict != "MISMATCH" for r in report.rows) else 1
