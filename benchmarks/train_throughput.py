"""Training images/s at batch 32: our MobileNet against timm's ``mobilenetv1_100``, one interleaved run.

    python benchmarks/train_throughput.py --out benchmarks/results/train_throughput

Each configuration runs in its own process with 2 threads; rounds alternate the order
(A B C …, then … C B A). A step is forward + cross-entropy + backward + SGD(momentum) step on a fixed
random batch, timed after warm-up (which includes torch.compile's compilation). Reported: median of the
round medians, the spread (min–max of round medians), and images/s = batch / median step time.

``--paired STEPS`` instead keeps every configuration's process alive at once and steps them in turn (order
reversed every step), so that the i-th steps of all configurations run within seconds of each other; the ratio
to timm is the median of the per-step ratios, with quartiles. On a host whose speed drifts (a shared VM) this
keeps the drift out of the ratio, which per-round medians from separate processes do not.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

CONFIGS = {
    # name: (implementation, channels_last, bf16, compile, allocator tuning as our trainer does it)
    "timm-fp32": ("timm", False, False, False, False),
    "timm-cl": ("timm", True, False, False, False),
    "timm-bf16-cl": ("timm", True, True, False, False),
    "ours-bf16-cl": ("ours", True, True, False, False),
    "ours-compile-cl": ("ours", True, False, True, False),
    "ours-compile-bf16-cl": ("ours", True, True, True, False),
    # `mobilenet-v1 train` calls allocator.keep_freed_memory(); these rows measure that, and the same
    # tuning given to timm (a timm user can get it with glibc's MALLOC_* variables) for a fair reading.
    "ours-cl-tuned": ("ours", True, False, False, True),
    "ours-bf16-cl-tuned": ("ours", True, True, False, True),
    "timm-cl-tuned": ("timm", True, False, False, True),
    "timm-bf16-cl-tuned": ("timm", True, True, False, True),
    # + the CPU training kernels (mobilenet_v1.kernels): what `mobilenet-v1 train` runs on a CPU in fp32
    "ours-cl-tuned-fused": ("ours", True, False, False, True),
}
FUSED = {n for n in CONFIGS if n.startswith("ours-cl-tuned-fused")}


def build(name: str, size: int, batch: int):
    """The training step of config ``name`` at this size: a function that runs one step."""
    import torch

    torch.set_num_threads(2)
    torch.manual_seed(0)
    impl, channels_last, bf16, compiled, tuned = CONFIGS[name]
    if tuned:
        from mobilenet_v1.allocator import keep_freed_memory

        keep_freed_memory()
    if impl == "timm":
        import timm

        model = timm.create_model("mobilenetv1_100", num_classes=1000)
    else:
        from mobilenet_v1 import create_model

        model = create_model("mobilenet_v1_100_224")
        if name in FUSED:
            from mobilenet_v1 import kernels

            assert kernels.enable(model), "the training kernels could not be built here"
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format).train()
    step_model = torch.compile(model) if compiled else model
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=memory_format)
    y = torch.randint(0, 1000, (batch,))

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(step_model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def timed(step) -> float:
    t = time.perf_counter()
    step()
    return time.perf_counter() - t


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB; the worker's whole life


def worker(name: str, size: int, batch: int, iters: int, warmup: int) -> dict:
    step = build(name, size, batch)
    for _ in range(warmup):
        step()
    times = [timed(step) for _ in range(iters)]
    return {"name": name, "size": size, "times": times, "peak_rss_mb": peak_rss_mb()}


def serve(name: str, size: int, batch: int, warmup: int) -> None:
    """--paired's worker: build and warm up, say "ready", then one step per "step" line read from stdin, printing
    its time; at end of input, the peak RSS."""
    step = build(name, size, batch)
    for _ in range(warmup):
        step()
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() == "step":
            print(f"{timed(step):.6f}", flush=True)
    print(json.dumps({"peak_rss_mb": peak_rss_mb()}), flush=True)


def paired(configs: list[str], size: int, batch: int, steps: int, warmup: int) -> dict[str, dict]:
    """One live worker process per config (each with its own settings, e.g. malloc tuning), stepped in turn — the
    order reversed every step — so that each config's i-th step runs within seconds of the others' on a host
    whose speed drifts; returns each config's step times and peak RSS."""
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}  # the waiting workers' OpenMP threads sleep, not spin
    procs = {}
    for name in configs:
        cmd = [sys.executable, __file__, "--serve", name, "--size", str(size), "--batch", str(batch)]
        cmd += ["--warmup", str(warmup)]
        procs[name] = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        assert procs[name].stdout.readline().strip() == "ready", f"{name} did not start"
    times = {name: [] for name in configs}
    for i in range(steps):
        for name in configs if i % 2 == 0 else configs[::-1]:
            procs[name].stdin.write("step\n")
            procs[name].stdin.flush()
            times[name].append(float(procs[name].stdout.readline()))
    out = {}
    for name, proc in procs.items():
        rest, _ = proc.communicate("")
        out[name] = {"times": times[name], **json.loads(rest.strip().splitlines()[-1])}
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", type=int, nargs="+", default=[224, 128])
    p.add_argument("--configs", nargs="+", default=list(CONFIGS))
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--out", default="benchmarks/results/train_throughput")
    p.add_argument(
        "--paired",
        type=int,
        metavar="STEPS",
        help="instead of rounds: all configs alive at once, stepped in turn for STEPS steps each; the ratio to timm "
        "is the median of the per-step ratios",
    )
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--serve", help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.size, args.batch, args.iters, args.warmup)))
        return
    if args.serve:
        serve(args.serve, args.size, args.batch, args.warmup)
        return
    load_before = os.getloadavg()
    if args.paired:
        rows = []
        for size in args.sizes:
            got = paired(args.configs, size, args.batch, args.paired, args.warmup)
            rows += paired_rows(got, size, args.batch)
            print(f"{size}: " + ", ".join(f"{r['config']} {r['images_per_s']:.1f} img/s" for r in rows[-len(got) :]))
        result = {**run_info(args.batch, load_before), "paired_steps": args.paired, "rows": rows}
        write_results(args.out, result, paired_markdown(result))
        return
    rounds: dict[tuple[str, int], list[float]] = {}
    peaks: dict[tuple[str, int], list[float]] = {}
    for r in range(args.rounds):
        order = [(c, s) for s in args.sizes for c in args.configs]
        for name, size in order if r % 2 == 0 else order[::-1]:
            cmd = [
                sys.executable,
                __file__,
                "--worker",
                name,
                "--size",
                str(size),
                "--batch",
                str(args.batch),
                "--iters",
                str(args.iters),
                "--warmup",
                str(args.warmup),
            ]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            report = json.loads(out)
            times = report["times"]
            rounds.setdefault((name, size), []).append(statistics.median(times))
            peaks.setdefault((name, size), []).append(report["peak_rss_mb"])
            print(f"round {r + 1} {name} @{size}: {args.batch / statistics.median(times):.1f} img/s", flush=True)
    rows = []
    for (name, size), meds in rounds.items():
        med = statistics.median(meds)
        rows.append(
            {
                "config": name,
                "size": size,
                "median_step_s": med,
                "images_per_s": args.batch / med,
                "spread_images_per_s": [args.batch / max(meds), args.batch / min(meds)],
                "peak_rss_mb": statistics.median(peaks[(name, size)]),
            }
        )
    result = {**run_info(args.batch, load_before), "rounds": args.rounds, "iters_per_round": args.iters, "rows": rows}
    write_results(args.out, result, markdown(result))


