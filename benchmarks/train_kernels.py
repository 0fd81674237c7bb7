"""The CPU training kernels (mobilenet_v1.kernels) against PyTorch's operators, one layer at a time.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/train_kernels.py --out benchmarks/results/train_kernels

Batch norm + ReLU (float32 and bfloat16 maps) and the 3×3 depthwise convolution (float32), forward + backward at
batch-32 MobileNet shapes, and the 1×1 convolutions' weight gradient (csrc/gemm.c against oneDNN's backward-
weights convolution, which ``conv2d``'s backward runs, and against ``torch.mm``, MKL), in one process with 2
threads and the trainer's malloc tuning. Each case alternates PyTorch and the kernel for several rounds of a few
calls; reported: the median call time of each and the ratio. A whole training step is `train_throughput.py`'s job;
this one says where its gain comes from.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn
from train_throughput import _cpu_model  # benchmarks/ is the script's directory

from mobilenet_v1.allocator import keep_freed_memory
from mobilenet_v1.kernels import batchnorm, build, convolution

BN_SHAPES = [(112, 64), (56, 128), (14, 512)]  # (size, channels): the largest maps at 224, and a 14×14 one
DW_SHAPES = [(112, 32, 1), (112, 64, 2), (56, 128, 1), (28, 256, 1), (14, 512, 1), (7, 1024, 1)]
PW_SHAPES = [(112, 32, 64), (56, 128, 128), (28, 256, 256), (14, 512, 512), (7, 1024, 1024)]  # size, C_in, C_out


def _median_ms(fn, rounds: int, calls: int) -> float:
    times = []
    for _ in range(rounds):
        for _ in range(calls):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def _pair(name: str, pytorch, kernel, rounds: int, calls: int) -> dict:
    for fn in (pytorch, kernel):  # warm up: allocations, first-touch, the kernel library's build
        fn()
        fn()
    med = {"pytorch": [], "kernel": []}
    for r in range(rounds):
        order = [("pytorch", pytorch), ("kernel", kernel)]
        for key, fn in order if r % 2 == 0 else order[::-1]:
            med[key].append(_median_ms(fn, 1, calls))
    row = {"case": name, "pytorch_ms": statistics.median(med["pytorch"]), "kernel_ms": statistics.median(med["kernel"])}
    row["speedup"] = row["pytorch_ms"] / row["kernel_ms"]
    print(f"{name}: PyTorch {row['pytorch_ms']:.1f} ms, kernel {row['kernel_ms']:.1f} ms ({row['speedup']:.2f}×)")
    return row


def _pointwise_weight_grad(batch: int, size: int, c_in: int, c_out: int, rounds: int, calls: int) -> list[dict]:
    """dL/dW of a 1×1 convolution on channels-last maps: gemm.c against oneDNN's backward-weights and torch.mm"""
    x = torch.randn(batch, c_in, size, size).contiguous(memory_format=torch.channels_last)
    gy = torch.randn(batch, c_out, size, size).contiguous(memory_format=torch.channels_last)
    weight = torch.empty(c_out, c_in, 1, 1)
    gw = torch.empty(c_out, c_in)
    x_rows, gy_rows = x.permute(0, 2, 3, 1).reshape(-1, c_in), gy.permute(0, 2, 3, 1).reshape(-1, c_out)
    args = (None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1, [False, True, False])
    lib = build.load()

    def kernel():
        build._call(lib.gemm_at_b, gy.data_ptr(), c_out, x.data_ptr(), c_in, gw.data_ptr(), x_rows.shape[0], c_out,
                    c_in, *convolution._NO_BN)  # fmt: skip

    shape = f"1×1 dW {size}x{size}x{c_in}→{c_out}"
    return [
        _pair(
            f"{shape} vs oneDNN",
            lambda: torch.ops.aten.convolution_backward(gy, x, weight, *args),
            kernel,
            rounds,
            calls,
        ),
        _pair(f"{shape} vs torch.mm", lambda: torch.mm(gy_rows.t(), x_rows), kernel, rounds, calls),
    ]


