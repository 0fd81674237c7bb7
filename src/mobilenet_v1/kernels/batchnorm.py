"""Batch norm with batch statistics fused with ReLU (``csrc/bn_relu.c``): two passes forward, two backward.

Float32 maps, or the bfloat16 ones convolutions give under bf16 autocast (computed in float32). Statistics are
sums of ``x - shift`` (the first pixel's values) in float64, against cancellation; the kernel that writes a map
can sum them as it writes it, sparing a pass (``stats``).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from .build import _call, _ptr, _ptr_or_value, load

STREAM_BYTES = 4 << 20  # maps above this are written with streaming stores: they leave the caches anyway, and 4 MiB
# measured ~1% faster than 8 MiB in the 128 px training step on a CPU with a 16 MB L3


def _new_stats(c: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Room for a map's batch statistics as :func:`_map_stats` returns them, for the kernel that writes the map"""
    return torch.empty(c), torch.empty(2, c, dtype=torch.float64)


def _map_stats(lib, x, stats=None):
    """(shift [C] float32, sums [2, C] float64): the sums of x - shift and (x - shift)² per channel, shift being the
    first pixel's values (against cancellation); ``stats`` when given, summed by the kernel that wrote x."""
    if stats is not None:
        return stats
    n, c, h, w = x.shape
    shift, sums = _new_stats(c)
    shift.copy_(x[0, :, 0, 0])
    bf16 = int(x.dtype == torch.bfloat16)
    _call(lib.bn_relu_stats, _ptr(x), n * h * w, c, _ptr(shift), _ptr(sums[0]), _ptr(sums[1]), bf16)
    return shift, sums


def fill_stats(x: torch.Tensor, stats=None) -> torch.Tensor:
    """x, after writing its batch statistics into ``stats`` (shift, sums) where given: for a map whose writer could not
    sum them (:func:`_map_stats`)"""
    if stats is not None:
        for got, want in zip(stats, _map_stats(load(), x)):
            got.copy_(want)
    return x


def _bn_forward(lib, x, weight, bias, running_mean, running_var, momentum: float, eps: float, stats=None):
    """Batch statistics of x (updating the running ones as ``F.batch_norm`` does) and the float32 scale/shift
    (mean32, a, b) of y = max((x - mean32)·a + b, 0); returns (mean, mean32, invstd, a, b). ``stats``: x's sums, as
    :func:`_map_stats` returns them, where the kernel that wrote x summed them."""
    n, c, h, w = x.shape
    shift, sums = _map_stats(lib, x, stats)
    return _bn_from_stats(sums, shift, n * h * w, weight, bias, running_mean, running_var, momentum, eps)


def _bn_from_stats(stats, shift, m: int, weight, bias, running_mean, running_var, momentum: float, eps: float):
    """:func:`_bn_forward` from the sums stats [2, C] of x - shift and (x - shift)² over m values per channel
    (``bn_finish_stats``: F.batch_norm's unbiased variance into the running estimate)"""
    c = stats.shape[1]
    mean_invstd = torch.empty(2, c, dtype=torch.float64)
    mean32_a = torch.empty(2, c)
    out = (mean_invstd[0], mean_invstd[1], mean32_a[0], mean32_a[1])
    with torch.no_grad():  # running_mean and running_var are updated in place, as F.batch_norm does
        args = (stats[0], stats[1], shift, c, float(m), weight, running_mean, running_var)
        _call(load().bn_finish_stats, *map(_ptr_or_value, args), float(momentum), float(eps), *map(_ptr, out))
    # the backward pass re-derives the ReLU mask from the same float32 values
    return mean_invstd[0], mean32_a[0], mean_invstd[1], mean32_a[1], bias.detach().float().contiguous()


def _bn_grad_sums(lib, g, x, mean32, a, b) -> torch.Tensor:
    """[2, C] float64: Σ m·g and Σ m·g·(x - mean32) over the map (m: the forward's ReLU mask)"""
    n, c, h, w = x.shape
    sums = torch.empty(2, c, dtype=torch.float64)
    args = (_ptr(g), _ptr(x), n * h * w, c, _ptr(mean32), _ptr(a), _ptr(b), _ptr(sums[0]), _ptr(sums[1]))
    _call(lib.bn_relu_grad_sums, *args, int(x.dtype == torch.bfloat16))
    return sums


