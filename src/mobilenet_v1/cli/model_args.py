"""Model options shared by several subcommands."""

from __future__ import annotations

import argparse

from .. import spec


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a count: images, classes, steps)."""
    return _int_at_least(text, 1)


def count(text: str) -> int:
    """argparse type: an integer >= 0 (worker processes, extra steps)."""
    return _int_at_least(text, 0)


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {value}")
    return value


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--alpha", type=float, default=1.0, help="width multiplier α (Section 4.2)")
    g.add_argument("--resolution", type=int, help="input resolution; ρ = resolution/224 (default 224)")
    g.add_argument("--variant", default="standard", help=f"one of {', '.join(spec.VARIANTS)}")
    g.add_argument("--num-classes", type=int, default=1000)
    g.add_argument("--output-stride", type=int, default=32, help="8, 16 or 32 (dilation beyond it)")
    g.add_argument("--padding", default="symmetric",
                   help=f"one of {', '.join(spec.PADDINGS)} (TF graphs: tf_same, Keras files: keras)")  # fmt: skip


def config_kwargs(args: argparse.Namespace) -> dict:
    return {
        "width_multiplier": args.alpha,
        "resolution": 224 if args.resolution is None else args.resolution,
        "variant": args.variant,
        "num_classes": args.num_classes,
        "output_stride": args.output_stride,
        "padding": args.padding,
    }