def _pointwise_products(batch: int, size: int, c_in: int, c_out: int, rounds: int, calls: int) -> list[dict]:
    """A 1×1 convolution's forward y = x·Wᵀ and input gradient dL/dx = dL/dy·W on channels-last maps: gemm.c's
    gemm_a_w against oneDNN's convolution and its backward-data"""
    x = torch.randn(batch, c_in, size, size).contiguous(memory_format=torch.channels_last)
    gy = torch.randn(batch, c_out, size, size).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(c_out, c_in, 1, 1)
    args = (None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1, [True, False, False])
    lib, m = build.load(), batch * size * size
    y, gx = torch.empty_like(gy), torch.empty_like(x)
    no_sums = (None, None, *convolution._NO_BN)

    def forward():
        build._call(lib.gemm_a_w, x.data_ptr(), c_in, weight.data_ptr(), c_in, 1, y.data_ptr(), m, c_in, c_out,
                    *no_sums)  # fmt: skip

    def input_grad():
        build._call(lib.gemm_a_w, gy.data_ptr(), c_out, weight.data_ptr(), c_in, 0, gx.data_ptr(), m, c_out, c_in,
                    *no_sums)  # fmt: skip

    shape = f"{size}x{size}x{c_in}→{c_out}"
    return [
        _pair(f"1×1 forward {shape} vs oneDNN", lambda: F.conv2d(x, weight), forward, rounds, calls),
        _pair(
            f"1×1 dX {shape} vs oneDNN",
            lambda: torch.ops.aten.convolution_backward(gy, x, weight, *args),
            input_grad,
            rounds,
            calls,
        ),
    ]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--calls", type=int, default=5)
    p.add_argument("--out", default="benchmarks/results/train_kernels")
    p.add_argument("--size", type=int, default=224, help="input resolution the 1×1 cases' map sizes are scaled to")
    cases = ["bn", "depthwise", "pointwise", "pointwise-fwd"]
    p.add_argument("--cases", nargs="+", choices=cases, default=cases)
    args = p.parse_args()
    torch.set_num_threads(2)
    keep_freed_memory()
    if build.load() is None:
        raise SystemExit("the kernels could not be built here (no C compiler, or no AVX2/FMA)")
    torch.manual_seed(0)
    rows = []
    for size, ch in BN_SHAPES if "bn" in args.cases else []:
        for dtype in (torch.float32, torch.bfloat16):
            x = torch.randn(args.batch, ch, size, size).to(dtype).contiguous(memory_format=torch.channels_last)
            x.requires_grad_()
            g = torch.randn_like(x)
            bn = nn.BatchNorm2d(ch).train()
            rows.append(
                _pair(
                    f"BN+ReLU {size}x{size}x{ch} {str(dtype).split('.')[1]}",
                    lambda x=x, g=g, bn=bn: F.relu(bn(x), inplace=True).backward(g),
                    lambda x=x, g=g, bn=bn: batchnorm.batch_norm_relu(bn, x).backward(g),
                    args.rounds,
                    args.calls,
                )
            )
    for size, ch, stride in DW_SHAPES if "depthwise" in args.cases else []:
        x = torch.randn(args.batch, ch, size, size).contiguous(memory_format=torch.channels_last).requires_grad_()
        conv = nn.Conv2d(ch, ch, 3, stride, 1, groups=ch, bias=False)
        g = torch.randn_like(conv(x))
        rows.append(
            _pair(
                f"depthwise {size}x{size}x{ch} stride {stride}",
                lambda x=x, g=g, conv=conv: conv(x).backward(g),
                lambda x=x, g=g, conv=conv: convolution.depthwise(conv, x).backward(g),
                args.rounds,
                args.calls,
            )
        )
    scale = lambda size: size * args.size // 224  # noqa: E731
    for size, c_in, c_out in PW_SHAPES if "pointwise" in args.cases else []:
        rows += _pointwise_weight_grad(args.batch, scale(size), c_in, c_out, args.rounds, args.calls)
    for size, c_in, c_out in PW_SHAPES if "pointwise-fwd" in args.cases else []:
        rows += _pointwise_products(args.batch, scale(size), c_in, c_out, args.rounds, args.calls)
    result = {
        "command": " ".join(["python", *sys.argv]),
        "cpu": _cpu_model(),
        "threads": 2,
        "torch": torch.__version__,
        "batch": args.batch,
        "rounds": args.rounds,
        "calls_per_round": args.calls,
        "rows": rows,
    }
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(result, f, indent=2)
    lines = [
        f"`{result['command']}` — {result['cpu']}, 2 threads, torch {result['torch']}, batch {args.batch}, "
        f"{args.rounds} alternating rounds × {args.calls} calls, forward + backward (1×1 dW, forward, dX: that "
        "product alone), medians",
        "",
        "| case | PyTorch ms | kernel ms | speed-up |",
        "|---|---:|---:|---:|",
        *(f"| {r['case']} | {r['pytorch_ms']:.1f} | {r['kernel_ms']:.1f} | {r['speedup']:.2f}× |" for r in rows),
    ]
    with open(args.out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