def _bn_grad_coefficients(x, weight, mean, mean32, invstd, sums):
    """(p, q, r) of dL/dx = p·m·g + q·(x - mean32) + r for y = relu(batch_norm(x)) and g = dL/dy, from the gradient
    sums (sg, sgx) = (Σ m·g, Σ m·g·(x - mean32)) (m: the ReLU mask; :func:`_bn_grad_sums`); and dL/dγ, dL/dβ
    (``bn_grad_coefficients``)."""
    n, c, h, w = x.shape
    pqr, grad_weight, grad_bias = torch.empty(3, c), torch.empty(c), torch.empty(c)  # gradients: not views
    args = (sums[0], sums[1], mean, mean32, invstd, weight.detach(), c, float(n * h * w), *pqr, grad_weight, grad_bias)
    _call(load().bn_grad_coefficients, *map(_ptr_or_value, args))
    return (pqr[0], pqr[1], pqr[2]), grad_weight, grad_bias


def _bn_backward(lib, g, x, weight, mean, mean32, invstd, a, b, sums):
    """dL/dx, dL/dγ, dL/dβ of y = relu(batch_norm(x)) from g = dL/dy (masked or not) and the gradient sums
    (:func:`_bn_grad_coefficients`)."""
    n, c, h, w = x.shape
    m = n * h * w
    (p, q, r), grad_weight, grad_bias = _bn_grad_coefficients(x, weight, mean, mean32, invstd, sums)
    gx = torch.empty_like(x, memory_format=torch.channels_last)
    big = int(x.nbytes > STREAM_BYTES)
    bf16 = int(x.dtype == torch.bfloat16)
    args = (_ptr(g), _ptr(x), _ptr(gx), m, c, _ptr(mean32), _ptr(a), _ptr(b), _ptr(p), _ptr(q), _ptr(r), big, bf16)
    _call(lib.bn_relu_grad_apply, *args)
    return gx, grad_weight, grad_bias


def _bn_relu_apply(lib, x, mean32, a, b):
    n, c, h, w = x.shape
    y = torch.empty_like(x, memory_format=torch.channels_last)
    big, bf16 = int(x.nbytes > STREAM_BYTES), int(x.dtype == torch.bfloat16)  # bf16: computed in float32
    _call(lib.bn_relu_apply, _ptr(x), _ptr(y), n * h * w, c, _ptr(mean32), _ptr(a), _ptr(b), big, bf16)
    return y


class BatchNormReLU(torch.autograd.Function):
    """relu(batch_norm(x, training=True)) with the running statistics updated as ``nn.BatchNorm2d`` does."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum: float, eps: float, stats=None):
        lib = load()
        bn = (weight, bias, running_mean, running_var, momentum, eps)
        mean, mean32, invstd, a, b = _bn_forward(lib, x, *bn, stats)
        y = _bn_relu_apply(lib, x, mean32, a, b)
        ctx.save_for_backward(x, weight, mean, mean32, invstd, a, b)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):
        lib = load()
        x, weight, mean, mean32, invstd, a, b = ctx.saved_tensors
        gy = gy.to(x.dtype).contiguous(memory_format=torch.channels_last)
        sums = _bn_grad_sums(lib, gy, x, mean32, a, b)
        return *_bn_backward(lib, gy, x, weight, mean, mean32, invstd, a, b, sums), None, None, None, None, None


def _count_batch(bn: nn.BatchNorm2d) -> None:
    if bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)


def batch_norm_relu(bn: nn.BatchNorm2d, x: torch.Tensor, stats=None) -> torch.Tensor:
    """``relu(bn(x))``; ``stats``: x's batch statistics, where the kernel that wrote x summed them"""
    _count_batch(bn)
    return BatchNormReLU.apply(x, bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.momentum, bn.eps, stats)
