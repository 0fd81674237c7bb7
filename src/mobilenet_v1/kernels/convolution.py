"""The convolutions on the kernels: the stem's 3×3, the 3×3 depthwise ones, the 1×1 ones, and a depthwise block.

- ``csrc/conv3x3.c``: the stem's weight gradient (3 or 1 input channels), :class:`Conv3x3`;
- ``csrc/depthwise.c``: the 3×3 depthwise convolution (padding 1, stride 1 or 2) and both its gradients in one pass,
  float32. It can read the previous block's batch norm + ReLU in place of that block's output map, computing it
  row by row as it reads (and that batch norm's gradient sums as it writes dL/da), so the map is never stored;
- ``csrc/gemm.c``: the 1×1 convolutions as matrix products on the channels-last views (:class:`PointwiseConv`),
  faster than oneDNN's convolutions, and for the weight gradient than MKL's ``torch.mm``, from
  :data:`GEMM_MIN_CHANNELS` input channels up. The forward product sums its output's batch statistics as it
  writes it; its products can read a batch norm + ReLU in place of their input;
- ``csrc/block.c``: a whole depthwise block, forward or backward, in one call (:class:`DepthwiseBlock`).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from .batchnorm import (
    STREAM_BYTES,
    _bn_backward,
    _bn_forward,
    _bn_grad_sums,
    _count_batch,
    _map_stats,
    fill_stats,
)
from .build import _call, _ptr, _ptr_or_value, load

_NO_BN = (None, None, None)  # no batch norm + ReLU read in place of a product's input
SUMS_IN_PLACE_BYTES = 8 << 20  # maps above this get batch-norm gradient sums inside the depthwise kernel (below, a
# separate pass over a map the caches hold is faster): 8 MiB measured 3.4% faster than 32 MiB at 128 px and 1.3% at
# 224 on a CPU with a 16 MB L3
GEMM_MIN_CHANNELS = 32  # 1×1 convolutions with this many input channels or more: both gradients by gemm.c (with
# the products' prefetching, 32 measured ~1% faster than 64 at 128 px and level at 224; below, oneDNN's are faster)
STEM_MAX_CHANNELS = 4  # dense 3×3 convolutions with at most this many input channels: weight gradient by conv3x3.c


def _out_size(size: int, stride: int) -> int:
    return (size - 1) // stride + 1  # 3×3, padding 1


class Conv3x3(torch.autograd.Function):
    """``F.conv2d(x, weight, stride=stride, padding=1)`` for the stem's few input channels: oneDNN's forward (and input
    gradient, when one is wanted), the weight gradient by ``conv3x3_grad_weight`` (oneDNN's backward-weights runs
    this reduction at ~16 GFLOP/s)."""

    @staticmethod
    def forward(ctx, x, weight, stride: int):
        ctx.save_for_backward(x, weight)
        ctx.stride = stride
        return torch.nn.functional.conv2d(x, weight, stride=stride, padding=1)

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):
        x, weight = ctx.saved_tensors
        gy = gy.contiguous(memory_format=torch.channels_last)
        s = ctx.stride
        gx = gw = None
        if ctx.needs_input_grad[0]:
            args = (None, [s, s], [1, 1], [1, 1], False, [0, 0], 1, [True, False, False])
            gx = torch.ops.aten.convolution_backward(gy, x, weight, *args)[0]
        if ctx.needs_input_grad[1]:
            n, ci, h, w = x.shape
            co, oh, ow = gy.shape[1:]
            sums = torch.empty(3, 3, ci, co, dtype=torch.float64)
            _call(load().conv3x3_grad_weight, _ptr(gy), _ptr(x), _ptr(sums), n, h, w, ci, co, oh, ow, s)
            gw = torch.empty_like(weight)  # the weight's own strides, as DDP's gradient buckets expect
            gw.copy_(sums.permute(3, 2, 0, 1))
        return gx, gw, None


def conv3x3(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    return Conv3x3.apply(x, conv.weight, conv.stride[0])


def _depthwise_forward(lib, x, weight, stride: int, bn=_NO_BN):
    """3×3 depthwise convolution of x (or, bn = (mean32, a, b), of max((x - mean32)·a + b, 0)); returns (y, taps)
    (the kernel's batch statistics of y: ``csrc/block.c``)"""
    n, c, h, w = x.shape
    oh, ow = _out_size(h, stride), _out_size(w, stride)
    taps = weight.detach().reshape(c, 9).t().contiguous()  # [9, C]: a tap's channels are contiguous
    y = torch.empty(n, c, oh, ow, dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    args = (_ptr(x), *map(_ptr, bn), _ptr(taps), _ptr(y), n, h, w, c, oh, ow, stride, None, None)
    _call(lib.dw3x3_forward, *args)
    return y, taps


def _depthwise_backward(lib, gy, x, taps, stride: int, grads=(True, True), bn=_NO_BN, sums=None):
    """(dL/dx, dL/dw) of :func:`_depthwise_forward` in one pass over gy (grads: which of the two; None for the
    other). With bn, the input is the batch norm + ReLU a of x: dL/da in place of dL/dx, and that batch norm's
    gradient sums into sums [2, C] unless sums is None. (gy read as dL/dz through the next batch norm + ReLU:
    ``csrc/block.c``.)"""
    n, c, h, w = x.shape
    gx = torch.empty_like(x, memory_format=torch.channels_last) if grads[0] else None
    gw = torch.empty(9, c, dtype=torch.float64) if grads[1] else None
    shape = (n, h, w, c, *gy.shape[2:], stride)
    args = (_ptr(gy), _ptr(x), _ptr(taps), _ptr(gx), _ptr(gw), *shape, *map(_ptr, bn), _ptr(sums), *(None,) * 7)
    _call(lib.dw3x3_backward, *args)
    return gx, None if gw is None else gw.t().contiguous().reshape(c, 1, 3, 3).to(taps.dtype)  # the weight's strides


class DepthwiseConv3x3(torch.autograd.Function):
    """``F.conv2d(x, weight, stride=stride, padding=1, groups=C)`` for 3×3 depthwise weights [C, 1, 3, 3]."""

    @staticmethod
    def forward(ctx, x, weight, stride: int):
        y, taps = _depthwise_forward(load(), x, weight, stride)
        ctx.save_for_backward(x, taps)
        ctx.stride = stride
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):
        lib = load()
        x, taps = ctx.saved_tensors
        gy = gy.contiguous(memory_format=torch.channels_last)
        gx, gw = _depthwise_backward(lib, gy, x, taps, ctx.stride, ctx.needs_input_grad[:2])
        return gx, gw, None


def depthwise(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    return DepthwiseConv3x3.apply(x, conv.weight, conv.stride[0])


class PointwiseConv(torch.autograd.Function):
    """``F.conv2d(x, weight)`` for 1×1 weights [C_out, C_in, 1, 1], as matrix products on the channels-last [N·H·W, C]
    views (``csrc/gemm.c``): the forward y = x·Wᵀ and, from :data:`GEMM_MIN_CHANNELS` input channels up, the input
    gradient dL/dx = dL/dy·W by ``gemm_a_w``, and the weight gradient dL/dW = dL/dyᵀ·x by ``gemm_at_b``. Below that,
    oneDNN's gradients (measured faster there). A weight not stored as
    [C_out][C_in] rows takes oneDNN's forward too."""

    @staticmethod
    def forward(ctx, x, weight, stats=None):
        """``stats``: None, or (shift, sums) that the product fills with y's batch statistics as it writes y
        (:func:`_map_stats`), for the batch norm after it"""
        ctx.save_for_backward(x, weight)
        lib = load()
        if lib is None or not _rows_layout(weight):
            return fill_stats(torch.nn.functional.conv2d(x, weight), stats)
        return _pointwise_forward(lib, x, weight, stats)

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):
        x, weight = ctx.saved_tensors
        gy = gy.contiguous(memory_format=torch.channels_last)
        lib = load()
        by_gemm = lib is not None and x.shape[1] >= GEMM_MIN_CHANNELS and _rows_layout(weight)
        mask = [ctx.needs_input_grad[0] and not by_gemm, ctx.needs_input_grad[1] and not by_gemm, False]
        gx = gw = None
        if any(mask):
            args = (None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1, mask)  # bias sizes, stride, padding, ...
            gx, gw, _ = torch.ops.aten.convolution_backward(gy, x, weight, *args)
            if gw is not None and gw.stride() != weight.stride():  # oneDNN's are channels-last's
                gw = torch.empty_like(weight).copy_(gw)  # the weight's own, as DDP's gradient buckets expect
        if by_gemm:
            gx, gw = _pointwise_backward(lib, gy, x, weight, ctx.needs_input_grad[:2])
        return gx, gw, None


def pointwise(conv: nn.Conv2d, x: torch.Tensor, stats=None) -> torch.Tensor:
    return PointwiseConv.apply(x, conv.weight, stats)


def _pointwise_forward(lib, x, weight, stats=None):
    """y = x·Wᵀ on the channels-last views by ``gemm_a_w``, with y's batch statistics into ``stats`` where given"""
    n, c_in, h, w = x.shape
    c_out = weight.shape[0]
    y = torch.empty(n, c_out, h, w, memory_format=torch.channels_last)
    shift, sums = stats or (None, None)
    args = (_ptr(x), c_in, _ptr(weight), c_in, 1, _ptr(y), n * h * w, c_in, c_out, _ptr(shift), _ptr(sums))
    _call(lib.gemm_a_w, *args, *_NO_BN)
    return y


def _pointwise_backward(lib, gy, x, weight, needs=(True, True)):
    """(dL/dx, dL/dW) of :func:`_pointwise_forward` (each None unless ``needs`` it): ``gemm_a_w`` and ``gemm_at_b``"""
    n, c_in, h, w = x.shape
    c_out = weight.shape[0]
    gx = gw = None
    if needs[0]:
        gx = torch.empty_like(x, memory_format=torch.channels_last)
        args = (_ptr(gy), c_out, _ptr(weight), c_in, 0, _ptr(gx), n * h * w, c_out, c_in, None, None, *_NO_BN)
        _call(lib.gemm_a_w, *args)
    if needs[1]:
        gw = torch.empty_like(weight)  # the weight's own strides, as DDP's gradient buckets expect
        _call(lib.gemm_at_b, _ptr(gy), c_out, _ptr(x), c_in, _ptr(gw), n * h * w, c_out, c_in, *_NO_BN)
    return gx, gw


def _rows_layout(weight: torch.Tensor) -> bool:
    """Whether a 1×1 weight [C_out, C_in, 1, 1] is [C_out][C_in] rows in memory (contiguous or channels-last)."""
    return weight.stride()[:2] == (weight.shape[1], 1)


def _depthwise_backward_through_bn(lib, gy, x, taps, stride: int, need_gw: bool, mean32, a, b):
    """(dL/da, dL/dw, the batch norm's gradient sums) for a depthwise convolution of a = relu(batch_norm(x))"""
    bn = (mean32, a, b)
    if x.nbytes > SUMS_IN_PLACE_BYTES:  # the batch norm's gradient sums from each row of dL/da as it is written
        sums = torch.empty(2, x.shape[1], dtype=torch.float64)
        ga, gw = _depthwise_backward(lib, gy, x, taps, stride, (True, need_gw), bn, sums)
    else:  # a map the caches hold: a separate pass is faster
        ga, gw = _depthwise_backward(lib, gy, x, taps, stride, (True, need_gw), bn, None)
        sums = _bn_grad_sums(lib, ga, x, mean32, a, b)
    return ga, gw, sums


class BatchNormReLUDepthwise(torch.autograd.Function):
    """``depthwise(relu(batch_norm(x)))``: one block's batch norm + ReLU read by the next block's depthwise
    convolution as it reads its input, so that the map between them is never stored (forward or backward)."""

    @staticmethod
    def forward(
        ctx,
        x,
        bn_weight,
        bn_bias,
        running_mean,
        running_var,
        momentum: float,
        eps: float,
        weight,
        stride: int,
        stats=None,
    ):
        lib = load()
        bn = (bn_weight, bn_bias, running_mean, running_var, momentum, eps)
        mean, mean32, invstd, a, b = _bn_forward(lib, x, *bn, stats)
        y, taps = _depthwise_forward(lib, x, weight, stride, (mean32, a, b))
        ctx.save_for_backward(x, bn_weight, mean, mean32, invstd, a, b, taps)
        ctx.stride = stride
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):
        lib = load()
        x, bn_weight, mean, mean32, invstd, a, b, taps = ctx.saved_tensors
        gy = gy.contiguous(memory_format=torch.channels_last)
        need_gw = ctx.needs_input_grad[7]
        ga, gw, sums = _depthwise_backward_through_bn(lib, gy, x, taps, ctx.stride, need_gw, mean32, a, b)
        gx, g_bn_weight, g_bn_bias = _bn_backward(lib, ga, x, bn_weight, mean, mean32, invstd, a, b, sums)
        return gx, g_bn_weight, g_bn_bias, None, None, None, None, gw, None, None


