"""Hugging Face transformers' MobileNetV1 ⇄ ours, checked against transformers itself (a dev dependency only:
the converter reads and writes the directory with json and safetensors)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import MobileNetV1Config, MobileNetV1ForImageClassification, MobileNetV1Model  # noqa: E402

from mobilenet_v1.checkpoint import from_pretrained  # noqa: E402
from mobilenet_v1.cli import main  # noqa: E402
from mobilenet_v1.convert import convert, load_any  # noqa: E402
from mobilenet_v1.model import MobileNetV1, ModelConfig  # noqa: E402
from parity import assert_close, draw_sizes, randomize_batch_norms  # noqa: E402
from test_convert_assets import google_graph  # noqa: E402

# (depth_multiplier, image_size, labels, tf_padding): α and input sizes from a seeded grid, odd maps included
CASES = [(float(a), size, labels, tf) for a, size, labels, tf in zip(
    np.round(np.random.default_rng(26).uniform(0.2, 1.4, 4), 2), draw_sizes(4, 26, odd_maps=3), (10, 1001, 7, 0),
    (True, True, False, True))]  # fmt: skip


def random_hf(alpha: float, size: int, labels: int, tf_padding: bool = True, seed: int = 0):
    """transformers' model with random weights, random BN statistics and a head scaled to O(1) logits."""
    torch.manual_seed(seed)
    config = MobileNetV1Config(depth_multiplier=alpha, image_size=size, tf_padding=tf_padding,
                               num_labels=max(labels, 1), classifier_dropout_prob=0.0)  # fmt: skip
    model = (MobileNetV1ForImageClassification(config) if labels else MobileNetV1Model(config)).eval()
    randomize_batch_norms(model)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.normal_(0, 0.3)
                m.bias.normal_(0, 0.3)
    return model


def hf_out(model, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        out = model(x)
    return (out.logits if hasattr(out, "logits") else out.last_hidden_state).numpy()


@pytest.mark.parametrize(("alpha", "size", "labels", "tf_padding"), CASES)
def test_hf_weights_match_hf_outputs(tmp_path, alpha, size, labels, tf_padding):
    reference = random_hf(alpha, size, labels, tf_padding)
    reference.save_pretrained(tmp_path / "hf")
    model, info = load_any(tmp_path / "hf")
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size))
    expected = hf_out(reference, x)
    with torch.no_grad():
        got = (model(x) if labels else model.forward_features(x)).numpy()
    print(f"alpha={alpha} size={size} labels={labels}: max |Δ| vs transformers {assert_close(got, expected):.2e}")
    c = model.config
    assert (c.width_multiplier, c.resolution, c.num_classes) == (alpha, size, labels)
    assert (c.padding, c.activation, c.bn_eps) == ("tf_same" if tf_padding else "symmetric", "relu6", 1e-3)
    assert info.label_offset == 0


@pytest.mark.parametrize(("alpha", "size", "labels", "tf_padding"), CASES[:2])
def test_hf_to_ours_to_hf_is_exact(tmp_path, alpha, size, labels, tf_padding):
    reference = random_hf(alpha, size, labels, tf_padding)
    reference.save_pretrained(tmp_path / "hf")
    assert main(["convert", str(tmp_path / "hf"), "-o", str(tmp_path / "ours")]) == 0
    assert main(["convert", str(tmp_path / "ours"), "--to", "hf", "-o", str(tmp_path / "back")]) == 0
    back = type(reference).from_pretrained(tmp_path / "back").eval()
    for (k, a), b in zip(reference.state_dict().items(), back.state_dict().values()):
        assert torch.equal(a, b), k
    before, after = (json.loads((p / "config.json").read_text()) for p in (tmp_path / "hf", tmp_path / "back"))
    for key in ("depth_multiplier", "min_depth", "tf_padding", "hidden_act", "layer_norm_eps", "image_size"):
        assert before[key] == after[key], key
    assert after["classifier_dropout_prob"] == 0.0  # a drop rate, not TF-slim's 0.999 keep probability