def run_info(batch: int, load_before) -> dict:
    """The command, machine, versions and load of this run"""
    import timm
    import torch

    return {
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "machine": platform.processor() or platform.machine(),
        "cpu": _cpu_model(),
        "threads": 2,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "batch": batch,
        "load_before": load_before,
        "load_after": os.getloadavg(),
    }


def _quartiles(values: list[float]) -> list[float]:
    q = statistics.quantiles(values, n=4)
    return [q[0], q[2]]


def paired_rows(got: dict[str, dict], size: int, batch: int) -> list[dict]:
    """Per config: median images/s over its steps, their quartiles, and against the untuned timm config (if one
    ran) the median and quartiles of the per-step ratios (timm's i-th step time / this config's)."""
    timm_times = next((g["times"] for n, g in got.items() if CONFIGS[n][0] == "timm" and not CONFIGS[n][4]), None)
    rows = []
    for name, g in got.items():
        ips = [batch / t for t in g["times"]]
        row = {
            "config": name,
            "size": size,
            "median_step_s": statistics.median(g["times"]),
            "images_per_s": statistics.median(ips),
            "quartiles_images_per_s": _quartiles(ips),
            "peak_rss_mb": g["peak_rss_mb"],
            "step_times_s": g["times"],
        }
        if timm_times:
            ratios = [a / b for a, b in zip(timm_times, g["times"])]
            row |= {"paired_ratio_median": statistics.median(ratios), "paired_ratio_quartiles": _quartiles(ratios)}
        rows.append(row)
    return rows


