"""torchrun --nproc_per_node 2 (gloo, CPU) against one process with the same global batch.

Batch norm normalises over each process's own samples (PyTorch's SyncBatchNorm is GPU-only), so the
single-process reference uses ``--accum-steps 2``: the same global batch split into the same two
interleaved halves that DistributedSampler hands the two ranks. Parameters must then agree to float
rounding (≤ 1e-5 of the update they received). A fresh network is chaotic — a 1e-5 relative change
of the learning rate moves the update by ~3% after two steps (measured) — so the full network is
compared after one optimizer step, and the classifier-only (linear-probe) run after eight.
"""

import shutil
import subprocess
import sys

import pytest
import torch

from mobilenet_v1 import MobileNetV1, ModelConfig

pytestmark = pytest.mark.slow

COMMON = [
    "--alpha",
    "0.25",
    "--resolution",
    "64",
    "--epochs",
    "1",
    "--train-subset",
    "512",
    "--val-subset",
    "64",
    "--workers",
    "0",
    "--quiet",
    "--no-augment",
    "--precision",
    "fp32",
    "--recipe",
    "paper",
    "--lr",
    "0.01",
    "--no-channels-last",
    "--json",
]


def _run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def _ddp(out, steps, *extra):
    torchrun = shutil.which("torchrun") or pytest.fail("torchrun not on PATH")
    return _run(
        [
            torchrun,
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "mobilenet_v1",
            "train",
            "--out",
            str(out),
            *COMMON,
            "--batch-size",
            "16",
            "--max-steps-per-epoch",
            str(steps),
            *extra,
        ]
    )


def _single(out, steps, *extra):
    return _run(
        [
            sys.executable,
            "-m",
            "mobilenet_v1",
            "train",
            "--out",
            str(out),
            *COMMON,
            "--batch-size",
            "32",
            "--accum-steps",
            "2",
            "--max-steps-per-epoch",
            str(steps),
            *extra,
        ]
    )


def _relative_update_difference(a_dir, b_dir) -> float:
    torch.manual_seed(0)  # the runs' initial weights (train seeds 0 before building the model)
    init = MobileNetV1(config=ModelConfig(0.25, 64, num_classes=10)).state_dict()
    a = torch.load(a_dir / "train_state.pt", weights_only=True)["model"]
    b = torch.load(b_dir / "train_state.pt", weights_only=True)["model"]
    keys = [k for k in a if a[k].dtype.is_floating_point and "running_" not in k]
    diff = sum(((a[k] - b[k]) ** 2).sum() for k in keys) ** 0.5
    update = sum(((b[k] - init[k]) ** 2).sum() for k in keys) ** 0.5
    assert update > 0
    return float(diff / update)


def test_ddp_ranks_identical_and_match_single_process(tmp_path):
    import json

    result = json.loads(_ddp(tmp_path / "ddp", 1).strip().splitlines()[-1])
    assert len(result["rank_checksums"]) == 2 and len(set(result["rank_checksums"])) == 1
    _single(tmp_path / "single", 1)
    assert _relative_update_difference(tmp_path / "ddp", tmp_path / "single") <= 1e-5


def test_ddp_linear_probe_matches_over_several_steps(tmp_path):
    import json

    result = json.loads(_ddp(tmp_path / "ddp", 8, "--freeze-features").strip().splitlines()[-1])
    assert len(set(result["rank_checksums"])) == 1
    _single(tmp_path / "single", 8, "--freeze-features")
    assert _relative_update_difference(tmp_path / "ddp", tmp_path / "single") <= 1e-5
