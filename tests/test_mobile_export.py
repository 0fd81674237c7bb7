"""ExecuTorch export (``export --format executorch``): each file run in ExecuTorch's own runtime.

Runs where the ``mobile`` extra is installed (``.ci/run`` installs it); ExecuTorch itself is the runtime checked.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("executorch")

from deploy_helpers import calibrated_model  # noqa: E402
from mobilenet_v1.checkpoint import Preprocessing, Pretrained, save_pretrained  # noqa: E402
from mobilenet_v1.cli import main  # noqa: E402
from mobilenet_v1.deploy import mobile  # noqa: E402
from samples import photo_crops, write_images  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A small model with real activation statistics, TF 'SAME' padding and ReLU6 (as Google's), and images."""
    root = tmp_path_factory.mktemp("mobile")
    model = calibrated_model(width_multiplier=0.25, resolution=96, num_classes=10, padding="tf_same",
                             activation="relu6", bn_eps=1e-3)  # fmt: skip
    save_pretrained(model, root / "model", Pretrained(model.config, Preprocessing(input_size=96), list("abcdefghij")))
    write_images(photo_crops(64, 112, seed=0), root / "calib")
    return root


def test_fp32_program_runs_in_executorch_and_equals_pytorch(model_dir, capsys):
    out = model_dir / "m.pte"
    assert main(["export", str(model_dir / "model"), "--format", "executorch", "-o", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["delegated_convolutions"] == 27 and report["undelegated_ops"] == []
    meta = json.loads(out.with_name("m.pte.json").read_text())
    assert meta["format"] == "executorch" and meta["class_names"][0] == "a"
    assert meta["preprocessing"]["input_size"] == 96
    from mobilenet_v1.checkpoint import from_pretrained

    model = from_pretrained(model_dir / "model")
    method = mobile.runtime_method(out)  # a fresh load of the file written
    for seed in range(3):
        x = torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(seed))
        got, want = method.execute([x])[0].numpy(), model(x).detach().numpy()
        assert np.abs(got - want).max() <= mobile.RTOL * max(1.0, float(np.abs(want).max()))


def test_int8_program_runs_on_xnnpacks_own_kernels(model_dir, capsys):
    out = model_dir / "q.pte"
    argv = ["export", str(model_dir / "model"), "--format", "executorch", "--int8", "--calibration",
            str(model_dir / "calib"), "-o", str(out), "--json"]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    # every convolution in XNNPACK's int8 kernels, nothing left to the portable (float) fallback
    assert report["delegated_convolutions"] == 27 and report["undelegated_ops"] == []
    assert report["precision"] == "int8" and report["calibration_images"] == 64
    # a random network on crops of photos: many near-tied logits (measured 80%); a broken int8 graph gives ~10%
    assert report["top1_agreement"] >= 60.0, report
    from mobilenet_v1.checkpoint import from_pretrained

    float_bytes = 4 * sum(p.numel() for p in from_pretrained(model_dir / "model").parameters())
    assert out.stat().st_size < 0.5 * float_bytes  # int8 weights: a quarter, plus scales


def test_a_program_xnnpack_cannot_take_whole_is_refused_and_nothing_written(model_dir, capsys, monkeypatch):
    monkeypatch.setattr(mobile, "_partitioners", lambda: [])  # as if XNNPACK took none of the convolutions
    out = model_dir / "refused.pte"
    assert main(["export", str(model_dir / "model"), "--format", "executorch", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "XNNPACK takes 0 of the 27 convolutions" in err and "\n" not in err
    assert not out.exists() and not out.with_name("refused.pte.json").exists()


def test_pt2_export_reloads_and_matches(model_dir, capsys):
    out = model_dir / "m.pt2"
    assert main(["export", str(model_dir / "model"), "--format", "pt2", "-o", str(out)]) == 0
    assert "torch.export program, dynamic batch" in capsys.readouterr().out
    extra = {"mobilenet_v1.json": ""}
    program = torch.export.load(str(out), extra_files=extra).module()
    meta = json.loads(extra["mobilenet_v1.json"])
    assert meta["mobilenet_v1.format"] == "pt2" and json.loads(meta["mobilenet_v1.class_names"])[:2] == ["a", "b"]
    from mobilenet_v1.checkpoint import from_pretrained

    model = from_pretrained(model_dir / "model")
    x = torch.randn(5, 3, 96, 96)
    with torch.no_grad():
        assert (program(x) - model(x)).abs().max() <= 1e-4


def test_bench_times_the_programs_at_batch_one_only():
    from mobilenet_v1.bench import BenchOptions, run_bench

    report = run_bench(BenchOptions(width_multiplier=0.25, resolution=64, num_classes=10, batches=[1, 2],
                                    backends=["executorch-fp32", "executorch-int8"], rounds=1, iters=1,
                                    calibration_images=4))  # fmt: skip
    assert sorted((t.backend, t.batch) for t in report.timings) == [("executorch-fp32", 1), ("executorch-int8", 1)]
    assert all(t.median_ms > 0 for t in report.timings)


def test_relu6_is_quantized_with_its_convolution(model_dir):
    """XNNPACK's own quantizer puts a quantize/dequantize pair between a convolution and its ReLU6 (it fuses only
    ReLU), spending the int8 levels on the raw output's range; ours leaves none there, and none is left unquantized."""
    from mobilenet_v1.checkpoint import from_pretrained
    from mobilenet_v1.deploy.fold import fold_bn

    model = from_pretrained(model_dir / "model")
    x = torch.randn(1, 3, 96, 96)
    graph = mobile._quantize(torch.export.export(fold_bn(model), (x,)).module(), [torch.randn(3, 96, 96)] * 4)
    clamps = [n for n in graph.graph.nodes if n.op == "call_function" and "hardtanh" in str(n.target)]
    assert len(clamps) == 27
    assert all("conv2d" in str(n.args[0].target) for n in clamps)  # straight from the convolution
    assert all("quantize_per_tensor" in str(next(iter(n.users)).target) for n in clamps)  # then quantized
