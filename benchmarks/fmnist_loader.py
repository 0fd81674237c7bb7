"""Fashion-MNIST's input pipeline and evaluation: per image against a batch at a time, in one process.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/fmnist_loader.py --out benchmarks/results/fmnist_loader

Three measurements, each alternating its variants round by round (A B, then B A, ...), medians of rounds:

1. **loader alone**: ms per batch of 128 from a DataLoader with no worker and one thread (what a worker has) —
   torchvision's FashionMNIST with the per-image v2 pipeline, against ``data.fashion_mnist`` (the same pipeline
   run a batch at a time, ``batch_transforms.py``);
2. **training step** fed by each loader with one worker process, as the README's 94% command runs it (α = 1.0,
   64 px, grayscale, batch 128, the CPU kernels, the trainer's malloc tuning), and by one cached batch (no loader:
   the bound);
3. **evaluation** of the test images: the eager channels_last model the trainer used to evaluate, against
   ``evaluate.for_evaluation``'s inference path (BN folded, fused).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
from torch import nn
from torchvision import datasets
from train_throughput import _cpu_model, write_results  # benchmarks/ is the script's directory

from mobilenet_v1 import data, kernels
from mobilenet_v1.allocator import keep_freed_memory
from mobilenet_v1.evaluate import evaluate, for_evaluation
from mobilenet_v1.model import MobileNetV1, ModelConfig
from mobilenet_v1.preprocess import default_preprocessing, eval_transform, train_transform
from mobilenet_v1.recipes import build_optimizer, get_recipe

SIZE, BATCH = 64, 128


def per_image_dataset(train: bool, transform):
    root = data._fashion_mnist_root(data.FASHION_MNIST_DIR)
    return datasets.FashionMNIST(root, train=train, transform=transform)


def time_loader(loader, batches: int) -> float:
    it = iter(loader)
    t = time.perf_counter()
    for _ in range(batches):
        next(it)
    return (time.perf_counter() - t) / batches


def loader_alone(rounds: int, batches: int) -> dict:
    torch.set_num_threads(1)
    tf = train_transform(default_preprocessing("small", SIZE, True), "small")
    variants = {"per-image": per_image_dataset(True, tf), "batched": data.fashion_mnist(None, True, tf)}
    times = {k: [] for k in variants}
    for r in range(rounds):
        for name in variants if r % 2 == 0 else reversed(variants):
            loader = data.train_loader(variants[name], BATCH, seed=r, rank=0, world=1, workers=0)
            times[name].append(time_loader(loader, batches))
    torch.set_num_threads(2)
    return {k: 1e3 * statistics.median(v) for k, v in times.items()}


def training_steps(rounds: int, steps: int) -> dict:
    tf = train_transform(default_preprocessing("small", SIZE, True), "small")
    loaders = {
        "per-image": data.train_loader(per_image_dataset(True, tf), BATCH, 0, 0, 1, workers=1),
        "batched": data.train_loader(data.fashion_mnist(None, True, tf), BATCH, 0, 0, 1, workers=1),
    }
    streams = {k: iter(v) for k, v in loaders.items()}
    cached = next(streams["batched"])
    torch.manual_seed(0)
    model = MobileNetV1(config=ModelConfig(resolution=SIZE, in_chans=1, num_classes=10))
    model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, get_recipe("fast"), 0.2)
    kernels.enable(model)
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)

    def step(batch):
        x = batch.images.contiguous(memory_format=torch.channels_last)
        optimizer.zero_grad(set_to_none=True)
        logits = model(x)
        loss = criterion(logits, batch.labels)
        loss.backward()
        optimizer.step()
        loss.item(), (logits.argmax(1) == batch.labels).sum().item()  # what the trainer reads back each step

    sources = {"per-image": lambda: next(streams["per-image"]), "batched": lambda: next(streams["batched"]),
               "cached batch": lambda: cached}  # fmt: skip
    for source in sources.values():
        for _ in range(3):
            step(source())
    times = {k: [] for k in sources}
    for r in range(rounds):
        for name in sources if r % 2 == 0 else reversed(sources):
            t = time.perf_counter()
            for _ in range(steps):
                step(sources[name]())
            times[name].append((time.perf_counter() - t) / steps)
    return {k: {"ms_per_step": 1e3 * statistics.median(v), "img_s": BATCH / statistics.median(v),
                "rounds_img_s": [round(BATCH / t, 1) for t in v]} for k, v in times.items()}  # fmt: skip


def evaluation(rounds: int, images: int) -> dict:
    pre = default_preprocessing("small", SIZE, True)
    ds = data.subset(data.fashion_mnist(None, False, eval_transform(pre)), images)
    loader = data.eval_loader(ds, 2 * BATCH, workers=1)
    names = [str(i) for i in range(10)]
    torch.manual_seed(0)
    model = MobileNetV1(config=ModelConfig(resolution=SIZE, in_chans=1, num_classes=10)).eval()
    model = model.to(memory_format=torch.channels_last)
    variants = {
        "eager channels_last": lambda: evaluate(model, loader, names, channels_last=True),
        "inference path": lambda: evaluate(for_evaluation(model, torch.device("cpu"), "fp32")[0], loader, names),
    }
    times, results = {k: [] for k in variants}, {}
    for r in range(rounds):
        for name in variants if r % 2 == 0 else reversed(variants):
            t = time.perf_counter()
            results[name] = variants[name]()
            times[name].append(time.perf_counter() - t)
    same = results["eager channels_last"].confusion == results["inference path"].confusion
    return {"images": len(ds), "same_confusion": same, **{k: statistics.median(v) for k, v in times.items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="results path without suffix (.json and .md are written)")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--loader-batches", type=int, default=20)
    p.add_argument("--steps", type=int, default=8, help="training steps per round and variant")
    p.add_argument("--eval-images", type=int, default=10_000)
    args = p.parse_args()
    torch.set_num_threads(2)
    torch.set_flush_denormal(True)
    keep_freed_memory()  # as the trainer does
    load = os.getloadavg()[0]
    result = {
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "cpu": _cpu_model(),
        "torch": torch.__version__,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
        "load_before": load,
        "loader_ms_per_batch": loader_alone(args.rounds, args.loader_batches),
        "training": training_steps(args.rounds, args.steps),
        "evaluation_s": evaluation(max(2, args.rounds // 2), args.eval_images),
        "load_after": os.getloadavg()[0],
    }
    lo, tr, ev = result["loader_ms_per_batch"], result["training"], result["evaluation_s"]
    base = tr["per-image"]["img_s"]
    lines = [
        f"`{result['command']}` — {result['cpu']}, load {result['load_before']:.2f} → {result['load_after']:.2f}, "
        f"torch {result['torch']}",
        "",
        "| measurement | per image | batched | ratio |",
        "|---|---:|---:|---:|",
        f"| loader alone, ms per batch of {BATCH} | {lo['per-image']:.1f} | {lo['batched']:.1f} | "
        f"{lo['per-image'] / lo['batched']:.2f}× |",
        f"| training, img/s (1 worker) | {base:.1f} | {tr['batched']['img_s']:.1f} | "
        f"{tr['batched']['img_s'] / base:.3f}× |",
        f"| training from one cached batch (no loader), img/s | | {tr['cached batch']['img_s']:.1f} | "
        f"{tr['cached batch']['img_s'] / base:.3f}× |",
        f"| evaluation of {ev['images']} images, s (eager channels_last → inference path) | "
        f"{ev['eager channels_last']:.1f} | {ev['inference path']:.1f} | "
        f"{ev['eager channels_last'] / ev['inference path']:.2f}× (same confusion matrix: {ev['same_confusion']}) |",
    ]
    write_results(args.out, result, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
