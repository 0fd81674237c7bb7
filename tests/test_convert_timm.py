"""timm ``mobilenetv1_100`` / ``mobilenetv1_125`` state dicts → our model, checked against timm itself."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import timm  # noqa: E402 - a dev dependency: the independent implementation compared against
import torch
from safetensors.torch import save_file

from mobilenet_v1.convert import load_any
from mobilenet_v1.model import MobileNetV1
from parity import assert_close, draw_sizes, randomize_batch_norms


def random_timm(arch: str, seed: int = 0, **kwargs):
    """timm's model with random weights and random BN statistics (BN's identity init would hide errors)."""
    torch.manual_seed(seed)
    model = timm.create_model(arch, **kwargs).eval()
    randomize_batch_norms(model)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                m.bias.normal_(0, 0.1)
    return model


# timm has two widths of MobileNet-V1; each is checked at input sizes drawn from a seeded grid (odd maps included)
CASES = [(arch, alpha, size, suffix) for (arch, alpha), sizes, suffix in (
    (("mobilenetv1_100", 1.0), draw_sizes(2, 100, odd_maps=2), ".safetensors"),
    (("mobilenetv1_100", 1.0), draw_sizes(1, 101), ".pth"),
    (("mobilenetv1_125", 1.25), draw_sizes(2, 125, odd_maps=2), ".safetensors"),
) for size in sizes]  # fmt: skip


def _inputs(size: int) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size))


@pytest.mark.parametrize(("arch", "alpha", "size", "suffix"), CASES)
def test_timm_weights_match_timm_outputs(tmp_path, arch, alpha, size, suffix):
    reference = random_timm(arch)
    path = tmp_path / f"{arch}{suffix}"
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    save_file(state, path) if suffix == ".safetensors" else torch.save(state, path)
    model, info = load_any(path, resolution=size)
    x = _inputs(size)
    with torch.no_grad():
        expected, got = reference(x), model(x)
    assert expected.std() > 0.1
    print(f"{arch}{suffix} at {size}: max |Δ logits| vs timm {assert_close(got.numpy(), expected.numpy()):.2e}")
    c = model.config
    # timm's MobileNet-V1: ReLU6, PyTorch symmetric padding, BatchNorm2d's default eps
    assert (c.width_multiplier, c.activation, c.padding, c.bn_eps) == (alpha, "relu6", "symmetric", 1e-5)
    assert (c.num_classes, info.label_offset, info.preprocessing.interpolation) == (1000, 0, "bicubic")


@pytest.mark.parametrize("size", draw_sizes(3, 7, odd_maps=3))
def test_tf_same_padding_is_timms_pad_type_same(tmp_path, size):
    """timm's own TF 'SAME' (``pad_type="same"``), an implementation independent of ours, at sizes with odd maps."""
    reference = random_timm("mobilenetv1_100", pad_type="same")
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, tmp_path / "same.safetensors")
    converted, _ = load_any(tmp_path / "same.safetensors")
    model = MobileNetV1(config=dataclasses.replace(converted.config, padding="tf_same", resolution=size)).eval()
    model.load_state_dict(converted.state_dict())
    x = _inputs(size)
    with torch.no_grad():
        assert_close(model(x).numpy(), reference(x).numpy())
        assert not np.allclose(converted(x).numpy(), reference(x).numpy(), atol=1e-3)  # symmetric is not 'SAME'


def test_timm_checkpoint_wrapped_in_a_dict(tmp_path):
    reference = random_timm("mobilenetv1_100")
    torch.save(
        {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()}}, tmp_path / "c.pth"
    )
    model, _ = load_any(tmp_path / "c.pth")
    for (k, a), b in zip(model.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(a, b), k


def test_timm_variant_with_head_conv_is_refused(tmp_path):
    save_file(
        {k: v.contiguous() for k, v in timm.create_model("mobilenetv1_100h").state_dict().items()},
        tmp_path / "h.safetensors",
    )
    with pytest.raises(ValueError, match="mobilenetv1_100h adds a head conv"):
        load_any(tmp_path / "h.safetensors")


class NotATensor:  # a pickle that would run code on load
    pass


def test_pth_with_arbitrary_objects_is_refused_without_unpickling(tmp_path):
    torch.save({"conv_stem.weight": NotATensor()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="not a readable PyTorch state dict"):
        load_any(tmp_path / "evil.pth")
