"""Benchmarks: interleaved, process-isolated timing of our inference paths and the peers'.

Speed is measured here and in ``benchmarks/``, never asserted in tests.
"""

from .backends import BACKENDS, DEFAULT_BACKENDS, PEER_BACKENDS
from .results import BenchReport, Grid, Peak, Profile, Timing
from .runner import BenchOptions, run_bench

__all__ = [
    "BACKENDS", "DEFAULT_BACKENDS", "PEER_BACKENDS", "BenchOptions", "BenchReport", "Grid", "Peak", "Profile",
    "Timing", "run_bench",
]  # fmt: skip
