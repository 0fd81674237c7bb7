"""Optimal rounding of conv filters (``deploy/rounding.py``: exhaustive for depthwise filters, greedy for the stem
and pointwise ones): ONNX Runtime keeps the chosen levels, and the chosen levels leave a smaller output error
than rounding to nearest, measured by running the convolutions."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from deploy_helpers import calibrated_model
from mobilenet_v1.deploy.fold import fold_bn
from mobilenet_v1.deploy.grids import rounded_weight
from mobilenet_v1.deploy.onnx_export import export_onnx
from mobilenet_v1.deploy.quantize import quantize_onnx
from mobilenet_v1.deploy.rounding import best_rounding, greedy_rounding, round_weights


class _Reader:
    def __init__(self, x):
        self.batches = iter([{"input": x.numpy()}])

    def get_next(self):
        return next(self.batches, None)


def _convs(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}


def _inputs(seed=0, n=24, size=32):
    """Smooth, correlated images (neighbouring pixels alike, as in photos): where rounding choices matter."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, size // 4, size // 4, generator=g) * 2 - 1
    return torch.nn.functional.interpolate(coarse, size=size, mode="bilinear", align_corners=False)


@pytest.mark.parametrize(("weight_type", "reduce_range"), [("int8", True), ("int8", False), ("uint8", False)])
def test_onnx_runtime_keeps_the_chosen_levels(weight_type, reduce_range, tmp_path):
    model = calibrated_model(width_multiplier=0.25, resolution=32, num_classes=10)
    x = _inputs()
    rounded, count = round_weights(model, x, reduce_range, weight_type, dense=True)
    assert count == 27  # Table 1's convolutions: the stem, 13 depthwise, 13 pointwise
    export_onnx(rounded, tmp_path / "fp32.onnx", rtol=1e-5)  # as export_int8 does
    quantize_onnx(tmp_path / "fp32.onnx", tmp_path / "q.onnx", _Reader(x[:4]), reduce_range=reduce_range,
                  weight_type=weight_type)  # fmt: skip
    q = onnx.load(str(tmp_path / "q.onnx"))
    init = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    fp32 = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "fp32.onnx")).graph.initializer}
    checked = 0
    for node in q.graph.node:
        name = node.input[0]
        if node.op_type != "DequantizeLinear" or not name.endswith("_quantized") or init[name].ndim != 4:
            continue
        zero = init[node.input[2]].astype(np.float32).reshape(-1, 1, 1, 1)
        stored = (init[name].astype(np.float32) - zero) * init[node.input[1]].reshape(-1, 1, 1, 1)
        ours = fp32[name.removesuffix("_quantized")]
        # every weight but each filter's peak is already on the grid; ORT stores exactly it
        np.testing.assert_allclose(stored, rounded_weight(torch.from_numpy(ours.copy()), True, reduce_range,
                                                          weight_type).numpy(), rtol=1e-6, atol=1e-7)  # fmt: skip
        off_grid = np.abs(stored - ours) > 1e-6 * np.abs(ours).max()
        assert off_grid.reshape(len(ours), -1).sum(1).max() <= 1, name  # only the peak is left for ORT
        checked += 1
    assert checked == 27


