"""Our inference paths against the peers, measured in one interleaved run.

    python benchmarks/inference_peers.py --out benchmarks/results/inference_peers

Every backend runs in its own process with 2 threads; rounds alternate A B C … / … C B A; the
table quotes the median of round medians and their spread. Writes ``OUT.json`` (the BenchReport)
and ``OUT.md`` (tables + the issue's acceptance ratios). α = 1.0, 224 × 224, batch 1 and 32.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from peers import register_peers  # benchmarks/peers.py

from mobilenet_v1.bench import BACKENDS, BenchOptions, run_bench
from mobilenet_v1.bench.report import markdown
from mobilenet_v1.files import atomic_path

OURS = ["eager", "inference", "inference-compile", "inference-bf16", "inference-bf16-compile",
        "ort-fp32", "ort-int8", "openvino-fp32", "openvino-bf16", "openvino-int8"]  # fmt: skip
PEERS = ["timm-eager", "timm-compile", "timm-ort-fp32", "timm-ort-int8", "timm-openvino-fp32",
         "timm-openvino-bf16", "timm-openvino-int8", "keras-torch"]  # fmt: skip
PURE_PYTORCH = ["inference", "inference-compile", "inference-bf16", "inference-bf16-compile"]


def best(report, names, batch, precision=None):
    rows = [t for t in report.timings if t.backend in names and t.batch == batch]
    rows = [t for t in rows if precision is None or t.precision == precision]
    return min(rows, key=lambda t: t.median_ms) if rows else None


def verdict(label: str, ours, theirs, need: float) -> str:
    """One line: who, how fast, the ratio (theirs/ours) against the target ratio."""
    if ours is None or theirs is None:
        return f"- {label}: not measured (backend missing)"
    ratio = theirs.median_ms / ours.median_ms
    ok = "met" if ratio >= need else f"MISSED by {100 * (need - ratio) / need:.0f}% (needs {need:g}×)"
    return (f"- {label}: ours {ours.backend} {ours.median_ms:.2f} ms vs {theirs.backend} {theirs.median_ms:.2f} ms "
            f"= {ratio:.2f}× (target ≥ {need:g}×): {ok}")  # fmt: skip


def acceptance(report) -> str:
    ours = [n for n in OURS if n != "eager"]
    lines = ["Targets, ratios = peer (or baseline) median / ours, same run:"]
    for b in (1,):
        lines.append(verdict(f"batch {b}: our best fp32 vs fastest fp32 peer", best(report, ours, b, "fp32"),
                             best(report, PEERS, b, "fp32"), 1.0))  # fmt: skip
    for b in (1, 32):
        lines.append(verdict(f"batch {b}: pure-PyTorch fp32 path vs timm eager", best(report, PURE_PYTORCH, b, "fp32"),
                             report.timing("timm-eager", b), 2.5))  # fmt: skip
        lines.append(verdict(f"batch {b}: pure-PyTorch path, any precision (bf16 labelled) vs timm eager",
                             best(report, PURE_PYTORCH, b), report.timing("timm-eager", b), 2.5))  # fmt: skip
    lines.append(verdict("batch 1: our best int8 vs fastest int8 peer", best(report, ours, 1, "int8"),
                         best(report, PEERS, 1, "int8"), 1.0))  # fmt: skip
    lines.append(verdict("batch 1: our best int8 vs our best fp32", best(report, ours, 1, "int8"),
                         best(report, ours, 1, "fp32"), 2.0))  # fmt: skip
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="benchmarks/results/inference_peers")
    p.add_argument("--backends", default=",".join(OURS + PEERS))
    p.add_argument("--batch", default="1,32")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--omp-wait-policy", choices=("PASSIVE", "ACTIVE"), default=None)
    args = p.parse_args(argv)
    register_peers()
    backends = [b for b in args.backends.split(",") if b in BACKENDS]
    command = "python benchmarks/inference_peers.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    report = run_bench(BenchOptions(backends=backends, batches=[int(b) for b in args.batch.split(",")],
                                    rounds=args.rounds, iters=args.iters, command=command,
                                    omp_wait_policy=args.omp_wait_policy))  # fmt: skip
    text = markdown(report, baseline="timm-eager") + "\n\n" + acceptance(report) + "\n"
    print(text)
    with atomic_path(args.out + ".json") as tmp:
        tmp.write_text(report.to_json() + "\n")
    with atomic_path(args.out + ".md") as tmp:
        tmp.write_text(f"command: `{command}`\n\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
