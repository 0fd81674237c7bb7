"""``mobilenet-v1 bench``: statistics, report values, backend errors, profile and grid. Never asserts speed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mobilenet_v1.bench import BenchOptions, run_bench
from mobilenet_v1.bench.grid import PAPER_16, run_grid
from mobilenet_v1.bench.profile import profile_layer_types
from mobilenet_v1.bench.report import markdown
from mobilenet_v1.bench.worker import summarize
from mobilenet_v1.cli import main
from mobilenet_v1.cost import cost_of
from mobilenet_v1.model import ModelConfig


def test_summarize_is_median_of_round_medians_with_p90_and_spread():
    rounds = [[0.001, 0.002, 0.010], [0.003, 0.004, 0.005], [0.002, 0.002, 0.002]]  # seconds
    median, p90, spread = summarize(rounds)
    assert median == pytest.approx(2.0)  # round medians 2, 4, 2 ms -> 2
    assert spread == pytest.approx((2.0, 4.0))
    assert p90 == pytest.approx(6.0)  # sorted 1,2,2,2,2,3,4,5,10: position 7.2 -> 5 + 0.2·(10 − 5)


def test_smoke_bench_report_values(tmp_path):
    options = BenchOptions(width_multiplier=0.25, resolution=64, batches=[1, 2], rounds=2, iters=2,
                           backends=["eager", "inference", "ort-fp32", "ort-int8", "ort-int8-uint8"],
                           calibration_images=16)  # fmt: skip
    report = run_bench(options)
    data = json.loads(report.to_json())
    mult_adds = cost_of(ModelConfig(0.25, 64)).mult_adds
    assert data["mult_adds"] == mult_adds
    assert {(t["backend"], t["batch"]) for t in data["timings"]} == {(b, n) for b in options.backends for n in (1, 2)}
    peaks = {p["precision"]: p["gflops"] for p in data["peaks"]}
    assert peaks["fp32"] > 0 and peaks["int8"] > 0
    for t in report.timings:
        assert t.spread_ms[0] <= t.median_ms <= t.spread_ms[1]
        assert t.gflops == pytest.approx(2 * mult_adds * t.batch / (t.median_ms / 1e3) / 1e9)
        assert t.images_per_s == pytest.approx(t.batch / (t.median_ms / 1e3))
        assert t.peak_share == pytest.approx(t.gflops / peaks[t.precision])
    assert report.timing("ort-int8", 1).precision == "int8" and report.timing("ort-int8-uint8", 2).precision == "int8"
    assert len(report.load_before) == 3 and report.env["threads"] == 2
    assert "| ort-int8 | int8 | 1 |" in markdown(report)


def test_unavailable_backend_is_skipped_with_its_reason(monkeypatch):
    """A registered backend (benchmarks/peers.py's timm peer, built by name in the worker) that cannot build for
    this model is skipped with the worker's reason; the others are timed."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from peers import register_peers  # noqa: PLC0415

    assert "timm-eager" in register_peers()
    report = run_bench(BenchOptions(width_multiplier=0.5, resolution=64, batches=[1], rounds=1, iters=1,
                                    backends=["eager", "timm-eager"]))  # fmt: skip
    assert [t.backend for t in report.timings] == ["eager"]
    assert "alpha 1.0 only" in report.skipped["timm-eager"]


def test_cli_rejects_unknown_backend_in_one_line(capsys):
    assert main(["bench", "--backends", "eager,tensorrt"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mobilenet-v1 bench: error: unknown backend 'tensorrt'") and "\n" not in err


def test_profile_puts_table_2_shares_beside_time_shares():
    config = ModelConfig(0.25, 64)
    profile = profile_layer_types(config, batch=1, iters=3)
    rows = {r.layer_type: r for r in profile.rows}
    shares = cost_of(config).shares
    for label in ("Conv 1x1", "Conv DW 3x3", "Conv 3x3", "Fully Connected"):
        assert rows[label].mult_adds_share == pytest.approx(shares[label]["mult_adds"])
        assert rows[label].time_ms > 0
    assert sum(r.time_share for r in profile.rows) == pytest.approx(100.0, abs=0.5)


@pytest.mark.slow
def test_grid_times_the_papers_16_models_and_plots(tmp_path):
    plot = tmp_path / "grid.png"
    grid = run_grid(["inference"], batch=1, rounds=1, iters=2, plot=plot)
    assert sorted(p.name for p in grid.points) == sorted(PAPER_16) and len(PAPER_16) == 16
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert -1.0 <= grid.correlation["inference"] <= 1.0


def test_workers_get_the_requested_omp_wait_policy(monkeypatch):
    """A shell's OMP_WAIT_POLICY=PASSIVE (CI exports it) must not leak into the timed processes unasked."""
    import multiprocessing as mp

    from mobilenet_v1.bench.worker import omp_wait_policy

    def child_sees(policy):
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        with omp_wait_policy(policy):
            p = ctx.Process(target=_report_env, args=(child,))
            p.start()
        seen = parent.recv()
        p.join()
        return seen

    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    assert child_sees(None) is None and child_sees("ACTIVE") == "ACTIVE"
    import os

    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"  # ours is restored


def _report_env(conn):
    import os

    conn.send(os.environ.get("OMP_WAIT_POLICY"))
