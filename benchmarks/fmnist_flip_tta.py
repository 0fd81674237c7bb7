"""Test top-1 of Fashion-MNIST run models with and without horizontal-flip test-time augmentation.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/fmnist_flip_tta.py RUN_DIR [RUN_DIR ...]

Each run's model (``model.safetensors``) classifies the 10,000 test images with its recorded preprocessing;
"flip" averages the softmax of each image and its mirror (the trainer's ``small`` preset trains with flips).
Prints one JSON line per run. The trainer does not use this: its reported accuracy is the plain one.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from PIL import Image

from mobilenet_v1.checkpoint import from_pretrained
from mobilenet_v1.preprocess import eval_transform

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the photo sets the tests use
from samples import fashion_mnist  # noqa: E402 - tests/samples.py


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--batch", type=int, default=500)
    args = p.parse_args()
    images, labels = fashion_mnist("test")
    labels = torch.from_numpy(labels)
    for run in args.runs:
        model = from_pretrained(run)
        tf = eval_transform(model.pretrained.preprocessing)
        x_all = torch.stack([tf(Image.fromarray(im, mode="L")) for im in images])
        plain = flip = 0
        with torch.inference_mode():
            for i in range(0, len(x_all), args.batch):
                x, y = x_all[i : i + args.batch], labels[i : i + args.batch]
                p0 = model(x).softmax(1)
                p1 = model(x.flip(-1)).softmax(1)
                plain += (p0.argmax(1) == y).sum().item()
                flip += ((p0 + p1).argmax(1) == y).sum().item()
        n = len(labels)
        print(json.dumps({"run": run, "top1": 100 * plain / n, "top1_flip_tta": 100 * flip / n, "images": n}))


if __name__ == "__main__":
    main()
