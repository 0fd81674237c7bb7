"""Benchmarks: interleaved, process-isolated timing of our inference paths (others can be registered).

Speed is measured here and in ``benchmarks/``, never asserted in tests.
"""

from .backends import BACKENDS, DEFAULT_BACKENDS, Backend, Job, register
from .results import BenchReport, Grid, Peak, Profile, Timing
from .runner import BenchOptions, run_bench

__all__ = [
    "BACKENDS", "DEFAULT_BACKENDS", "Backend", "BenchOptions", "BenchReport", "Grid", "Job", "Peak", "Profile",
    "Timing", "register", "run_bench",
]  # fmt: skip
