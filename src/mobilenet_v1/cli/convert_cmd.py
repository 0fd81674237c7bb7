"""``mobilenet-v1 convert SRC -o OUT``: TF frozen graph / TF-slim tarball, Keras, timm or transformers weights →
ours, or any of those (or ours) → Keras, transformers (``--to hf``) or timm's layout (``--to timm``).

SRC may also be a released model's name (``mobilenet_v1_050_160`` or ``mobilenet_v1_050_160:keras``),
downloaded once into the cache (see ``mobilenet_v1.pretrained``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..convert import FORMATS, convert
from ..convert.output import TARGETS
from ..pretrained import PRETRAINED, fetch_source


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", metavar="SRC", help="weights file, converted model directory, or NAME[:SOURCE]")
    p.add_argument("-o", "--output", required=True, help="output directory, or a .keras / .weights.h5 file")
    p.add_argument("--to", default="auto", choices=TARGETS,
                   help="output layout: ours (a directory), keras, hf (a transformers directory), timm (a .safetensors "
                        "of timm's names); default: keras for .keras/.weights.h5, else ours")  # fmt: skip
    p.add_argument("--format", default="auto", choices=("auto", *FORMATS), help="source format (default: detect)")
    p.add_argument("--alpha", type=float, default=None, help="fail unless the source has this width multiplier")
    p.add_argument(
        "--num-classes",
        type=int,
        default=None,
        help="fail unless the head has this many classes (1000 from 1001: "
        "drop Google's background logit; 0: drop the head)",
    )
    p.add_argument("--resolution", type=int, default=None, help="input size to record when the source has none")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    src = args.src
    name, _, tag = src.partition(":")
    if not Path(src).exists() and name in PRETRAINED:
        src = fetch_source(name, tag or True)
    result = convert(
        src,
        args.output,
        format=args.format,
        width_multiplier=args.alpha,
        num_classes=args.num_classes,
        resolution=args.resolution,
        to=args.to,
    )
    print(result.to_json() if args.json else result.summary())
    return 0
