"""``mobilenet-v1 eval MODEL_DIR --data ...``: top-1, top-5, per-class accuracy, confusion-matrix PNG."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..evaluate import plot_confusion
from ..run_eval import evaluate_dir
from .model_args import count, positive_int


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="directory with config.json + model.safetensors")
    p.add_argument("--dataset", default="fashion-mnist", help="fashion-mnist or folder")
    p.add_argument("--data", help="data directory (default for fashion-mnist: Debian's package)")
    p.add_argument("--split", default="val", choices=("val", "train"), help="val (Fashion-MNIST: the test set)")
    p.add_argument("--subset", type=positive_int, help="a fixed random subset of N images")
    p.add_argument("--batch-size", type=positive_int, default=256, help="images per forward pass")
    p.add_argument("--workers", type=count, default=1, help="DataLoader worker processes")
    p.add_argument("--precision", default="fp32", help="fp32, bf16 or auto")
    p.add_argument("--confusion", help="PNG path for the confusion matrix (default: MODEL_DIR/confusion.png)")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object")


def run(args: argparse.Namespace) -> int:
    png = Path(args.confusion or Path(args.model) / "confusion.png")
    if not os.access(png.parent if png.parent.exists() else Path.cwd(), os.W_OK):  # fail before the work
        raise ValueError(f"{png}: cannot write the confusion matrix there (read-only); pass --confusion PATH")
    metrics = evaluate_dir(
        args.model, args.dataset, args.data, args.split, args.subset, args.batch_size, args.workers, args.precision
    )
    plot_confusion(metrics, png)
    if args.json:
        print(metrics.to_json())
        return 0
    print(
        f"top-1 {metrics.top1:.2f}%  top-5 {metrics.top5:.2f}%  loss {metrics.loss:.4f}  "
        f"on {metrics.samples} images ({metrics.skipped} unreadable, skipped)"
    )
    width = max(len(n) for n in metrics.per_class)
    for name, acc in metrics.per_class.items():
        print(f"  {name.ljust(width)}  {acc:6.2f}%")
    print(f"confusion matrix: {png}")
    return 0
