"""Markdown tables of a :class:`BenchReport` (the CLI prints them)."""

from __future__ import annotations

from .backends import BACKENDS
from .results import BenchReport


def _fmt_share(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.0f}%"


def timings_table(report: BenchReport, baseline: str | None = None) -> str:
    """One row per backend and batch; ``× base`` is the baseline's median over this row's (same batch)."""
    head = "| backend | precision | batch | median ms | p90 ms | round medians (min–max) | img/s | GFLOP/s | of peak |"
    lines = [head + (" × " + baseline + " |" if baseline else ""), "|" + "---|" * (9 + bool(baseline))]
    for t in report.timings:
        row = (f"| {t.backend} | {t.precision} | {t.batch} | {t.median_ms:.2f} | {t.p90_ms:.2f} | "
               f"{t.spread_ms[0]:.2f}–{t.spread_ms[1]:.2f} | {t.images_per_s:.1f} | {t.gflops:.1f} | "
               f"{_fmt_share(t.peak_share)} |")  # fmt: skip
        if baseline:
            base = report.timing(baseline, t.batch)
            row += f" {base.median_ms / t.median_ms:.2f} |" if base else " |"
        lines.append(row)
    return "\n".join(lines)


def markdown(report: BenchReport, baseline: str | None = "eager") -> str:
    cfg = report.config
    env = report.env
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v)
    out = [
        f"MobileNet-V1 α = {cfg['width_multiplier']:g}, {cfg['resolution']}×{cfg['resolution']}, "
        f"{report.mult_adds / 1e6:.2f} M Mult-Adds/image ({2 * report.mult_adds / 1e9:.3f} GFLOP); "
        f"{report.threads} threads; {env['cpu']} ({env['torch_cpu_capability']}); "
        f"OMP_WAIT_POLICY in the workers: {env.get('omp_wait_policy', 'not recorded')}",
        f"versions: {versions}",
        "load average (1/5/15 min) before: "
        + " ".join(f"{x:.2f}" for x in report.load_before)
        + ", after: "
        + " ".join(f"{x:.2f}" for x in report.load_after),
        "GEMM peak: " + "; ".join(f"{p.precision} {p.gflops:.0f} GFLOP/s ({p.how})" for p in report.peaks),
        "",
        timings_table(report, baseline if baseline and any(t.backend == baseline for t in report.timings) else None),
    ]
    if report.skipped:
        out += ["", "skipped: " + "; ".join(f"{k}: {v}" for k, v in report.skipped.items())]
    notes = {t.backend for t in report.timings}
    out += ["", "backends: " + "; ".join(f"{n}: {BACKENDS[n].note}" for n in BACKENDS if n in notes)]
    if report.profile:
        p = report.profile
        out += [
            "",
            f"Time by layer type ({p.backend}, batch {p.batch}, {p.total_ms:.2f} ms per forward):",
            "",
            "| layer type | ms | time share | Mult-Adds share (Table 2) | GFLOP/s |",
            "|---|---:|---:|---:|---:|",
        ]
        for r in p.rows:
            share = "" if r.mult_adds_share is None else f"{r.mult_adds_share:.2f}%"
            rate = "" if r.gflops is None else f"{r.gflops:.1f}"
            out.append(f"| {r.layer_type} | {r.time_ms:.2f} | {r.time_share:.1f}% | {share} | {rate} |")
    if report.grid:
        g = report.grid
        out += ["", f"Grid (batch {g.batch}): Pearson r of latency vs Mult-Adds: "
                + ", ".join(f"{b} {r:.3f}" for b, r in g.correlation.items())
                + (f"; plot: {g.plot}" if g.plot else ""), "",
                "| model | Mult-Adds (M) | backend | median ms |", "|---|---:|---|---:|"]  # fmt: skip
        for pt in g.points:
            out.append(f"| {pt.name} | {pt.mult_adds / 1e6:.1f} | {pt.backend} | {pt.median_ms:.2f} |")
    return "\n".join(out)
