"""train --init: fine-tuning from converted weights, head replaced when the class count differs."""

import json

import pytest
import torch
from safetensors.torch import load_file

from mobilenet_v1 import create_model, save_pretrained
from mobilenet_v1.checkpoint import Preprocessing, Pretrained
from mobilenet_v1.cli import main
from mobilenet_v1.finetune import load_init
from mobilenet_v1.model import ModelConfig


@pytest.fixture
def source_dir(tmp_path):
    """A 1001-class α = 0.25 model in Google's settings (relu6, TF padding, ε 1e-3, (x−128)/128)."""
    torch.manual_seed(1)
    model = create_model("mobilenet_v1_025_128", num_classes=1001, activation="relu6", padding="tf_same", bn_eps=1e-3)
    mean = std = (128 / 255,) * 3
    d = tmp_path / "src"
    save_pretrained(model, d, Pretrained(model.config, Preprocessing(128, None, "bilinear", mean, std), None, 1))
    return d


def test_load_init_replaces_head_and_keeps_source_settings(source_dir):
    model = load_init(str(source_dir), ModelConfig(0.25, 64, num_classes=10))
    assert model.num_classes == 10 and model.classifier.weight.shape == (10, 256)
    c = model.config
    assert (c.activation, c.padding, c.bn_eps, c.resolution) == ("relu6", "tf_same", 1e-3, 64)
    src = load_file(source_dir / "model.safetensors")
    assert torch.equal(
        model.state_dict()["features.Conv2d_5_pointwise.conv.weight"], src["features.Conv2d_5_pointwise.conv.weight"]
    )
    same = load_init(str(source_dir), ModelConfig(0.25, 64, num_classes=1001))
    assert torch.equal(same.classifier.weight, src["classifier.weight"])


def test_load_init_alpha_mismatch(source_dir):
    with pytest.raises(ValueError, match=r"weights are alpha=0.25.*asked for is alpha=0.5"):
        load_init(str(source_dir), ModelConfig(0.5, 64, num_classes=10))


def test_linear_probe_cli_trains_only_the_head(source_dir, tmp_path, capsys):
    out = tmp_path / "probe"
    argv = [
        "train",
        "--out",
        str(out),
        "--init",
        str(source_dir),
        "--freeze-features",
        "--alpha",
        "0.25",
        "--resolution",
        "32",
        "--epochs",
        "1",
        "--train-subset",
        "256",
        "--val-subset",
        "128",
        "--batch-size",
        "32",
        "--workers",
        "0",
        "--quiet",
        "--precision",
        "fp32",
    ]
    assert main(argv) == 0
    after = load_file(out / "last.safetensors")
    src = load_file(source_dir / "model.safetensors")
    features = [k for k in src if k.startswith("features.")]
    assert all(torch.equal(after[k], src[k]) for k in features)  # backbone and its BN statistics untouched
    assert after["classifier.weight"].shape == (10, 256)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["preprocessing"]["mean"] == [128 / 255] * 3  # the source's normalisation is kept
    assert cfg["model"]["activation"] == "relu6"


def test_init_alpha_mismatch_cli(source_dir, tmp_path, capsys):
    out = tmp_path / "bad"
    assert (
        main(
            [
                "train",
                "--out",
                str(out),
                "--init",
                str(source_dir),
                "--alpha",
                "1.0",
                "--resolution",
                "32",
                "--epochs",
                "1",
                "--workers",
                "0",
                "--quiet",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "weights are alpha=0.25" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