def batch_norm_relu_depthwise(bn: nn.BatchNorm2d, conv: nn.Conv2d, x: torch.Tensor, stats=None) -> torch.Tensor:
    """``conv(relu(bn(x)))`` without storing ``relu(bn(x))``"""
    _count_batch(bn)
    args = (x, bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.momentum, bn.eps, conv.weight, conv.stride[0])
    return BatchNormReLUDepthwise.apply(*args, stats)


class DepthwiseBlock(torch.autograd.Function):
    """``relu(bn2(depthwise(relu(bn1(x)))))``: :class:`BatchNormReLUDepthwise` followed by the depthwise block's own
    batch norm + ReLU, whose batch statistics the depthwise kernel sums from each output row as it writes it, and
    whose backward the depthwise gradient kernels compute row by row as they read dL/dy (never stored).

    With ``pw_weight``, the 1×1 convolution after it too: ``conv1x1(relu(bn2(...)))``, whose matrix products read
    ``relu(bn2(y))`` from the depthwise output y as they go (forward and weight gradient), so that map is never
    stored; its batch statistics into ``pw_stats`` (:func:`_map_stats`).

    Each direction is one call into ``csrc/block.c``, which runs the kernels in turn and the per-channel steps
    between them: a dozen calls from Python per block cost ~3% of the training step at 128 px, the interpreter's
    data being evicted by the kernels between calls."""

    @staticmethod
    def forward(ctx, x, bn1_weight, bn1_bias, rm1, rv1, momentum1: float, eps1: float, weight, stride: int,
                bn2_weight, bn2_bias, rm2, rv2, momentum2: float, eps2: float, x_stats=None, pw_weight=None,
                pw_stats=None):  # fmt: skip
        lib = load()
        n, c, h, w = x.shape
        x_shift, x_sums = _map_stats(lib, x, x_stats)
        oh, ow = _out_size(h, stride), _out_size(w, stride)
        y = torch.empty(n, c, oh, ow, memory_format=torch.channels_last)
        s64, s32 = torch.empty(6, c, dtype=torch.float64), torch.empty(14, c)  # per-channel state (csrc/block.c)
        c_out = c if pw_weight is None else pw_weight.shape[0]
        out = torch.empty(n, c_out, oh, ow, memory_format=torch.channels_last)
        out_shift, out_sums = pw_stats or (None, None)
        dw = weight.detach().contiguous()  # [C][9]
        bn1 = (bn1_weight, bn1_bias, rm1, rv1, momentum1, eps1)
        bn2 = (bn2_weight, bn2_bias, rm2, rv2, momentum2, eps2)
        # the kernel moves the running statistics in place, as F.batch_norm moves them
        args = (x, x_shift, x_sums, dw, n, h, w, c, stride, *bn1, *bn2, s64, s32, y, pw_weight, c_out, out)
        stream = int(pw_weight is None and out.nbytes > STREAM_BYTES)
        _call(lib.dw_block_forward, *map(_ptr_or_value, args), _ptr(out_shift), _ptr(out_sums), stream)
        ctx.save_for_backward(x, y, s64, s32, bn1_weight, bn1_bias, bn2_weight, bn2_bias, pw_weight)
        ctx.stride = stride
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, g_out):
        lib = load()
        x, y, s64, s32, bn1_weight, bn1_bias, bn2_weight, bn2_bias, pw = ctx.saved_tensors
        n, c, h, w = x.shape
        g_out = g_out.contiguous(memory_format=torch.channels_last)
        gx = torch.empty_like(x, memory_format=torch.channels_last)
        g_dw = torch.empty(c, 1, 3, 3) if ctx.needs_input_grad[7] else None
        g_pw = torch.empty_like(pw) if pw is not None and ctx.needs_input_grad[16] else None  # the weight's strides
        g_bn = [torch.empty(c) for _ in range(4)]  # bn1 weight, bias, bn2 weight, bias: gradients, not views
        c_out = g_out.shape[1]
        args = (g_out, x, y, n, h, w, c, ctx.stride, bn1_weight, bn1_bias, bn2_weight, bn2_bias, s64, s32, pw, c_out)
        flags = int(x.nbytes > SUMS_IN_PLACE_BYTES), int(x.nbytes > STREAM_BYTES)
        _call(lib.dw_block_backward, *map(_ptr_or_value, args), *map(_ptr, (gx, g_dw, g_pw, *g_bn)), *flags)
        none4 = (None,) * 4
        return gx, g_bn[0], g_bn[1], *none4, g_dw, None, g_bn[2], g_bn[3], *none4, None, g_pw, None


def depthwise_block(
    bn1: nn.BatchNorm2d, conv: nn.Conv2d, bn2: nn.BatchNorm2d, x: torch.Tensor, stats=None, pointwise=None
) -> torch.Tensor:
    """``relu(bn2(conv(relu(bn1(x)))))`` without storing ``relu(bn1(x))`` or ``dL/dconv(...)``; with ``pointwise`` =
    (a 1×1 ``nn.Conv2d``, (shift, sums) for its output's batch statistics), that convolution of it, without storing
    ``relu(bn2(...))``"""
    _count_batch(bn1)
    _count_batch(bn2)
    args = (x, bn1.weight, bn1.bias, bn1.running_mean, bn1.running_var, bn1.momentum, bn1.eps, conv.weight)
    args2 = (bn2.weight, bn2.bias, bn2.running_mean, bn2.running_var, bn2.momentum, bn2.eps)
    pw_weight, pw_stats = (pointwise[0].weight, pointwise[1]) if pointwise else (None, None)
    return DepthwiseBlock.apply(*args, conv.stride[0], *args2, stats, pw_weight, pw_stats)
