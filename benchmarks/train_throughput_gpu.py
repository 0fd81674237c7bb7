"""Training images/s on a GPU: our MobileNet against timm's ``mobilenetv1_100``, one interleaved run.

    python benchmarks/train_throughput_gpu.py --out benchmarks/results/gpu_train_throughput

Training images/s at α = 1.0, 224, AMP and channels_last, against timm in the same run. A step is forward + cross-
entropy + backward + SGD(momentum) step on a fixed random batch, the same step as ``train_throughput.py`` (the CPU
benchmark). All configurations live in one process (a GPU's timing does not depend on the CPU allocator state that
made the CPU benchmark use one process per configuration); each is warmed up first (cuDNN autotuning,
``torch.compile``'s compilation), then rounds alternate the order (A B C …, then … C B A), each round timing
``--iters`` steps between two ``torch.cuda.synchronize()``. Reported: median of the round figures, their spread, and
the ratio to timm's best eager configuration at the same batch size.

AMP: ``bf16`` is autocast to bfloat16 (what ``mobilenet-v1 train`` uses on a GPU: no loss scaling);
``fp16`` is autocast to float16 with a ``GradScaler`` (timm's ``train.py --amp`` default). fp32 rows run
with PyTorch's defaults (TF32 allowed in cuDNN convolutions).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

from train_throughput import ratio_lines, write_results  # benchmarks/ is the script's directory

CONFIGS = {
    # name: (implementation, channels_last, autocast dtype name or None, torch.compile)
    "timm-fp32": ("timm", False, None, False),
    "timm-cl": ("timm", True, None, False),
    "timm-bf16-cl": ("timm", True, "bfloat16", False),
    "timm-fp16-cl": ("timm", True, "float16", False),
    "ours-cl": ("ours", True, None, False),
    "ours-bf16-cl": ("ours", True, "bfloat16", False),
    "ours-fp16-cl": ("ours", True, "float16", False),
    "ours-compile-bf16-cl": ("ours", True, "bfloat16", True),
}
EAGER_DEFAULT = [name for name, c in CONFIGS.items() if not c[3]]


def make_step(name: str, size: int, batch: int, device):
    """A closure running one training step of configuration ``name``."""
    import torch

    impl, channels_last, amp, compiled = CONFIGS[name]
    torch.manual_seed(0)
    if impl == "timm":
        import timm

        model = timm.create_model("mobilenetv1_100", num_classes=1000)
    else:
        from mobilenet_v1 import create_model

        model = create_model("mobilenet_v1_100_224")
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format).train()
    step_model = torch.compile(model) if compiled else model
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    dtype = getattr(torch, amp) if amp else None
    scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=memory_format)
    y = torch.randint(0, 1000, (batch,), device=device)

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = torch.nn.functional.cross_entropy(step_model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    return step


def measure(configs: list[str], size: int, batch: int, rounds: int, iters: int, warmup: int, device) -> list[dict]:
    import torch

    steps = {}
    for name in configs:
        steps[name] = make_step(name, size, batch, device)
        t = time.perf_counter()
        for _ in range(warmup):
            steps[name]()
        torch.cuda.synchronize(device)
        print(f"warm-up {name} b{batch}: {time.perf_counter() - t:.1f} s", flush=True)
    per_round: dict[str, list[float]] = {name: [] for name in configs}
    for r in range(rounds):
        for name in configs if r % 2 == 0 else configs[::-1]:
            torch.cuda.synchronize(device)
            t = time.perf_counter()
            for _ in range(iters):
                steps[name]()
            torch.cuda.synchronize(device)
            per_round[name].append(batch * iters / (time.perf_counter() - t))
            print(f"round {r + 1} {name} b{batch}: {per_round[name][-1]:.0f} img/s", flush=True)
    return [
        {
            "config": name,
            "size": size,
            "batch": batch,
            "images_per_s": statistics.median(v),
            "spread_images_per_s": [min(v), max(v)],
        }
        for name, v in per_round.items()
    ]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batches", type=int, nargs="+", default=[32, 256])
    p.add_argument("--configs", nargs="+", default=EAGER_DEFAULT, choices=list(CONFIGS))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--warmup", type=int, default=15)
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", default="benchmarks/results/gpu_train_throughput")
    args = p.parse_args()
    import timm
    import torch

    if not torch.cuda.is_available():
        sys.exit("train_throughput_gpu.py: no CUDA device (the CPU benchmark is train_throughput.py)")
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    rows = []
    for batch in args.batches:
        rows += measure(args.configs, args.size, batch, args.rounds, args.iters, args.warmup, device)
    result = {
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "gpu": torch.cuda.get_device_name(device),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "timm": timm.__version__,
        "rounds": args.rounds,
        "iters_per_round": args.iters,
        "rows": rows,
    }
    write_results(args.out, result, markdown(result))


def markdown(result: dict) -> str:
    lines = [
        f"`{result['command']}` — {result['gpu']}, torch {result['torch']} (CUDA {result['cuda']}, cuDNN "
        f"{result['cudnn']}), timm {result['timm']}, {result['rounds']} rounds × {result['iters_per_round']} steps",
        "",
        "| batch | config | img/s (median) | spread | × timm best eager |",
        "|---:|---|---:|---|---:|",
    ]
    timm = lambda r: CONFIGS[r["config"]][0] == "timm"  # noqa: E731
    return "\n".join(lines + ratio_lines(result["rows"], "batch", timm, digits=0)) + "\n"


if __name__ == "__main__":
    main()
