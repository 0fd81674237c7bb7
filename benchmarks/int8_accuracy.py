"""int8 accuracy of a saved model: fp32 (PyTorch) vs ONNX Runtime int8 with per-channel and per-tensor weights.

    python benchmarks/int8_accuracy.py runs/fmnist --data fashion-mnist        # labelled: test accuracy
    python benchmarks/int8_accuracy.py google_mnv1 --data photos               # unlabelled: top-1 agreement

``--data fashion-mnist``: the 10,000 test images (labels); calibration on 300 training images 50000-50299.
``--data photos``: 100 fixed views of the 10 photographs bundled with scikit-image/scikit-learn/matplotlib;
calibration on 300 random crops of them (seed 0). ``--data photos-holdout``: calibrate (and fine-tune) on
300 crops of photos 0-4 only and evaluate on the 50 views of photos 5-9, which nothing has seen.
Every recipe is measured at each weight range (7-bit int8, 8-bit int8, uint8: ``--ranges``), each file evaluated
through ``exact_int8_session``: what it computes where int8 products are summed exactly, on any x86 CPU. The
recipe × range table (top-1 agreement with fp32, mean KL to fp32) is printed after the JSON.
``--executorch`` adds the ExecuTorch programs (``export --format executorch``, fp32 and PT2E int8 with the XNNPACK
quantizer, per-channel, the same calibration images), each run in ExecuTorch's runtime at batch 1; ``--recipes``
limits the ONNX Runtime recipes measured beside them.
``--qat-steps N`` adds variants fine-tuned through the simulated int8 graph (``deploy/qat.py``) for N steps.
``--data gcompris``: the 219 photographs of animals and objects in Debian's gcompris-qt-data
(``tests/debian_photos.py``, fetched with apt-get), one centre-cropped view each; calibration on the 300
crops of the bundled photos above, so no evaluation photo is seen. ``--data photo-crops``: 500 random crops
(seed 1) instead. ``--data DIR``: any image directory, calibration on ``--calibration DIR``.
Prints one JSON object (and writes it with ``--out``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mobilenet_v1.checkpoint import from_pretrained
from mobilenet_v1.deploy import bf16_supported, optimize_for_inference
from mobilenet_v1.deploy.calibration import batches, list_images
from mobilenet_v1.deploy.grids import resolve_reduce_range
from mobilenet_v1.deploy.onnx_export import read_metadata
from mobilenet_v1.deploy.quantize import exact_int8_session, export_int8
from mobilenet_v1.files import atomic_path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the photo sets the tests use
from samples import fashion_mnist, gcompris_photos, photo_crops, photo_views  # noqa: E402 - tests/samples.py

CONFIDENT = 0.5  # fp32 top-1 probability above which a prediction is not a near-tie
PHOTOS_DESCRIBED = ("100 views (photo_views: whole, centre and corner crops, mirrors) of the 10 photos bundled "
                    "with skimage/sklearn/matplotlib; calibration: 300 random crops of them (seed 0)")  # fmt: skip
GCOMPRIS_DESCRIBED = (
    "the 219 photos of Debian's gcompris-qt-data 3.1-2 (debian_photos.py), whole photo with the model's "
    "preprocessing; calibration: 300 random crops of the 10 bundled photos (seed 0)"
)


def datasets(kind: str, calibration: str | None):
    """(evaluation images, labels or None, calibration images, description)."""
    if kind == "fashion-mnist":
        test, labels = fashion_mnist("test")
        train, _ = fashion_mnist("train")
        calib = [Image.fromarray(a) for a in train[50000:50300]]
        return [Image.fromarray(a) for a in test], labels, calib, "Fashion-MNIST test (10,000), calibration: 300 train"
    if kind == "photos":
        return photo_views(256), None, photo_crops(300, 256, seed=0), PHOTOS_DESCRIBED
    if kind == "photos-holdout":  # nothing of the evaluation photos is seen by calibration or fine-tuning
        return (
            photo_views(256, which=range(5, 10)),
            None,
            photo_crops(300, 256, seed=0, which=range(5)),
            "50 views of photos 5-9 (photo_views); calibration and QAT: 300 random crops of photos 0-4 (seed 0)",
        )
    if kind == "gcompris":
        return gcompris_photos(), None, photo_crops(300, 256, seed=0), GCOMPRIS_DESCRIBED
    if kind == "photo-crops":  # harder: random 25-100% crops, many of them textures with no clear object
        return photo_crops(500, 256, seed=1), None, photo_crops(300, 256, seed=0), "500 random crops (seed 1)"
    if not calibration:
        raise SystemExit("--data DIR needs --calibration DIR")
    return list_images(kind), None, list_images(calibration), f"{kind} (calibration: {calibration})"


def logits_torch(model, images, pre) -> np.ndarray:
    with torch.inference_mode():
        return np.concatenate([model(torch.from_numpy(b)).float().numpy() for b in batches(images, pre, 64)])


def logits_onnx(path, images, pre) -> np.ndarray:
    session = exact_int8_session(path)
    return np.concatenate([session.run(None, {"input": b})[0] for b in batches(images, pre, 64)])


def logits_executorch(model, path, int8, calib, images, pre, correct=True) -> np.ndarray:
    """Export a ``.pte`` (fp32, or int8 calibrated on ``calib``) and run it in ExecuTorch's runtime, batch 1."""
    from mobilenet_v1.deploy.mobile import export_executorch, runtime_method

    export_executorch(model, path, int8=int8, calibration=calib, limit=None, correct=correct)
    method = runtime_method(path)
    return np.concatenate([method.execute([torch.from_numpy(b[i : i + 1])])[0].numpy()
                           for b in batches(images, pre, 64) for i in range(len(b))])  # fmt: skip


