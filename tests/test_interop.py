"""The API timm and torchvision users' code already calls: timm's model methods and data config, the export to
timm's layout, torchvision-style weights (``transforms()``, ``meta``), ``decode_predictions``, and ``torch.hub``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from mobilenet_v1 import create_model, model_cost
from mobilenet_v1.checkpoint import from_pretrained
from mobilenet_v1.cli import main
from mobilenet_v1.convert import convert
from mobilenet_v1.predict import decode_predictions
from mobilenet_v1.pretrained import PRETRAINED
from parity import assert_close, draw_sizes
from test_convert_assets import google_graph

ROOT = Path(__file__).resolve().parents[1]


def test_timm_resolves_our_data_config_and_builds_the_transform():
    """timm's own resolver reads our pretrained_cfg: for a converted model, its recorded preprocessing."""
    model = create_model("mobilenet_v1_050_160", num_classes=10)
    cfg = timm.data.resolve_model_data_config(model)
    assert cfg["input_size"] == (3, 160, 160) and cfg["crop_pct"] == 0.875 and cfg["interpolation"] == "bilinear"
    transform = timm.data.create_transform(**cfg)
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8))
    assert tuple(transform(photo).shape) == (3, 160, 160)


def test_timm_model_methods():
    model = create_model("mobilenet_v1_025_128", num_classes=10).eval()
    x = torch.randn(2, 3, 128, 128)
    assert model.get_classifier() is model.classifier
    with torch.no_grad():
        assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, 256)
        final, intermediates = model.forward_intermediates(x)
        assert torch.equal(final, model.forward_features(x))
        assert [t.shape[-1] for t in intermediates] == [64, 32, 16, 8, 4]
        assert [t.shape[1] for t in model.forward_intermediates(x, indices=2, intermediates_only=True)] == [128, 256]
    model.reset_classifier(0, global_pool="max")
    assert model(x).shape == (2, 256) and model.config.global_pool == "max"
    model.reset_classifier(0, global_pool="")
    assert model(x).shape == (2, 256, 4, 4)  # no pooling: the last feature map
    with pytest.raises(ValueError, match="no pooling"):
        model.reset_classifier(5, global_pool="")
    model.reset_classifier(5, global_pool="avg")
    assert model(x).shape == (2, 5)


def test_feature_info_is_timms_with_the_actual_reductions():
    backbone = create_model("mobilenet_v1_100_224", features_only=True, output_stride=16)
    assert backbone.feature_info.channels() == [64, 128, 256, 512, 1024]
    assert backbone.feature_info.reduction() == [2, 4, 8, 16, 16]  # the last map is dilated, not strided
    maps = backbone(torch.randn(1, 3, 224, 224))
    assert [224 // m.shape[-1] for m in maps] == backbone.feature_info.reduction()


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = create_model("mobilenet_v1_025_128", num_classes=10).train()
    x = torch.randn(4, 3, 64, 64)
    model(x).square().sum().backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    for m in model.modules():  # the same batch statistics: freeze the running ones' update out of the picture
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
    model.set_grad_checkpointing()
    model(x).square().sum().backward()
    for a, p in zip(plain, model.parameters()):
        assert torch.allclose(a, p.grad, rtol=1e-4, atol=1e-6)


@pytest.fixture(scope="module")
def google_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("google") / "ours"
    convert(google_graph(), out)
    return out


@pytest.mark.parametrize("size", [224, *draw_sizes(2, 27, odd_maps=2)])
def test_googles_weights_load_strictly_into_timm(google_dir, tmp_path, size):
    """The timm-layout export: Google's weights in ``timm.create_model("mobilenetv1_100", pad_type="same",
    bn_eps=1e-3, act_layer="relu6")`` with ``strict=True``, its outputs ours at any size."""
    assert main(["convert", str(google_dir), "--to", "timm", "-o", str(tmp_path / "g.safetensors")]) == 0
    with safe_open(str(tmp_path / "g.safetensors"), "pt") as f:
        args = json.loads(f.metadata()["timm_create_model"])
    assert args == {"model_name": "mobilenetv1_100", "num_classes": 1001, "pad_type": "same", "bn_eps": 0.001,
                    "act_layer": "relu6", "global_pool": "avg"}  # fmt: skip
    reference = timm.create_model(args.pop("model_name"), **args).eval()
    reference.load_state_dict(load_file(str(tmp_path / "g.safetensors")), strict=True)
    ours = from_pretrained(google_dir)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size))
    with torch.no_grad():
        assert_close(reference(x).numpy(), ours(x).numpy())


