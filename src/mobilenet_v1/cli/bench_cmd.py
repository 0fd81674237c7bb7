"""``mobilenet-v1 bench``: latency and throughput of our inference paths (and peers), interleaved.

mobilenet-v1 bench --alpha 1.0 --resolution 224 --batch 1,32 --backends eager,inference,ort-int8
mobilenet-v1 bench --profile           # time by layer type beside Table 2's Mult-Adds shares
mobilenet-v1 bench --grid --plot grid.png --backends inference
"""

from __future__ import annotations

import argparse
import shlex
import sys

from .model_args import positive_int


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--alpha", type=float, default=1.0, help="width multiplier α (Section 4.2)")
    p.add_argument("--resolution", type=int, default=224, help="input resolution; ρ = resolution/224")
    p.add_argument("--model-dir", help="benchmark a saved model (its config overrides --alpha/--resolution)")
    p.add_argument("--batch", type=_ints, default=[1, 32], help="batch sizes, comma-separated (default 1,32)")
    ours = "eager, inference*, ort-*, openvino-*"
    p.add_argument("--backends", default=None, help=f"comma-separated; default: all of ours ({ours}); the peers "
                   "(timm, Keras) are timed beside them by benchmarks/inference_peers.py")
    p.add_argument("--threads", type=positive_int, default=2, help="threads for every engine (default 2)")
    p.add_argument("--rounds", type=positive_int, default=6, help="interleaved rounds (default 6)")
    p.add_argument("--iters", type=positive_int, default=5, help="timed iterations per round (default 5)")
    p.add_argument("--calibration",
                   help="image directory for int8 calibration (default: synthetic images; timing needs no real ones)")
    p.add_argument("--grid", action="store_true", help="also time the paper's 16 α × resolution models")
    p.add_argument("--grid-backends", default="inference", help="backends for --grid (default inference)")
    p.add_argument("--plot", default="bench_grid.png", help="PNG for --grid (default bench_grid.png)")
    p.add_argument("--profile", action="store_true", help="time by layer type beside Table 2's Mult-Adds shares")
    p.add_argument("--baseline", default="eager", help="backend the ratio column divides by (default eager)")
    p.add_argument(
        "--omp-wait-policy",
        choices=("PASSIVE", "ACTIVE"),
        default=None,
        help="OMP_WAIT_POLICY for the timed processes (default: the OpenMP runtime's own, whatever "
        "this shell exports; PASSIVE adds ~5 ms to a batch-1 PyTorch forward on 2 cores)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    from ..bench.backends import DEFAULT_BACKENDS, check_backends  # noqa: PLC0415
    from ..bench.report import markdown  # noqa: PLC0415
    from ..bench.runner import BenchOptions, run_bench  # noqa: PLC0415

    backends = [b for b in args.backends.split(",") if b] if args.backends else list(DEFAULT_BACKENDS)
    grid_backends = [b for b in args.grid_backends.split(",") if b]
    check_backends(backends + (grid_backends if args.grid else []))
    if not args.batch:
        raise ValueError("--batch needs at least one batch size")
    options = BenchOptions(
        width_multiplier=args.alpha, resolution=args.resolution, model_dir=args.model_dir, batches=args.batch,
        backends=backends, threads=args.threads, rounds=args.rounds, iters=args.iters,
        calibration=args.calibration, profile=args.profile, grid=args.grid, grid_backends=grid_backends,
        plot=args.plot if args.grid else None, command="mobilenet-v1 " + shlex.join(sys.argv[1:]),
        omp_wait_policy=args.omp_wait_policy,
    )  # fmt: skip
    report = run_bench(options)
    print(report.to_json() if args.json else markdown(report, args.baseline))
    return 0
