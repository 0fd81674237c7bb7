"""ONNX/TorchScript export: checked, dynamic batch, ONNX Runtime ≤ 1e-4 from PyTorch, metadata, all-or-nothing."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from deploy_helpers import calibrated_model
from mobilenet_v1.checkpoint import Preprocessing, Pretrained, from_pretrained, save_pretrained
from mobilenet_v1.cli import main
from mobilenet_v1.deploy import onnx_export
from mobilenet_v1.deploy.onnx_export import export_onnx, export_torchscript, ort_session, read_metadata

CLASSES = [f"class {i}" for i in range(10)]
ORT_ATOL = 1e-4  # the bound


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    model = calibrated_model(padding="tf_same", activation="relu6", bn_eps=1e-3)
    pre = Preprocessing(input_size=64, resize=73, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    return save_pretrained(model, tmp_path_factory.mktemp("model"), Pretrained(model.config, pre, CLASSES))


def test_onnx_export_checks_dynamic_batch_and_matches_pytorch(model_dir, tmp_path):
    out = tmp_path / "m.onnx"
    assert main(["export", str(model_dir), "--format", "onnx", "-o", str(out)]) == 0
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto, full_check=True)
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch axis
    assert not any(n.op_type == "BatchNormalization" for n in proto.graph.node)  # exported folded
    model = from_pretrained(model_dir)
    session = ort_session(out)
    for batch in (1, 5):  # independent of the exporter's own verification batches
        x = torch.randn(batch, 3, 64, 64, generator=torch.Generator().manual_seed(100 + batch))
        with torch.no_grad():
            want = model(x).numpy()
        got = session.run(None, {"input": x.numpy()})[0]
        assert got.shape == (batch, 10)
        assert np.abs(got - want).max() <= ORT_ATOL


def test_onnx_metadata_records_preprocessing_and_class_names(model_dir, tmp_path):
    report = export_onnx(from_pretrained(model_dir), tmp_path / "m.onnx")
    meta = read_metadata(report.path)
    assert meta["class_names"] == CLASSES
    assert meta["preprocessing"]["resize"] == 73 and meta["preprocessing"]["mean"] == [0.5, 0.5, 0.5]
    assert meta["config"]["padding"] == "tf_same" and meta["label_offset"] == 0
    raw = {p.key: p.value for p in onnx.load(report.path).metadata_props}
    assert json.loads(raw["mobilenet_v1.class_names"]) == CLASSES  # plain ONNX metadata_props, readable anywhere
    assert json.loads(report.to_json())["max_abs_diff"] <= ORT_ATOL


def test_torchscript_export_matches_and_carries_metadata(model_dir, tmp_path):
    out = tmp_path / "m.pt"
    report = export_torchscript(from_pretrained(model_dir), out)
    files = {"mobilenet_v1.json": ""}
    loaded = torch.jit.load(str(out), _extra_files=files)
    assert json.loads(json.loads(files["mobilenet_v1.json"])["mobilenet_v1.class_names"]) == CLASSES
    x = torch.randn(7, 3, 64, 64)
    with torch.no_grad():
        assert (loaded(x) - from_pretrained(model_dir)(x)).abs().max() <= ORT_ATOL
    assert report.max_abs_diff <= ORT_ATOL


def test_failed_verification_leaves_nothing(model_dir, tmp_path, monkeypatch):
    original = onnx_export.verify_onnx
    # a tolerance no export can meet: the check fails after the file was fully written to its temporary
    monkeypatch.setattr(
        onnx_export, "verify_onnx", lambda path, model, **kw: original(path, model, **{**kw, "atol": -1.0})
    )
    with pytest.raises(ValueError, match="differs from PyTorch"):
        export_onnx(from_pretrained(model_dir), tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []  # no target, no temporary


def _one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err


def test_cli_bad_inputs_are_one_line_and_write_nothing(model_dir, tmp_path, capsys):
    out = tmp_path / "out.onnx"
    err = _one_line_error(capsys, ["export", str(tmp_path / "missing"), "-o", str(out)])
    assert "no such file" in err
    err = _one_line_error(capsys, ["export", str(model_dir), "--format", "tflite", "-o", str(out)])
    assert "--format must be one of onnx, pt2, executorch, torchscript; got 'tflite'" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    err = _one_line_error(capsys, ["export", str(model_dir), "--int8", "--calibration", str(empty), "-o", str(out)])
    assert "no images found" in err
    err = _one_line_error(capsys, ["export", str(model_dir), "--int8", "--calibration", str(tmp_path / "nope"),
                                   "-o", str(out)])  # fmt: skip
    assert "no such directory" in err
    err = _one_line_error(capsys, ["export", str(model_dir), "--int8", "-o", str(out)])
    assert "--int8 needs --calibration" in err
    err = _one_line_error(capsys, ["export", str(model_dir), "--weight-type", "uint8", "-o", str(out)])
    assert "only used with --int8" in err
    err = _one_line_error(capsys, ["export", str(model_dir), "--rounding", "nearest", "-o", str(out)])
    assert "--rounding are only used with --int8" in err
    err = _one_line_error(capsys, ["export", str(model_dir), "--qat-steps", "10", "-o", str(out)])
    assert "--qat-steps and --qat-lr are only used with --int8" in err
    err = _one_line_error(capsys, ["export", str(model_dir), "--int8", "--calibration", str(empty), "--qat-steps",
                                   "-3", "-o", str(out)])  # fmt: skip
    assert "--qat-steps must be >= 0" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]