@pytest.fixture(scope="module")
def google_hf(tmp_path_factory):
    """Google's real MobileNet_v1_1.0_224, converted from its frozen graph to ours, then to a transformers dir."""
    work = tmp_path_factory.mktemp("google_hf")
    convert(google_graph(), work / "ours")
    convert(work / "ours", work / "hf", to="hf")
    return work


def test_googles_weights_in_transformers_compute_what_ours_do(google_hf):
    ours = from_pretrained(google_hf / "ours")
    hf = MobileNetV1ForImageClassification.from_pretrained(google_hf / "hf").eval()
    assert hf.config.num_labels == 1001 and hf.config.id2label[0] == "background"
    for size in (224, 213):  # its size, and one that reaches odd maps
        x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size))
        with torch.no_grad():
            assert_close(hf(x).logits.numpy(), ours(x).numpy())


def test_transformers_pipeline_names_the_photos(google_hf):
    """transformers' own image-classification pipeline, with the preprocessing written into
    preprocessor_config.json, on skimage's photos: a cat (its three cat classes share the probability) and
    espresso."""
    skimage_data = pytest.importorskip("skimage.data")
    from PIL import Image

    pipe = transformers.pipeline("image-classification", model=str(google_hf / "hf"))
    chelsea = pipe(Image.fromarray(skimage_data.chelsea()), top_k=3)
    coffee = pipe(Image.fromarray(skimage_data.coffee()), top_k=1)
    assert chelsea[0]["label"] in ("tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat"), chelsea
    assert sum(p["score"] for p in chelsea) > 0.8, chelsea
    assert coffee[0]["label"] == "espresso" and coffee[0]["score"] > 0.9, coffee
    processor = json.loads((google_hf / "hf" / "preprocessor_config.json").read_text())
    assert processor["crop_size"] == {"height": 224, "width": 224} and processor["image_mean"] == [0.5, 0.5, 0.5]


def _one_line_error(capsys, argv) -> str:
    capsys.readouterr()  # what the test's own set-up printed (transformers' progress bars)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


def test_bad_hf_directories_are_one_line_and_write_nothing(tmp_path, capsys):
    other = tmp_path / "resnet"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "resnet", "architectures": ["ResNetModel"]}))
    err = _one_line_error(capsys, ["convert", str(other), "-o", str(tmp_path / "o")])
    assert "a transformers 'resnet' model" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "empty" in _one_line_error(capsys, ["convert", str(empty), "-o", str(tmp_path / "o")])
    reference = random_hf(0.5, 96, 10)
    edits = {"missing": lambda s: {k: v for k, v in s.items() if "layer.3." not in k},
             "extra": lambda s: {**s, "mobilenet_v1.layer.99.convolution.weight": torch.zeros(1)}}  # fmt: skip
    for name, edit in edits.items():
        reference.save_pretrained(tmp_path / name)
        from safetensors.torch import load_file, save_file

        path = tmp_path / name / "model.safetensors"
        save_file(edit(load_file(str(path))), str(path), metadata={"format": "pt"})
        err = _one_line_error(capsys, ["convert", str(tmp_path / name), "-o", str(tmp_path / "o")])
        assert str(tmp_path / name) in err and "not transformers' MobileNetV1" in err
    assert not (tmp_path / "o").exists()


def test_export_refuses_what_transformers_cannot_represent(tmp_path, capsys):
    from mobilenet_v1.checkpoint import save_pretrained

    for name, config in (("shallow", ModelConfig(variant="shallow")), ("os16", ModelConfig(output_stride=16)),
                         ("keras150", ModelConfig(resolution=150, padding="keras"))):  # fmt: skip
        save_pretrained(MobileNetV1(config=config), tmp_path / name)
        err = _one_line_error(capsys, ["convert", str(tmp_path / name), "--to", "hf", "-o", str(tmp_path / "hf")])
        assert "cannot export to transformers' MobileNetV1" in err
    assert not (tmp_path / "hf").exists()