@pytest.mark.parametrize(("weight_type", "reduce_range"), [("int8", True), ("uint8", False)])
def test_chosen_rounding_beats_nearest_on_the_layer_outputs(weight_type, reduce_range):
    """Each conv run with its float input: output error variance (the part bias correction cannot remove) with
    the chosen levels vs with round-to-nearest — not higher in any layer, lower in total for the depthwise and
    for the other layers, and the mean error is absorbed by the bias."""
    model = calibrated_model(width_multiplier=0.25, resolution=32, num_classes=10)
    x = _inputs()
    folded = fold_bn(model)
    rounded, _ = round_weights(model, x, reduce_range, weight_type, dense=True)
    inputs = {}
    hooks = [m.register_forward_pre_hook(lambda m, a, n=n: inputs.setdefault(n, a[0]))
             for n, m in _convs(folded).items()]  # fmt: skip
    with torch.no_grad():
        folded(x)
    for h in hooks:
        h.remove()
    ours = _convs(rounded)
    totals = {"depthwise": [0.0, 0.0], "stem and pointwise": [0.0, 0.0]}
    for name, conv in _convs(folded).items():
        with torch.no_grad():
            ref = conv(inputs[name])
            w_near = rounded_weight(conv.weight, True, reduce_range, weight_type)
            nearest = torch.nn.functional.conv2d(inputs[name], w_near, conv.bias, conv.stride, conv.padding,
                                                 groups=conv.groups)  # fmt: skip
            chosen = ours[name](inputs[name])
        e_near, e_ours = (nearest - ref).double(), (chosen - ref).double()
        var_near = (e_near - e_near.mean(dim=(0, 2, 3), keepdim=True)).pow(2).mean()
        var_ours = (e_ours - e_ours.mean(dim=(0, 2, 3), keepdim=True)).pow(2).mean()
        assert var_ours <= var_near * (1 + 1e-4), name  # equal where only the centre tap sees data (1×1 maps)
        kind = totals["depthwise" if conv.groups > 1 else "stem and pointwise"]
        kind[0], kind[1] = kind[0] + var_near, kind[1] + var_ours
        # the bias absorbed the chosen rounding's mean error (all but the peak's, left for bias correction)
        assert e_ours.mean(dim=(0, 2, 3)).abs().max() < e_near.mean(dim=(0, 2, 3)).abs().max() + 1e-6, name
    for kind, (total_near, total_ours) in totals.items():  # measured: 0.8-0.93× and 0.6-0.7× on this model
        assert total_ours < 0.97 * total_near, kind


def test_best_rounding_is_the_exhaustive_minimum():
    """Against an independent search over all 2⁹ patterns of one filter, written out with numpy."""
    rng = np.random.default_rng(0)
    w = torch.from_numpy(rng.normal(size=(4, 9))).float()
    a = rng.normal(size=(4, 9, 9))
    cov = torch.from_numpy(a @ a.transpose(0, 2, 1) + 9 * np.eye(9) * 0.1)
    scale = w.abs().amax(1, keepdim=True) / 64
    got = best_rounding(w, scale, cov, (-128, 127), 0).numpy()
    for c in range(4):
        t = (w[c] / scale[c]).double().numpy()
        peak = np.abs(t).argmax()
        best, best_q = np.inf, None
        for bits in range(512):
            q = np.floor(t) + np.array([(bits >> i) & 1 for i in range(9)])
            q[peak] = np.round(t[peak])
            d = (q - t) * float(scale[c])
            cost = d @ cov[c].numpy() @ d
            if cost < best - 1e-12:
                best, best_q = cost, q
        np.testing.assert_array_equal(got[c], best_q)


def test_greedy_rounding_ends_where_no_single_flip_helps():
    """Against an independent numpy check: the result costs less than round-to-nearest, keeps each peak's
    rounding and the grid, and no single allowed flip (down ↔ up) of any other weight lowers its filter's cost."""
    rng = np.random.default_rng(1)
    k = 24
    w = torch.from_numpy(rng.normal(size=(6, k))).float()
    a = rng.normal(size=(k, k))
    cov = torch.from_numpy(a @ a.T / k + 0.05 * np.eye(k))
    scale = w.abs().amax(1, keepdim=True) / 63
    got = greedy_rounding(w, scale, cov, (-128, 127), 0, max_passes=10_000).numpy()
    c = cov.numpy()
    for row in range(len(w)):
        t = (w[row] / scale[row]).double().numpy()
        s = float(scale[row])
        q = got[row]

        def cost(levels, t=t, s=s):
            d = (levels - t) * s
            return d @ c @ d

        peak = np.abs(t).argmax()
        assert q[peak] == np.round(t[peak])
        assert np.all((q == np.floor(t)) | (q == np.floor(t) + 1) | (np.arange(k) == peak))
        assert np.abs(np.delete(q, peak)).max() <= np.floor(np.abs(t).max() + 1e-6)  # none outgrows the peak
        assert cost(q) < cost(np.round(t))
        for i in range(k):
            if i == peak:
                continue
            flipped = q.copy()
            flipped[i] = np.floor(t[i]) if q[i] != np.floor(t[i]) else np.floor(t[i]) + 1
            if abs(flipped[i]) <= np.floor(np.abs(t).max() + 1e-6):
                assert cost(flipped) >= cost(q) - 1e-12, (row, i)
