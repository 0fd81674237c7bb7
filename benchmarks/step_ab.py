"""Our training step at batch 32 from two source trees, A/B: is a change faster in the whole step?

    git worktree add ../before HEAD~1
    python benchmarks/step_ab.py ../before/src src --size 128 --rounds 6

Each round runs one process per tree, in alternating order (A B, then B A), each timing ``--steps`` steps of
``train_throughput.py``'s ``ours-cl-tuned-fused`` step after warm-up; a process's figure is its median step.
Reported: every process's figure in run order, each tree's median, and the ratio. A kernel's own timing has
often predicted gains the whole step did not show; this measures the step.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def child(size: int, steps: int, warmup: int) -> None:
    sys.path.insert(0, str(HERE))
    import train_throughput as tt

    step = tt.build("ours-cl-tuned-fused", size, 32)
    for _ in range(warmup):
        step()
    print(statistics.median(tt.timed(step) for _ in range(steps)) * 1e3)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("a", help="tree A's source directory (the one holding mobilenet_v1/)")
    p.add_argument("b", help="tree B's source directory")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args.size, args.steps, args.warmup)
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    cmd = [sys.executable, __file__, "a", "b", "--child", "--size", str(args.size), "--steps", str(args.steps)]
    cmd += ["--warmup", str(args.warmup)]
    ms: dict[str, list[float]] = {"A": [], "B": []}
    for r in range(args.rounds):
        for name in ("A", "B") if r % 2 == 0 else ("B", "A"):
            src = str(Path(args.a if name == "A" else args.b).resolve())
            out = subprocess.run(cmd, env={**env, "PYTHONPATH": src}, capture_output=True, text=True, check=True)
            ms[name].append(float(out.stdout.split()[-1]))
            print(f"round {r + 1} {name} {ms[name][-1]:.1f} ms", flush=True)
    a, b = statistics.median(ms["A"]), statistics.median(ms["B"])
    wins = sum(x < y for x, y in zip(ms["A"], ms["B"]))
    print(f"size {args.size}: A {a:.1f} ms, B {b:.1f} ms, B/A {b / a:.4f}; A faster in {wins} of {args.rounds} rounds")


if __name__ == "__main__":
    main()
