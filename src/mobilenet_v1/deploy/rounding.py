"""Optimal rounding of depthwise filters to ONNX Runtime's int8 weight grid (the objective of AdaRound, Nagel
et al. 2020, solved exactly where it is small).

Rounding each weight to the *nearest* grid point is not what keeps a layer's output closest to float: the
errors of a filter's weights meet in one output and can add up or cancel. For a filter ``w`` with grid
step ``s``, the output error on an input patch ``x`` is ``Δ·x`` with ``Δ = q·s − w``; its mean is what
bias correction removes, and what is left is ``E[(Δ·(x − μ))²] = Δᵀ Σ Δ``, ``Σ`` the covariance of the
filter's input patches over calibration images. A 3×3 depthwise filter has 9 weights, so all 2⁹ = 512
ways of rounding each one down or up can be tried, per channel, exactly. Pointwise filters have 32–1024
weights and stay rounded to nearest (by ONNX Runtime).

On Google's ImageNet MobileNet-V1 the first depthwise layer's 288 weights cause about half of the int8
model's whole distillation error (``BENCHMARKS.md``); this module leaves ORT nothing to round there.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .bias_correction import weight_scale
from .fold import fold_bn
from .quantize import DTYPE_RANGES, WEIGHT_GRIDS, resolve_reduce_range

MAX_TAPS = 12  # 2**12 rounding patterns per filter at most (3×3 kernels have 9 taps)


def _depthwise(module: nn.Module) -> bool:
    return (
        isinstance(module, nn.Conv2d)
        and module.groups == module.in_channels == module.out_channels
        and module.kernel_size[0] * module.kernel_size[1] <= MAX_TAPS
    )


@torch.no_grad()
def patch_moments(model: nn.Module, images: torch.Tensor, batch_size: int = 32) -> dict[str, tuple]:
    """Per depthwise conv: (mean, covariance) of each channel's input patches, float64 (C×k, C×k×k), over
    ``images`` through the float model — padding included, as the convolution sees them."""
    convs = {n: m for n, m in model.named_modules() if _depthwise(m)}
    sums: dict[str, list] = {}

    def hook(name, conv):
        def record(_module, args):
            x = args[0]
            patches = F.unfold(x, conv.kernel_size, conv.dilation, conv.padding, conv.stride)
            n, _, length = patches.shape
            # C × k × (N·L): one batched GEMM per call (an einsum over N × C × k × L ran ~3× slower)
            c = conv.in_channels
            patches = patches.view(n, c, -1, length).permute(1, 2, 0, 3).reshape(c, -1, n * length).double()
            acc = sums.setdefault(name, [0, 0.0, 0.0])
            acc[0] += n * length
            acc[1] = acc[1] + patches.sum(dim=2)
            acc[2] = acc[2] + torch.bmm(patches, patches.transpose(1, 2))

        return record

    handles = [m.register_forward_pre_hook(hook(n, m)) for n, m in convs.items()]
    try:
        for i in range(0, len(images), batch_size):
            model(images[i : i + batch_size])
    finally:
        for h in handles:
            h.remove()
    out = {}
    for name, (count, s1, s2) in sums.items():
        mean = s1 / count
        out[name] = (mean, s2 / count - mean[:, :, None] * mean[:, None, :])
    return out


def peaks(w: torch.Tensor) -> torch.Tensor:
    """Mask of each row's largest-magnitude weight: the one that sets ORT's per-channel scale."""
    mask = torch.zeros_like(w, dtype=torch.bool)
    mask[torch.arange(len(w)), w.abs().argmax(dim=1)] = True
    return mask


def best_rounding(
    w: torch.Tensor, scale: torch.Tensor, cov: torch.Tensor, grid: tuple[int, int], zero: int
) -> torch.Tensor:  # fmt: skip
    """Integer levels (C×k, relative to the zero point) minimising ``Δᵀ Σ Δ`` per channel, each weight
    rounded down or up (never past the peak); each channel's largest-magnitude weight keeps ORT's rounding, since
    it sets the scale."""
    t = (w / scale).double()  # C × k
    nearest = torch.round(t)  # ORT: round half to even
    peak = peaks(t)
    lo = torch.where(peak, nearest, torch.floor(t))
    hi = torch.where(peak, nearest, lo + 1)
    patterns = torch.tensor(list(itertools.product((0, 1), repeat=t.shape[1])), dtype=torch.float64)  # P × k
    q = lo[:, None, :] + patterns[None] * (hi - lo)[:, None, :]  # C × P × k
    q = (q + zero).clamp(*grid).sub(zero)
    # no other weight may outgrow the peak, or ORT would derive a different scale (uint8: peak = 127.5 steps)
    limit = torch.floor(t.abs().amax(dim=1) + 1e-6).view(-1, 1, 1)
    q = torch.where(peak[:, None, :], q, q.clamp(-limit, limit))
    delta = (q - t[:, None, :]) * scale.double().view(-1, 1, 1)
    cost = torch.einsum("cpi,cij,cpj->cp", delta, cov, delta)
    return q[torch.arange(len(t)), cost.argmin(dim=1)]


@torch.no_grad()
def round_depthwise(
    model: nn.Module, images: np.ndarray | torch.Tensor, reduce_range: bool | None = None,
    weight_type: str = "int8",
) -> tuple[nn.Module, int]:  # fmt: skip
    """A BN-folded copy of ``model`` whose depthwise filters lie on ORT's per-channel weight grid, rounded by
    :func:`best_rounding`, with biases that absorb the mean of the chosen rounding errors. Returns it and the
    number of depthwise layers rounded.

    Run before :func:`~.bias_correction.bias_correct`: ORT then finds these weights already on its grid and
    only each filter's largest weight left to round (bias correction covers that one).
    """
    reduce_range = resolve_reduce_range(reduce_range, weight_type)
    qmin, qmax = WEIGHT_GRIDS[weight_type, reduce_range]
    zero = round((qmin + qmax) / 2)
    folded = fold_bn(model)
    moments = patch_moments(folded, torch.as_tensor(np.asarray(images), dtype=torch.float32))
    convs = dict(folded.named_modules())
    for name, (mean, cov) in moments.items():
        conv = convs[name]
        w = conv.weight.view(conv.out_channels, -1)
        scale = weight_scale(w, True, reduce_range, weight_type).view(-1)
        q = best_rounding(w, scale.view(-1, 1), cov, DTYPE_RANGES[weight_type], zero)
        on_grid = (q * scale.double().view(-1, 1)).float()
        new = torch.where(peaks(w), w, on_grid)  # the peak stays as it is: ORT computes the same scale from it
        conv.bias -= ((new - w).double() * mean).sum(dim=1).to(conv.bias.dtype)
        conv.weight.copy_(new.view_as(conv.weight))
    return folded, len(moments)
