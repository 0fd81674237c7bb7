"""``mobilenet-v1 predict MODEL_DIR IMAGE...``: exit 1 if any image failed (the others are still printed)."""

from __future__ import annotations

import argparse
import json
import sys

from ..predict import predict
from .model_args import positive_int


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="directory with config.json + model.safetensors (a run or converted weights)")
    p.add_argument("images", nargs="+", help="image files (JPEG, PNG, WebP, ...)")
    p.add_argument("--topk", type=positive_int, default=5, help="classes to print per image")
    p.add_argument("--json", action="store_true", help="one JSON object per line")


def run(args: argparse.Namespace) -> int:
    results = predict(args.model, args.images, topk=args.topk)
    for r in results:
        if r.error:
            print(f"mobilenet-v1 predict: error: {r.error}", file=sys.stderr)
            continue
        if args.json:
            print(
                json.dumps(
                    {
                        "path": r.path,
                        "top": [
                            {"class": c, "index": i, "probability": p}
                            for c, i, p in zip(r.classes, r.indices, r.probabilities)
                        ],
                    }
                )
            )
        else:
            tops = ", ".join(f"{c} ({100 * p:.1f}%)" for c, p in zip(r.classes, r.probabilities))
            print(f"{r.path}: {tops}")
    return 1 if any(r.error for r in results) else 0
