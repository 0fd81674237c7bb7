from __future__ import annotations

import argparse

from ..cost import cost_of
from ..model import ModelConfig
from ..summary import format_summary
from .model_args import add_model_arguments, config_kwargs


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    report = cost_of(ModelConfig(**config_kwargs(args)))
    print(report.to_json() if args.json else format_summary(report))
    return 0
