from __future__ import annotations

import argparse
import dataclasses

from ..checkpoint import read_config
from ..cost import cost_of
from ..model import ModelConfig
from ..summary import format_summary
from .model_args import add_model_arguments, config_kwargs


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", help="a model directory (config.json) to summarize instead of --alpha etc.")
    add_model_arguments(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    if args.model:  # the model as recorded (its padding included), at --resolution when one is given
        config = read_config(args.model).model
        if args.resolution is not None:
            config = dataclasses.replace(config, resolution=args.resolution)
    else:
        config = ModelConfig(**config_kwargs(args))
    report = cost_of(config)
    print(report.to_json() if args.json else format_summary(report))
    return 0
