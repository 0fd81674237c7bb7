"""Benchmark results as values: dataclasses with ``to_json()``; formatting lives in ``report.py``."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field


@dataclass
class Timing:
    """One backend at one batch size, over interleaved rounds."""

    backend: str
    precision: str  # fp32 / bf16 / int8 — part of the configuration
    batch: int
    median_ms: float  # median of the round medians
    p90_ms: float  # 90th percentile of all timed iterations
    spread_ms: tuple[float, float]  # min and max of the round medians
    images_per_s: float
    gflops: float  # 2 × exact Mult-Adds × batch / median (GOP/s for int8)
    peak_share: float | None  # gflops / the GEMM peak of the same precision measured in this run
    rounds: int
    iters_per_round: int

    def to_json(self) -> str:
        return json.dumps(asdict(self))


@dataclass
class Peak:
    """The machine's dense matrix-multiply rate in one precision, measured in the same run."""

    precision: str
    gflops: float
    how: str  # which library and shape gave it


@dataclass
class LayerTypeTime:
    """``--profile``: time by Table 2's layer types beside their share of Mult-Adds."""

    layer_type: str  # "Conv 1x1", "Conv DW 3x3", "Conv 3x3", "Fully Connected", "Pool", "other"
    time_ms: float
    time_share: float  # % of the forward pass
    mult_adds_share: float | None  # % of Mult-Adds (Table 2's column), None where Table 2 has no row
    gflops: float | None  # this layer type's achieved rate


@dataclass
class Profile:
    backend: str
    batch: int
    rows: list[LayerTypeTime]
    total_ms: float


@dataclass
class GridPoint:
    name: str
    width_multiplier: float
    resolution: int
    mult_adds: int
    backend: str
    median_ms: float


@dataclass
class Grid:
    batch: int
    points: list[GridPoint]
    # Pearson correlation of latency with Mult-Adds per backend: does the paper's proxy hold on this CPU?
    correlation: dict[str, float]
    plot: str | None = None


@dataclass
class BenchReport:
    config: dict
    mult_adds: int  # exact, one image (cost.py)
    threads: int
    env: dict  # versions, CPU, command
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    peaks: list[Peak]
    timings: list[Timing]
    skipped: dict[str, str] = field(default_factory=dict)  # backend -> why (e.g. OpenVINO not installed)
    profile: Profile | None = None
    grid: Grid | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def timing(self, backend: str, batch: int) -> Timing | None:
        return next((t for t in self.timings if t.backend == backend and t.batch == batch), None)
