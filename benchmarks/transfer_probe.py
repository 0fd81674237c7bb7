"""Linear probe on Fashion-MNIST: Google's ImageNet backbone against the same probe on a random backbone.

    python benchmarks/transfer_probe.py --graph ~/.cache/mobilenet-v1/test-assets/retrained_graph.pb

The graph is Google's MobileNet_v1_1.0_224 (the frozen graph in the PyPI sdist nudity==0.2.3; the
tests fetch it with pip). Both runs train only the classifier (``--freeze-features``) with the same
recipe, data, input size and steps; the random backbone is a fresh init of the same architecture in
the same settings (ReLU6, TF padding, ε 1e-3). Prints and writes a JSON with both accuracies.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from mobilenet_v1 import save_pretrained
from mobilenet_v1.convert import load_any
from mobilenet_v1.model import MobileNetV1, ModelConfig
from mobilenet_v1.train import TrainConfig, train


def probe(init_dir: Path, out: Path, args) -> dict:
    cfg = TrainConfig(
        out_dir=str(out),
        model=ModelConfig(1.0, args.resolution, num_classes=10),
        recipe="fast",
        epochs=args.epochs,
        batch_size=64,
        workers=1,
        train_subset=args.train_subset,
        val_subset=args.val_subset,
        init=str(init_dir),
        freeze_features=True,
        precision="fp32",
        progress=False,
    )
    t = time.perf_counter()
    result = train(cfg)
    return {"top1": result.final.top1, "top5": result.final.top5, "seconds": time.perf_counter() - t}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--graph", required=True, help="Google's frozen MobileNet_v1_1.0_224 graph (.pb)")
    p.add_argument("--resolution", type=int, default=96)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--train-subset", type=int, default=10000)
    p.add_argument("--val-subset", type=int, default=2000)
    p.add_argument("--out", default="benchmarks/results/transfer_probe.json")
    args = p.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        google, info = load_any(args.graph)
        save_pretrained(google, tmp / "google", info)
        torch.manual_seed(0)
        random = MobileNetV1(config=google.config)
        save_pretrained(random, tmp / "random", info)
        results = {name: probe(tmp / name, tmp / f"probe_{name}", args) for name in ("google", "random")}
    record = {
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "torch": torch.__version__,
        "resolution": args.resolution,
        "epochs": args.epochs,
        "train_subset": args.train_subset,
        "val_subset": args.val_subset,
        "load_after": os.getloadavg(),
        **results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
