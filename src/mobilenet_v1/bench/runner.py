"""``run_bench``: prepare exports, measure the GEMM peaks, time every backend interleaved, return a report.

from mobilenet_v1.bench import BenchOptions, run_bench
report = run_bench(BenchOptions(backends=["eager", "inference", "ort-int8"], batches=[1, 32]))
print(report.to_json())
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..checkpoint import Preprocessing, read_config
from ..cost import cost_of
from ..deploy.calibration import calibration_reader, synthetic_images
from ..deploy.onnx_export import export_onnx
from ..deploy.quantize import quantize_onnx
from ..model import ModelConfig
from .backends import BACKENDS, DEFAULT_BACKENDS, Job, _our_model, check_backends, missing_module
from .grid import run_grid
from .peak import measure_peaks
from .profile import profile_layer_types
from .results import BenchReport, Timing
from .worker import interleave, start_worker, summarize

VERSIONED = ("torch", "torchvision", "onnx", "onnxruntime", "openvino", "executorch", "timm", "keras", "numpy")


@dataclass
class BenchOptions:
    width_multiplier: float = 1.0
    resolution: int = 224
    num_classes: int = 1000
    model_dir: str | None = None  # a trained/converted model; its config overrides α and resolution
    batches: list[int] = field(default_factory=lambda: [1, 32])
    backends: list[str] = field(default_factory=lambda: list(DEFAULT_BACKENDS))
    threads: int = 2
    rounds: int = 6
    iters: int = 5  # per round: rounds × iters ≥ 30 timed iterations per configuration
    calibration: str | None = None  # image directory; default: synthetic images (timing only: see timing_images)
    calibration_images: int = 300
    profile: bool = False
    grid: bool = False  # also time the paper's 16 models (grid.py)
    grid_backends: list[str] = field(default_factory=lambda: ["inference"])
    plot: str | None = None  # PNG of the grid
    command: str = ""
    omp_wait_policy: str | None = None  # for the workers; None: the OpenMP runtime's default (worker.py)


def environment(threads: int, command: str = "", omp_wait_policy: str | None = None) -> dict:
    versions = {}
    for pkg in VERSIONED:
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = None
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import torch  # noqa: PLC0415

    return {
        "versions": versions,
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": threads,
        "python": platform.python_version(),
        "command": command,
        "omp_wait_policy": omp_wait_policy or "default",
    }


def config_for(options: BenchOptions) -> ModelConfig:
    if options.model_dir:
        return read_config(options.model_dir).model
    return ModelConfig(options.width_multiplier, options.resolution, num_classes=options.num_classes)


def prepare_files(needs: set[str], config: ModelConfig, options: BenchOptions, work: Path) -> dict[str, str]:
    """Export the files the chosen backends need (ONNX fp32 and int8, ExecuTorch programs) into ``work``."""
    files: dict[str, str] = {}
    job = Job("", config.to_dict(), options.model_dir)
    for name, int8 in (("pte", False), ("pte_int8", True)):
        if name in needs:
            from ..deploy.mobile import export_executorch  # noqa: PLC0415

            calibration = calibration_images(options, config) if int8 else None
            export_executorch(_our_model(job), work / f"{name}.pte", int8=int8, calibration=calibration,
                              limit=options.calibration_images)  # fmt: skip
            files[name] = str(work / f"{name}.pte")
    if needs & {"onnx", "int8", "int8_uint8"}:
        model = _our_model(job)
        export_onnx(model, work / "ours.onnx")
        files["onnx"] = str(work / "ours.onnx")
    for fp32, int8, weight_type in (("onnx", "int8", "int8"), ("onnx", "int8_uint8", "uint8")):
        if int8 in needs:
            reader = calibration_reader(calibration_images(options, config), _preprocessing(job), "input",
                                        limit=options.calibration_images)  # fmt: skip
            quantize_onnx(files[fp32], work / f"{int8}.onnx", reader, per_channel=True, weight_type=weight_type)
            files[int8] = str(work / f"{int8}.onnx")
    return files


def _preprocessing(job: Job):
    if job.model_dir:
        return read_config(job.model_dir).preprocessing
    return Preprocessing(input_size=job.config["resolution"])


def calibration_images(options: BenchOptions, config: ModelConfig):
    return options.calibration or synthetic_images(options.calibration_images, config.resolution)


def run_bench(options: BenchOptions) -> BenchReport:
    check_backends(options.backends)
    if any(b < 1 for b in options.batches) or options.threads < 1 or options.rounds < 1 or options.iters < 1:
        raise ValueError("batch sizes, threads, rounds and iters must all be >= 1")
    config = config_for(options)
    mult_adds = cost_of(config).mult_adds
    load_before = os.getloadavg()
    skipped: dict[str, str] = {}
    backends = []
    for name in options.backends:
        missing = missing_module(name)
        if missing:
            skipped[name] = f"{missing} is not installed"
        else:
            backends.append(name)
    peaks = measure_peaks(options.threads)
    peak_of = {p.precision: p.gflops for p in peaks}
    timings: list[Timing] = []
    with tempfile.TemporaryDirectory(prefix="mnv1-bench-") as work:
        needs = {n for b in backends for n in BACKENDS[b].needs}
        files = prepare_files(needs, config, options, Path(work)) if needs else {}
        workers = []
        try:
            for name in backends:
                job = Job(name, config.to_dict(), options.model_dir, files, BACKENDS[name].builder)
                batches = [b for b in options.batches if BACKENDS[name].runs(b)]
                if not batches:
                    skipped[name] = f"runs batch {', '.join(map(str, BACKENDS[name].batches))} only"
                    continue
                worker, error = start_worker(name, [job], batches, options.threads, options.omp_wait_policy)
                if worker is None:
                    skipped[name] = error
                else:
                    workers.append(worker)
            for batch in options.batches:
                active = [w for w in workers if BACKENDS[w.name].runs(batch)]
                rounds = interleave(active, 0, batch, options.rounds, options.iters)
                for w in active:
                    median, p90, spread = summarize(rounds[w.name])
                    precision = BACKENDS[w.name].precision
                    gflops = 2 * mult_adds * batch / (median / 1e3) / 1e9
                    share = gflops / peak_of[precision] if precision in peak_of else None
                    timings.append(Timing(w.name, precision, batch, median, p90, spread, batch / (median / 1e3),
                                          gflops, share, options.rounds, options.iters))  # fmt: skip
        finally:
            for w in workers:
                w.stop()
    profile = None
    if options.profile:
        profile = profile_layer_types(config, options.model_dir, batch=options.batches[0], threads=options.threads)
    grid = None
    if options.grid:
        grid = run_grid(options.grid_backends, batch=options.batches[0], threads=options.threads,
                        plot=options.plot, skipped=skipped, omp_wait_policy=options.omp_wait_policy)  # fmt: skip
    return BenchReport(
        config.to_dict(), mult_adds, options.threads,
        environment(options.threads, options.command, options.omp_wait_policy),
        load_before, os.getloadavg(), peaks, timings, skipped, profile, grid,
    )  # fmt: skip
