"""Pure-PyTorch inference paths against timm eager, α = 1.0, 224, one process, rounds interleaved.

    python benchmarks/pytorch_paths_probe.py --batch 1

A quick probe (not the full peer benchmark, ``inference_peers.py``): besides our ``optimize_for_inference``
path it times ``torch.utils.mkldnn.to_mkldnn`` on the BN-folded model — oneDNN weights pre-packed once and
activations kept in oneDNN's blocked layout from input to output — which is a candidate for the issue-5
target (pure PyTorch ≥ 2.5× timm eager at batch 1). Median of round medians; 2 threads.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import timm
import torch
from torch.utils.mkldnn import to_mkldnn

from mobilenet_v1 import create_model
from mobilenet_v1.deploy import optimize_for_inference
from mobilenet_v1.deploy.fold import fold_bn


def paths(x: torch.Tensor) -> dict:
    ours = create_model("mobilenet_v1_100_224").eval()
    tm = timm.create_model("mobilenetv1_100").eval()
    fp32 = optimize_for_inference(ours, precision="fp32")
    bf16 = optimize_for_inference(ours, precision="bf16")
    mk32 = to_mkldnn(fold_bn(ours).eval())
    mk16 = to_mkldnn(fold_bn(ours).eval(), torch.bfloat16)
    return {
        "timm-eager (fp32)": lambda: tm(x),
        "inference (fp32)": lambda: fp32(x),
        "inference (bf16)": lambda: bf16(x),
        "mkldnn (fp32)": lambda: mk32(x.to_mkldnn()).to_dense(),
        "mkldnn (bf16)": lambda: mk16(x.to_mkldnn(torch.bfloat16)).to_dense(torch.float32),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--iters", type=int, default=10)
    args = p.parse_args()
    torch.set_num_threads(2)
    x = torch.randn(args.batch, 3, 224, 224)
    fns = paths(x)
    load = os.getloadavg()[0]
    with torch.inference_mode():
        for f in fns.values():
            for _ in range(3):
                f()
        rounds = {k: [] for k in fns}
        for r in range(args.rounds):
            for k in list(fns) if r % 2 == 0 else list(fns)[::-1]:
                times = []
                for _ in range(args.iters):
                    t = time.perf_counter()
                    fns[k]()
                    times.append(time.perf_counter() - t)
                rounds[k].append(statistics.median(times))
    base = statistics.median(rounds["timm-eager (fp32)"])
    print(f"batch {args.batch}, torch {torch.__version__}, timm {timm.__version__}, "
          f"load {load:.2f} -> {os.getloadavg()[0]:.2f}\n")  # fmt: skip
    print("| path | median ms | round medians | × timm eager |\n|---|---:|---|---:|")
    for k, v in rounds.items():
        m = statistics.median(v)
        print(f"| {k} | {m * 1e3:.2f} | {min(v) * 1e3:.2f}–{max(v) * 1e3:.2f} | {base / m:.2f} |")


if __name__ == "__main__":
    main()
