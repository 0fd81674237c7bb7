"""Optimal rounding of convolution weights to ONNX Runtime's int8 weight grid (the objective of AdaRound, Nagel
et al. 2020: solved exactly for depthwise filters, greedily for the others).

Rounding each weight to the *nearest* grid point is not what keeps a layer's output closest to float: the
errors of a filter's weights meet in one output and can add up or cancel. For a filter ``w`` with grid
step ``s``, the output error on an input patch ``x`` is ``Δ·x`` with ``Δ = q·s − w``; its mean is what
bias correction removes, and what is left is ``E[(Δ·(x − μ))²] = Δᵀ Σ Δ``, ``Σ`` the covariance of the
filter's input patches over calibration images. A 3×3 depthwise filter has 9 weights, so all 2⁹ = 512
ways of rounding each one down or up can be tried, per channel, exactly. Pointwise filters (and the stem's)
have 27–1024 weights that all see the same inputs: one covariance per layer, and a greedy descent from
round-to-nearest that flips, in each filter, the one weight whose flip lowers ``Δᵀ Σ Δ`` most, until no
flip helps (:func:`greedy_rounding`). Both run by default (``export --rounding all``): on Google's model and 219
photos, rounding every filter this way gave the int8 softmax the lowest KL to float's at 7-bit, 8-bit and uint8
weights, and the best or equal top-1 agreement (``docs/int8.md``).

On Google's ImageNet MobileNet-V1 the first depthwise layer's 288 weights cause about half of the int8
model's whole distillation error; this module leaves ORT nothing to round there.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..layers import Conv2dSame, same_pads
from .fold import fold_bn
from .grids import DTYPE_RANGES, WEIGHT_GRIDS, resolve_reduce_range, weight_scale

MAX_TAPS = 12  # 2**12 rounding patterns per filter at most (3×3 kernels have 9 taps)
MAX_PASSES = 200  # greedy flips per filter at most (on Google's model the descent stops well before)


def _depthwise(module: nn.Module) -> bool:
    return (
        isinstance(module, nn.Conv2d)
        and module.groups == module.in_channels == module.out_channels
        and module.kernel_size[0] * module.kernel_size[1] <= MAX_TAPS
    )


def _dense(module: nn.Module) -> bool:
    """The stem and pointwise convolutions: every filter sees the same input patches."""
    return isinstance(module, nn.Conv2d) and module.groups == 1


@torch.no_grad()
def patch_moments(model: nn.Module, images: torch.Tensor, batch_size: int = 32, dense: bool = False) -> dict:
    """Mean and covariance of each conv's input patches over ``images`` through the float model (float64,
    padding included, as the convolution sees them): per channel for depthwise convs (C×k, C×k×k) and, with
    ``dense``, one per stem/pointwise conv (K, K×K)."""
    convs = {n: m for n, m in model.named_modules() if _depthwise(m) or (dense and _dense(m))}
    sums: dict[str, list] = {}

    def hook(name, conv):
        def record(_module, args):
            x = F.pad(args[0], same_pads(conv, args[0])) if isinstance(conv, Conv2dSame) else args[0]
            patches = F.unfold(x, conv.kernel_size, conv.dilation, conv.padding, conv.stride)
            n, k, length = patches.shape
            if conv.groups == 1:  # K × (N·L)
                patches = patches.permute(1, 0, 2).reshape(k, n * length).double()
                gram = patches @ patches.T
            else:  # C × k × (N·L): one batched GEMM per call (an einsum over N × C × k × L ran ~3× slower)
                c = conv.in_channels
                patches = patches.view(n, c, -1, length).permute(1, 2, 0, 3).reshape(c, -1, n * length).double()
                gram = torch.bmm(patches, patches.transpose(1, 2))
            acc = sums.setdefault(name, [0, 0.0, 0.0])
            acc[0] += n * length
            acc[1] = acc[1] + patches.sum(dim=-1)
            acc[2] = acc[2] + gram

        return record

    handles = [m.register_forward_pre_hook(hook(n, m)) for n, m in convs.items()]
    try:
        for i in range(0, len(images), batch_size):
            model(images[i : i + batch_size])
    finally:
        for h in handles:
            h.remove()
    return {name: (s1 / count, s2 / count - s1[..., :, None] * s1[..., None, :] / count**2)
            for name, (count, s1, s2) in sums.items()}  # fmt: skip


def peaks(w: torch.Tensor) -> torch.Tensor:
    """Mask of each row's largest-magnitude weight: the one that sets ORT's per-channel scale."""
    mask = torch.zeros_like(w, dtype=torch.bool)
    mask[torch.arange(len(w)), w.abs().argmax(dim=1)] = True
    return mask


def _on_grid_units(w: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weights in grid steps (float64), each row's peak, and the level no other weight may pass: beyond it ORT
    would derive a different scale (uint8: the peak is 127.5 steps)."""
    t = (w / scale).double()
    return t, peaks(t), torch.floor(t.abs().amax(dim=1, keepdim=True) + 1e-6)