# Weight ranges: (label, weight type, reduce_range). 7-bit int8 is ORT's remedy for CPUs without VNNI; every file
# is evaluated through exact_int8_session, so the 8-bit row is what a VNNI or ARM CPU computes, on any x86 CPU.
RANGES = (("int8, 7-bit", "int8", True), ("int8, 8-bit", "int8", False), ("uint8", "uint8", False))
# Recipes: (label, per-channel, bias correction, export_int8's rounding: "nearest", "depthwise" or "all")
RECIPES = (("per-tensor", False, False, "nearest"), ("per-channel", True, False, "nearest"),
           ("per-channel + bias correction", True, True, "nearest"),
           ("+ optimal depthwise rounding", True, True, "depthwise"),
           ("+ optimal rounding of every conv", True, True, "all"))  # fmt: skip


EXECUTORCH = (
    ("ExecuTorch fp32", False, False),
    ("ExecuTorch int8: XNNPACK quantizer, per-channel, ReLU6 fused", True, False),
    ("ExecuTorch int8: + optimal rounding of every conv + bias correction (the export)", True, True),
)


def kl_to(ref: np.ndarray, out: np.ndarray) -> float:
    """Mean KL(p_fp32 ‖ p_int8) over the images, in nats."""

    def log_softmax(z):
        z = z - z.max(1, keepdims=True)
        return z - np.log(np.exp(z).sum(1, keepdims=True))

    lp, lq = log_softmax(ref.astype(np.float64)), log_softmax(out.astype(np.float64))
    return float((np.exp(lp) * (lp - lq)).sum(1).mean())