def paired_markdown(result: dict) -> str:
    lines = [
        f"`{result['command']}` — {result['cpu']}, {result['threads']} threads, torch {result['torch']}, "
        f"timm {result['timm']}, batch {result['batch']}, {result['paired_steps']} paired steps per config, load "
        f"{result['load_before'][0]:.2f} → {result['load_after'][0]:.2f}",
        "",
        "| size | config | img/s (median) | quartiles | × timm, median of per-step ratios (quartiles) | peak RSS MB |",
        "|---:|---|---:|---|---|---:|",
    ]
    for r in result["rows"]:
        lo, hi = r["quartiles_images_per_s"]
        ratio = "—"
        if "paired_ratio_median" in r:
            qlo, qhi = r["paired_ratio_quartiles"]
            ratio = f"{r['paired_ratio_median']:.2f} ({qlo:.2f}–{qhi:.2f})"
        lines.append(
            f"| {r['size']} | {r['config']} | {r['images_per_s']:.1f} | {lo:.1f}–{hi:.1f} | {ratio} | "
            f"{r['peak_rss_mb']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def write_results(out: str, result: dict, table: str) -> None:
    """``out``.json and ``out``.md, and the table on stdout."""
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out + ".json", "w") as f:
        json.dump(result, f, indent=2)
    with open(out + ".md", "w") as f:
        f.write(table)
    print(table)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def markdown(result: dict) -> str:
    lines = [
        f"`{result['command']}` — {result['cpu']}, {result['threads']} threads, torch {result['torch']}, "
        f"timm {result['timm']}, batch {result['batch']}, {result['rounds']} rounds × {result['iters_per_round']} "
        f"steps, load {result['load_before'][0]:.2f} → {result['load_after'][0]:.2f}",
        "",
        "| size | config | img/s (median) | spread | × timm best eager (untuned) | peak RSS MB (median) |",
        "|---:|---|---:|---|---:|---:|",
    ]
    untuned_timm = lambda r: CONFIGS[r["config"]][0] == "timm" and not CONFIGS[r["config"]][4]  # noqa: E731
    peak = lambda r: f"{r['peak_rss_mb']:.0f}" if "peak_rss_mb" in r else "—"  # noqa: E731
    table = ratio_lines(result["rows"], "size", untuned_timm, digits=1, descending=True, extra=peak)
    return "\n".join(lines + table) + "\n"


def ratio_lines(rows: list[dict], key: str, baseline, digits: int, descending: bool = False, extra=None) -> list[str]:
    """Markdown rows grouped by ``key``: images/s, spread, the ratio to the group's best ``baseline`` row, and
    ``extra(row)`` in one more column if given."""
    lines = []
    for value in sorted({r[key] for r in rows}, reverse=descending):
        group = [r for r in rows if r[key] == value]
        best = max((r["images_per_s"] for r in group if baseline(r)), default=float("nan"))
        for r in group:
            lo, hi = r["spread_images_per_s"]
            lines.append(
                f"| {value} | {r['config']} | {r['images_per_s']:.{digits}f} | {lo:.{digits}f}–{hi:.{digits}f} | "
                f"{r['images_per_s'] / best:.2f} |" + (f" {extra(r)} |" if extra else "")
            )
    return lines


if __name__ == "__main__":
    main()
