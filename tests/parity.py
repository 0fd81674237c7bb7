"""What "equal to an independent implementation" means in these tests, stated once, and the grids drawn for it.

Parity with Keras, timm, TensorFlow and Hugging Face is max |Δ| ≤ 1e-5 · max(1, max |y|): float32 rounding
relative to the outputs' scale (logits of 30 carry ~1e-6 of rounding each), and absolute below 1.
Cases are drawn from a seeded random grid of width multipliers and input sizes, odd maps included, rather
than the standard sizes alone: at 128/160/192/224 every map is even, and padding rules that differ only on
odd maps (TF 'SAME' vs Keras's fixed (0, 1)) look the same there.
"""

from __future__ import annotations

import numpy as np
import torch

from mobilenet_v1 import spec

RTOL = 1e-5


def bound(expected) -> float:
    return RTOL * max(1.0, float(np.abs(np.asarray(expected)).max()))


def assert_close(got, expected, what: str = "outputs") -> float:
    """Fail unless ``got`` is within :func:`bound` of ``expected``; returns max |Δ| (tests print it)."""
    got, expected = np.asarray(got), np.asarray(expected)
    assert got.shape == expected.shape, f"{what}: shape {got.shape} vs {expected.shape}"
    diff = float(np.abs(got - expected).max())
    assert diff <= bound(expected), f"{what}: max |Δ| {diff:.3g} > {bound(expected):.3g}"
    return diff


def reaches_odd_map(size: int, padding: str = "tf_same") -> bool:
    """Whether a stride-2 layer of the standard network reads an odd map at this input size."""
    layers = spec.resolve(1.0, size, num_classes=0, padding=padding)
    return any(layer.stride == 2 and layer.input_hw[0] % 2 for layer in layers)


def draw_sizes(n: int, seed: int, low: int = spec.MIN_RESOLUTION, high: int = 320, odd_maps: int = 0) -> list[int]:
    """``n`` distinct input sizes in [low, high] from ``seed``, at least ``odd_maps`` of them reaching an odd map."""
    rng = np.random.default_rng(seed)
    sizes: list[int] = []
    while len(sizes) < n:
        size = int(rng.integers(low, high + 1))
        need_odd = sum(map(reaches_odd_map, sizes)) < odd_maps and n - len(sizes) <= odd_maps
        if size not in sizes and (reaches_odd_map(size) or not need_odd):
            sizes.append(size)
    return sizes


def randomize_batch_norms(model: torch.nn.Module) -> None:
    """Random BN scales, shifts and running statistics in place (torch's global RNG): a reference model fresh from
    its constructor has identity batch norms, which hide a converter that swaps or drops them."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