def markdown(result: dict) -> str:
    """Recipe × weight range: top-1 agreement with fp32 (%) and mean KL to fp32."""
    cols = [label for label, *_ in RANGES]
    lines = ["| recipe | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    if not any(f"{col}: {recipe}" in result["variants"] for col in cols for recipe, *_ in RECIPES):
        lines = []  # no ONNX Runtime recipe measured (--executorch alone)
    for recipe, *_ in RECIPES if lines else ():
        cells = []
        for col in cols:
            row = result["variants"].get(f"{col}: {recipe}")
            cells.append("–" if row is None else f"{row['top1_agreement_with_fp32']:.1f}% ({row['kl_to_fp32']:.4f})")
        lines.append(f"| {recipe} | " + " | ".join(cells) + " |")
    mobile = [(name, row) for name, row in result["variants"].items() if name.startswith("ExecuTorch")]
    if mobile:  # ExecuTorch's programs, run in its runtime: one column (XNNPACK's int8 weights are 8-bit)
        lines += [""] if lines else []
        lines += ["| ExecuTorch program (XNNPACK) | top-1 agreement (KL) |", "|---|---:|"]
        lines += [f"| {name.removeprefix('ExecuTorch ')} | {row['top1_agreement_with_fp32']:.1f}% "
                  f"({row['kl_to_fp32']:.4f}) |" for name, row in mobile]  # fmt: skip
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir")
    p.add_argument("--data", default="photos",
                   help="fashion-mnist, photos, photos-holdout, gcompris, photo-crops or an image dir")  # fmt: skip
    p.add_argument("--calibration", help="image directory for calibration (with --data DIR)")
    p.add_argument("--method", default="minmax", help="calibration method: minmax, entropy, percentile")
    p.add_argument("--ranges", nargs="+", default=[label for label, *_ in RANGES], help="weight ranges to measure")
    p.add_argument("--recipes", nargs="+", default=[label for label, *_ in RECIPES], help="ORT recipes to measure")
    p.add_argument("--executorch", action="store_true", help="add ExecuTorch's fp32 and int8 programs (XNNPACK)")
    p.add_argument("--qat-steps", type=int, default=0, help="add QAT variants fine-tuned for this many steps")
    p.add_argument("--qat-lr", type=float, default=None, help="its learning rate (default: qat.DEFAULT_LR)")
    p.add_argument("--out", help="write the JSON result here too, and the table beside it (.md)")
    args = p.parse_args(argv)
    model = from_pretrained(args.model_dir)
    pre = model.pretrained.preprocessing
    offset = model.pretrained.label_offset  # Google's 1001-class head: logit 0 is "background"
    images, labels, calib, described = datasets(args.data, args.calibration)
    ref = logits_torch(model, images, pre)[:, offset:]
    result = {"model_dir": args.model_dir, "data": described, "images": len(images), "method": args.method,
              "calibration_images": len(calib), "evaluated_with": "exact_int8_session (exact int8 sums on any CPU)",
              "default_reduce_range_here": resolve_reduce_range(None, "int8"), "variants": {}}  # fmt: skip
    with tempfile.TemporaryDirectory() as work:
        variants = {"fp32 (PyTorch)": ref}
        if bf16_supported():  # a reference for how near-tied this set is: bf16 rounding alone flips some
            fast = optimize_for_inference(model, precision="bf16")
            variants["bf16 (PyTorch inference path)"] = logits_torch(fast, images, pre)[:, offset:]
        else:  # the same reference through autocast's emulation (slow; numerics of bf16 rounding, not its speed)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                variants["bf16 (autocast, emulated)"] = logits_torch(model, images, pre)[:, offset:]
        runs = [(f"{label}: {recipe}", weight_type, reduce_range, per_channel, corrected, rounded, 0)
                for label, weight_type, reduce_range in RANGES if label in args.ranges
                for recipe, per_channel, corrected, rounded in RECIPES
                if (weight_type == "int8" or per_channel) and recipe in args.recipes]  # fmt: skip
        if args.qat_steps:
            runs += [(f"{label}: + QAT ({args.qat_steps} steps)", w, r, True, True, "depthwise", args.qat_steps)
                     for label, w, r in RANGES if label in args.ranges]  # fmt: skip
        for name, weight_type, reduce_range, per_channel, corrected, rounded, qat_steps in runs:
            start = time.perf_counter()
            path = Path(work) / f"{len(variants)}.int8.onnx"
            report = export_int8(model, path, calib, per_channel, args.method, limit=None, bias_correction=corrected,
                                 reduce_range=reduce_range, weight_type=weight_type, qat_steps=qat_steps,
                                 qat_lr=args.qat_lr, rounding=rounded)  # fmt: skip
            if report.qat:
                result.setdefault("qat", {})[name] = report.qat
            if weight_type == "uint8":
                widened = read_metadata(path)["quantization"]["widened_filters"]
                result.setdefault("widened_filters", {})[name] = widened
            variants[name] = logits_onnx(path, images, pre)[:, offset:]
            result.setdefault("quantize_seconds", {})[name] = round(time.perf_counter() - start, 1)
            print(f"{name}: {100.0 * float((variants[name].argmax(1) == ref.argmax(1)).mean()):.1f}%", file=sys.stderr)
        if args.executorch:
            for name, int8, correct in EXECUTORCH:
                start = time.perf_counter()
                variants[name] = logits_executorch(model, Path(work) / f"{len(variants)}.pte", int8, calib, images,
                                                   pre, correct)[:, offset:]  # fmt: skip
                result.setdefault("quantize_seconds", {})[name] = round(time.perf_counter() - start, 1)
    top1 = ref.argmax(1)
    top5 = np.argsort(-ref, 1)[:, :5]
    exp = np.exp(ref - ref.max(1, keepdims=True))
    confident = (exp / exp.sum(1, keepdims=True)).max(1) >= CONFIDENT
    result["fp32_confident_images"] = int(confident.sum())
    for name, out in variants.items():
        pred, own5 = out.argmax(1), np.argsort(-out, 1)[:, :5]
        row = {"top1_agreement_with_fp32": 100.0 * float((pred == top1).mean()),
               "kl_to_fp32": kl_to(ref, out),
               "fp32_top1_in_top5": 100.0 * float(np.mean([t in r for t, r in zip(top1, own5)])),
               "fp32_top5_contains_top1": 100.0 * float(np.mean([p in r for p, r in zip(pred, top5)])),
               f"top1_agreement_fp32_p>={CONFIDENT}": 100.0 * float((pred == top1)[confident].mean())}  # fmt: skip
        if labels is not None:
            row["accuracy"] = 100.0 * float((pred == labels).mean())
        result["variants"][name] = row
    text = json.dumps(result, indent=2)
    print(text)
    print(markdown(result))
    if args.out:
        with atomic_path(args.out) as tmp:
            tmp.write_text(text + "\n")
        with atomic_path(Path(args.out).with_suffix(".md")) as tmp:
            tmp.write_text(f"{described}; {len(images)} images\n\n{markdown(result)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