def best_rounding(
    w: torch.Tensor, scale: torch.Tensor, cov: torch.Tensor, grid: tuple[int, int], zero: int
) -> torch.Tensor:  # fmt: skip
    """Integer levels (C×k, relative to the zero point) minimising ``Δᵀ Σ Δ`` per channel, each weight
    rounded down or up (never past the peak); each channel's largest-magnitude weight keeps ORT's rounding, since
    it sets the scale."""
    t, peak, limit = _on_grid_units(w, scale)  # C × k
    nearest = torch.round(t)  # ORT: round half to even
    lo = torch.where(peak, nearest, torch.floor(t))
    hi = torch.where(peak, nearest, lo + 1)
    patterns = torch.tensor(list(itertools.product((0, 1), repeat=t.shape[1])), dtype=torch.float64)  # P × k
    q = lo[:, None, :] + patterns[None] * (hi - lo)[:, None, :]  # C × P × k
    q = (q + zero).clamp(*grid).sub(zero)
    limit = limit.view(-1, 1, 1)
    q = torch.where(peak[:, None, :], q, q.clamp(-limit, limit))
    delta = (q - t[:, None, :]) * scale.double().view(-1, 1, 1)
    cost = torch.einsum("cpi,cij,cpj->cp", delta, cov, delta)
    return q[torch.arange(len(t)), cost.argmin(dim=1)]


def greedy_rounding(
    w: torch.Tensor, scale: torch.Tensor, cov: torch.Tensor, grid: tuple[int, int], zero: int,
    max_passes: int = MAX_PASSES,
) -> torch.Tensor:  # fmt: skip
    """Integer levels (C×K, relative to the zero point) lowering ``Δᵀ Σ Δ`` from round-to-nearest, for filters
    too large to search exhaustively that share one input covariance ``Σ`` (K×K). Each pass flips, in every
    filter, the weight (down ↔ up) whose flip lowers its cost most, while any does; the same constraints as
    :func:`best_rounding` (the peak keeps ORT's rounding, no weight outgrows it, the grid's bounds)."""
    t, peak, limit = _on_grid_units(w, scale)
    s = scale.double().expand_as(t)
    q = torch.round(t)
    down, up = torch.floor(t), torch.floor(t) + 1
    grad = ((q - t) * s) @ cov  # C × K: Σ Δ per filter, kept up to date
    diag = torch.diagonal(cov)
    rows_all = torch.arange(len(t))
    for _ in range(max_passes):
        other = torch.where(q == down, up, down)
        allowed = ~peak & (other + zero >= grid[0]) & (other + zero <= grid[1]) & (other.abs() <= limit)
        step = (other - q) * s
        gain = torch.where(allowed, 2 * step * grad + step**2 * diag, torch.inf)  # change of Δᵀ Σ Δ
        best, j = gain.min(dim=1)
        rows = rows_all[best < 0]
        if not len(rows):
            break
        cols = j[rows]
        q[rows, cols] = other[rows, cols]
        grad[rows] += step[rows, cols, None] * cov[cols]
    return q


@torch.no_grad()
def round_weights(
    model: nn.Module, images: np.ndarray | torch.Tensor, reduce_range: bool | None = None,
    weight_type: str = "int8", dense: bool = False,
) -> tuple[nn.Module, int]:  # fmt: skip
    """A BN-folded copy of ``model`` whose depthwise filters (and, with ``dense``, stem and pointwise filters)
    lie on ORT's per-channel weight grid, rounded by :func:`best_rounding` (:func:`greedy_rounding`), with
    biases that absorb the mean of the chosen rounding errors. Returns it and the number of layers rounded.

    Run before :func:`~.bias_correction.bias_correct`: ORT then finds these weights already on its grid and
    only each filter's largest weight left to round (bias correction covers that one).
    """
    reduce_range = resolve_reduce_range(reduce_range, weight_type)
    qmin, qmax = WEIGHT_GRIDS[weight_type, reduce_range]
    zero = round((qmin + qmax) / 2)
    folded = fold_bn(model)
    moments = patch_moments(folded, torch.as_tensor(np.asarray(images), dtype=torch.float32), dense=dense)
    convs = dict(folded.named_modules())
    for name, (mean, cov) in moments.items():
        conv = convs[name]
        w = conv.weight.view(conv.out_channels, -1)
        scale = weight_scale(w, True, reduce_range, weight_type).view(-1, 1)
        choose = greedy_rounding if conv.groups == 1 else best_rounding
        q = choose(w, scale, cov, DTYPE_RANGES[weight_type], zero)
        on_grid = (q * scale.double()).float()
        new = torch.where(peaks(w), w, on_grid)  # the peak stays as it is: ORT computes the same scale from it
        error = (new - w).double()
        shift = error @ mean if conv.groups == 1 else (error * mean).sum(dim=1)
        conv.bias -= shift.to(conv.bias.dtype)
        conv.weight.copy_(new.view_as(conv.weight))
    return folded, len(moments)