def test_timm_export_refuses_what_timm_cannot_build(tmp_path, capsys):
    from mobilenet_v1.checkpoint import save_pretrained

    save_pretrained(create_model("mobilenet_v1_050_160"), tmp_path / "half")
    assert main(["convert", str(tmp_path / "half"), "--to", "timm", "-o", str(tmp_path / "h.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot export to timm's MobileNet-V1: alpha 0.5" in err and "\n" not in err
    assert not (tmp_path / "h.safetensors").exists()


def _tf_slim_eval(image: np.ndarray, size: int) -> np.ndarray:
    """TF-slim's ``inception_preprocessing.preprocess_for_eval``, written out from its source: convert to [0, 1],
    ``tf.image.central_crop(0.875)``, ``tf.compat.v1.image.resize_bilinear`` (align_corners=False), then
    (x − 0.5) · 2. The resize is TF1's legacy kernel: source pixel = output pixel · in/out, no half-pixel shift."""
    x = image.astype(np.float32) / np.float32(255)
    h, w = x.shape[:2]
    top, left = int((h - h * 0.875) / 2), int((w - w * 0.875) / 2)
    x = x[top : h - top, left : w - left]

    def taps(n_in, n_out):
        src = np.arange(n_out, dtype=np.float32) * (np.float32(n_in) / np.float32(n_out))
        lo = np.floor(src).astype(int)
        return lo, np.minimum(lo + 1, n_in - 1), (src - lo).astype(np.float32)

    (y0, y1, fy), (x0, x1, fx) = taps(x.shape[0], size), taps(x.shape[1], size)
    rows = x[y0] + (x[y1] - x[y0]) * fy[:, None, None]
    out = rows[:, x0] + (rows[:, x1] - rows[:, x0]) * fx[None, :, None]
    return ((out - 0.5) * 2.0).transpose(2, 0, 1)


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    skimage_data = pytest.importorskip("skimage.data")
    return Image.fromarray(skimage_data.chelsea())


def test_tf_weights_transforms_are_tf_slims_evaluation(photo):
    got = PRETRAINED["mobilenet_v1_050_160"]["tf"].transforms()(photo).numpy()
    assert np.abs(got - _tf_slim_eval(np.asarray(photo), 160)).max() <= 2e-6  # x and y interpolated in either order


def test_keras_weights_transforms_are_keras_documented_use(photo, tmp_path):
    import os

    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    photo.save(tmp_path / "chelsea.png")
    loaded = keras.utils.load_img(tmp_path / "chelsea.png", target_size=(128, 128), interpolation="bilinear")
    expected = keras.applications.mobilenet.preprocess_input(np.asarray(loaded, dtype=np.float32))
    got = PRETRAINED["mobilenet_v1_025_128"]["keras"].transforms()(photo).numpy().transpose(1, 2, 0)
    assert np.abs(got - expected).max() <= 1e-6


@pytest.mark.parametrize("name", ["mobilenet_v1_100_224", "mobilenet_v1_125_224"])
def test_timm_weights_transforms_are_timms(photo, name):
    tag = PRETRAINED[name]["timm"].filename.removesuffix(".safetensors")
    cfg = timm.data.resolve_data_config(pretrained_cfg=timm.models.get_pretrained_cfg(tag).to_dict())
    expected = timm.data.create_transform(**cfg)(photo).numpy()
    got = PRETRAINED[name]["timm"].transforms()(photo).numpy()
    assert np.abs(got - expected).max() <= 1e-6


def test_weights_meta_comes_from_the_cost_model_and_the_publisher():
    meta = PRETRAINED["mobilenet_v1_100_224"]["tf"].meta
    assert meta["mult_adds"] == model_cost(num_classes=1001).mult_adds
    assert meta["num_params"] == sum(p.numel() for p in create_model("mobilenet_v1_100_224", num_classes=1001)
                                     .parameters())  # fmt: skip
    assert len(meta["categories"]) == 1000 and meta["label_offset"] == 1 and meta["categories"][285] == "Egyptian cat"
    assert meta["_metrics"]["ImageNet-1K"] == {"acc@1": 70.9, "acc@5": 89.9} and meta["license"] == "Apache-2.0"
    for sources in PRETRAINED.values():
        for weights in sources.values():
            assert weights.meta["publisher"] and math.isfinite(weights.meta["mult_adds"])


def test_decode_predictions():
    logits = torch.full((2, 1001), -10.0)
    logits[0, 286], logits[1, 968] = 5.0, 4.0  # 1001-class indexing: background first
    top = decode_predictions(logits, label_offset=1, top=2)
    assert [row[0][:2] for row in top] == [("Egyptian cat", 285), ("espresso", 967)]
    assert top[0][0][2] > 0.99 and len(top[0]) == 2
    with pytest.raises(ValueError, match="3 class names for 1000 logits"):
        decode_predictions(logits, ["a", "b", "c"], label_offset=1)


def test_torch_hub_loads_from_the_repository():
    model = torch.hub.load(str(ROOT), "mobilenet_v1_025_128", source="local", num_classes=10)
    assert type(model).__name__ == "MobileNetV1" and model(torch.randn(1, 3, 128, 128)).shape == (1, 10)
    hub = (ROOT / "hubconf.py").read_text()
    assert "dependencies" in hub
