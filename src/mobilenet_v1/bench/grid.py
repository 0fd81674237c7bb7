"""``--grid``: latency of the paper's 16 α × resolution models against their exact Mult-Adds.

The paper uses Mult-Adds as its proxy for latency (Section 3). On a CPU, depthwise convolutions are
memory-bound and tiny layers are overhead-bound, so the proxy may bend; the Pearson correlation and
the plot say by how much. One worker per backend holds all 16 models, timed round-robin.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from ..checkpoint import Preprocessing
from ..cost import cost_of
from ..deploy.calibration import calibration_reader, synthetic_images
from ..deploy.onnx_export import export_onnx
from ..deploy.quantize import quantize_onnx
from ..files import atomic_path
from ..model import MobileNetV1
from ..registry import RESOLUTIONS, WIDTHS, model_config
from .backends import BACKENDS, Job, check_backends, missing_module
from .results import Grid, GridPoint
from .worker import start_worker, summarize

PAPER_16 = [f"mobilenet_v1_{w}_{r}" for w in WIDTHS for r in RESOLUTIONS]  # Table 6 × Table 7


def run_grid(
    backends: list[str], batch: int = 1, threads: int = 2, rounds: int = 4, iters: int = 8,
    plot: str | os.PathLike | None = None, skipped: dict | None = None, omp_wait_policy: str | None = None,
) -> Grid:  # fmt: skip
    check_backends(backends)
    configs = {name: model_config(name) for name in PAPER_16}
    points: list[GridPoint] = []
    skipped = skipped if skipped is not None else {}
    with tempfile.TemporaryDirectory(prefix="mnv1-grid-") as work:
        for backend in backends:
            if missing_module(backend):
                skipped[f"grid:{backend}"] = f"{missing_module(backend)} is not installed"
                continue
            jobs = [Job(backend, c.to_dict(), None, _files(backend, n, c, Path(work))) for n, c in configs.items()]
            worker, error = start_worker(backend, jobs, [batch], threads, omp_wait_policy)
            if worker is None:
                skipped[f"grid:{backend}"] = error
                continue
            try:
                # round-robin over the 16 models, so a change in machine load lands on all of them alike
                times: dict[int, list[list[float]]] = {j: [] for j in range(len(configs))}
                for _ in range(rounds):
                    for j, so_far in times.items():
                        so_far.append(worker.round(j, batch, iters))
                for j, (name, config) in enumerate(configs.items()):
                    points.append(GridPoint(name, config.width_multiplier, config.resolution,
                                            cost_of(config).mult_adds, backend, summarize(times[j])[0]))  # fmt: skip
            finally:
                worker.stop()
    correlation = {}
    for backend in {p.backend for p in points}:
        mine = [p for p in points if p.backend == backend]
        correlation[backend] = float(np.corrcoef([p.mult_adds for p in mine], [p.median_ms for p in mine])[0, 1])
    grid = Grid(batch, points, correlation)
    if plot and points:
        grid.plot = str(plot_grid(grid, plot))
    return grid


def _files(backend: str, name: str, config, work: Path) -> dict[str, str]:
    """ONNX exports for one grid model (only for the ONNX-based backends of ours)."""
    needs = set(BACKENDS[backend].needs)
    if not needs:
        return {}
    if needs - {"onnx", "int8"}:
        raise ValueError(f"--grid runs our fp32 models and default int8 exports only; not {backend}")

    fp32 = work / f"{name}.onnx"
    if not fp32.exists():
        export_onnx(MobileNetV1(config=config).eval(), fp32)
    files = {"onnx": str(fp32)}
    if "int8" in needs:
        int8 = work / f"{name}.int8.onnx"
        if not int8.exists():
            pre = Preprocessing(input_size=config.resolution)
            quantize_onnx(fp32, int8, calibration_reader(synthetic_images(64, config.resolution), pre))
        files["int8"] = str(int8)
    return files


def plot_grid(grid: Grid, path: str | os.PathLike) -> Path:
    """Latency against Mult-Adds, one marker series per backend, each point labelled α/resolution."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")  # files only; no display on a server
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(7, 5))
    for backend in sorted({p.backend for p in grid.points}):
        mine = [p for p in grid.points if p.backend == backend]
        r = grid.correlation.get(backend, float("nan"))
        ax.scatter([p.mult_adds / 1e6 for p in mine], [p.median_ms for p in mine], label=f"{backend} (r = {r:.3f})")
        for p in mine:
            ax.annotate(f"{p.width_multiplier:g}/{p.resolution}", (p.mult_adds / 1e6, p.median_ms), fontsize=6)
    ax.set_xscale("log")  # the 16 models span 13.6–569 M Mult-Adds and ~0.2–10 ms: log-log shows a power law
    ax.set_yscale("log")
    ax.set_xlabel("Mult-Adds (millions, exact)")
    ax.set_ylabel(f"median latency, batch {grid.batch} (ms)")
    ax.set_title("MobileNet-V1: the paper's 16 models — latency vs Mult-Adds")
    ax.grid(alpha=0.3)
    ax.legend()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
