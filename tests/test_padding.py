"""The three padding rules, each derived from its owner's published definition at odd and even sizes.

TensorFlow's 'SAME' (the formula of TensorFlow's convolution guide, ``tf.nn.convolution``): output
``ceil(in / stride)``; padding ``max(k − stride, 0)`` when ``in % stride == 0``, else ``max(k − in % stride, 0)``;
the smaller half on top/left. Keras's MobileNet: ``ZeroPadding2D(((0, 1), (0, 1)))`` then 'valid', so
``floor((in + 1 − k) / stride) + 1``. PyTorch's symmetric ``padding = d·(k − 1) / 2``.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mobilenet_v1 import spec
from mobilenet_v1.layers import Conv2dSame
from mobilenet_v1.model import ModelConfig


def tf_same(size: int, kernel: int, stride: int) -> tuple[int, int, int]:
    """(pad before, pad after, output) as TensorFlow's documentation states them."""
    total = max(kernel - stride, 0) if size % stride == 0 else max(kernel - size % stride, 0)
    return total // 2, total - total // 2, math.ceil(size / stride)


CASES = [(size, k, s, d) for size in range(1, 70) for k in (1, 2, 3, 5) for s in (1, 2, 3) for d in (1, 2)]


@pytest.mark.parametrize("depthwise", [False, True])
def test_tf_same_is_tensorflows_formula_at_every_size(depthwise):
    for size, k, s, d in CASES:
        effective = d * (k - 1) + 1  # a dilated filter's extent
        before, after, out = tf_same(size, effective, s)
        assert spec.pads(size, k, s, d, "tf_same", depthwise) == (before, after), (size, k, s, d)
        assert spec.output_size(size, k, s, d, "tf_same", depthwise) == out, (size, k, s, d)


def test_keras_pads_its_stride_2_depthwise_layers_by_one_pixel_bottom_right():
    for size in range(3, 300):
        assert spec.pads(size, 3, 2, 1, "keras", True) == (0, 1)
        assert spec.output_size(size, 3, 2, 1, "keras", True) == (size + 1 - 3) // 2 + 1  # 'valid' after the pad
        # the stem and every stride-1 layer pad like TF 'SAME'
        assert spec.pads(size, 3, 2, 1, "keras", False) == tf_same(size, 3, 2)[:2]
        assert spec.pads(size, 3, 1, 1, "keras", True) == (1, 1)
        same = spec.output_size(size, 3, 2, 1, "tf_same", True)
        assert spec.output_size(size, 3, 2, 1, "keras", True) == same - (size % 2), size  # equal on even maps only


def test_symmetric_is_pytorchs_padding():
    for size, k, s, d in CASES:
        if k % 2:
            p = d * (k - 1) // 2
            assert spec.pads(size, k, s, d, "symmetric", False) == (p, p)
            assert spec.output_size(size, k, s, d, "symmetric", False) == (size + 2 * p - d * (k - 1) - 1) // s + 1


@pytest.mark.parametrize("rule", ["tf_same", "keras"])
@pytest.mark.parametrize("size", [7, 8, 33, 75])
def test_padded_convolution_is_zero_padding_then_a_valid_convolution(rule, size):
    conv = Conv2dSame(4, 4, 3, 2, padding=0, groups=4, bias=False, rule=rule)
    x = torch.randn(1, 4, size, size, generator=torch.Generator().manual_seed(size))
    before, after = spec.pads(size, 3, 2, 1, rule, True)
    expected = F.conv2d(F.pad(x, (before, after, before, after)), conv.weight, stride=2, groups=4)
    assert torch.equal(conv(x), expected)
    assert conv(x).shape[-1] == spec.output_size(size, 3, 2, 1, rule, True)


@pytest.mark.parametrize("size", [150, 161, 200, 213])
def test_the_cost_model_follows_the_padding_rule(size):
    """At sizes that reach odd maps Keras's network has smaller maps and fewer Mult-Adds than TF-slim's;
    the module's maps are the cost model's."""
    from mobilenet_v1.model import MobileNetV1

    for padding in ("symmetric", "tf_same", "keras"):
        config = ModelConfig(0.25, size, padding=padding, num_classes=0)
        layers = [layer for layer in config.layers() if layer.op != spec.OP_POOL]
        model = MobileNetV1(config=config).eval()
        x = torch.zeros(1, 3, size, size)
        with torch.no_grad():
            for layer, module in zip(layers, model.features):
                x = module(x)
                assert tuple(x.shape[-2:]) == layer.output_hw, (padding, layer.name)
    keras = spec.resolve(1.0, size, padding="keras")
    same = spec.resolve(1.0, size, padding="tf_same")
    assert sum(layer.mult_adds for layer in keras) < sum(layer.mult_adds for layer in same)
