"""``mobilenet-v1`` command line: each subcommand parses, calls one library function, prints.

Library code raises ``ValueError``/``OSError`` with a message naming the input and the problem;
here that becomes one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> its help; each is the module ``<name>_cmd`` here, exposing add_arguments(parser) and run(args) -> int
COMMANDS = {
    "summary": "Per-layer table of Mult-Adds and parameters",
    "paper": "The paper's cost tables beside ours, with verdicts",
    "train": "Train on Fashion-MNIST or an ImageFolder tree",
    "eval": "Evaluate a trained model",
    "predict": "Top-k classes for images",
    "convert": "Convert TensorFlow / Keras / timm weights",
    "export": "Export to ONNX or TorchScript",
    "bench": "Benchmark inference backends",
}


class CliError(Exception):
    """A user-facing failure whose message is already one clear line."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mobilenet-v1", description="MobileNet-V1 (Howard et al. 2017) in PyTorch")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, helptext in COMMANDS.items():
        module = importlib.import_module(f"{__name__}.{name}_cmd")
        p = sub.add_parser(name, help=helptext, description=helptext)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args._run(args)
    except (ValueError, OSError, CliError) as e:
        print(f"mobilenet-v1 {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mobilenet-v1 {args.command}: interrupted", file=sys.stderr)
        return 130
