"""Where a kernel may stand in for PyTorch's operator: the shapes, dtypes and modules the C code handles.

Anything else — evaluation, GPUs, autocast for the convolutions, SyncBatchNorm, TF 'SAME' or Keras padding,
dilation, hooked modules, ``torch.compile`` — keeps PyTorch's operators.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules import module as _module_hooks  # the global module hooks

from .convolution import STEM_MAX_CHANNELS


def _hooked(module: nn.Module) -> bool:
    """Whether hooks would see this module's call (its own, or global ones): a kernel would bypass them (pruning
    masks, profilers, ...), so hooked modules keep PyTorch's path."""
    m = _module_hooks
    own = module._forward_hooks or module._forward_pre_hooks or module._backward_hooks or module._backward_pre_hooks
    return bool(
        own
        or m._global_forward_hooks
        or m._global_forward_pre_hooks
        or m._global_backward_hooks
        or m._global_backward_pre_hooks
    )


def _fast_input(x: torch.Tensor, dtypes: tuple[torch.dtype, ...] = (torch.float32,), channel_multiple: int = 8) -> bool:
    return (
        x.device.type == "cpu"
        and x.dtype in dtypes
        and x.dim() == 4
        and x.numel() > 0
        and x.shape[1] % channel_multiple == 0
        and x.is_contiguous(memory_format=torch.channels_last)
        and not torch.compiler.is_compiling()
    )


def _bn_module_applies(bn: nn.Module, channels: int) -> bool:
    """A training ``nn.BatchNorm2d`` of ``channels`` whose parameters and running statistics the C code may read and
    update through raw pointers: float32, on the CPU, one value per channel in contiguous memory (a mismatch is left
    to PyTorch's operators, which raise their own error)."""
    if not (
        type(bn) is nn.BatchNorm2d
        and bn.training
        and bn.affine
        and bn.track_running_stats
        and bn.momentum is not None
        and bn.num_features == channels
    ):
        return False
    tensors = (bn.weight, bn.bias, bn.running_mean, bn.running_var)
    return all(
        t.dtype == torch.float32 and t.device.type == "cpu" and t.shape == (channels,) and t.is_contiguous()
        for t in tensors
    )


def applies(bn: nn.Module, x: torch.Tensor) -> bool:
    """Whether the fused kernel can stand in for ``relu(bn(x))`` here (see the module docstring)."""
    return (
        x.dim() == 4
        and _bn_module_applies(bn, x.shape[1])
        and x.shape[0] * x.shape[2] * x.shape[3] > 1
        and _fast_input(x, (torch.float32, torch.bfloat16))  # bf16: a map from a convolution under autocast
    )


def _plain_conv(conv: nn.Module, x: torch.Tensor, channel_multiple: int = 8) -> bool:
    """A bias-free, undilated float32 ``nn.Conv2d`` (not a subclass: TF-'SAME' padding) on a kernel-ready input,
    outside autocast (which would run it in bf16)."""
    return (
        type(conv) is nn.Conv2d
        and conv.dilation == (1, 1)
        and conv.bias is None
        and conv.weight.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
        and _fast_input(x, channel_multiple=channel_multiple)
    )


def depthwise_applies(conv: nn.Module, x: torch.Tensor) -> bool:
    """Whether the depthwise kernel can stand in for ``conv(x)``: a bias-free 3×3 depthwise ``nn.Conv2d``,
    padding 1 with zeros, stride 1 or 2, no dilation."""
    return (
        _plain_conv(conv, x)
        and conv.groups == conv.in_channels == conv.out_channels
        and conv.kernel_size == (3, 3)
        and conv.padding == (1, 1)
        and conv.stride in ((1, 1), (2, 2))
        and conv.padding_mode == "zeros"
    )


def pointwise_applies(conv: nn.Module, x: torch.Tensor) -> bool:
    """Whether :class:`PointwiseConv` can stand in for ``conv(x)``: a bias-free 1×1 ``nn.Conv2d``, stride 1, of x's
    channels (else PyTorch's convolution raises its error)."""
    return (
        _plain_conv(conv, x)
        and conv.groups == 1
        and conv.weight.shape[1] == x.shape[1]
        and conv.kernel_size == (1, 1)
        and conv.stride == (1, 1)
        and conv.padding == (0, 0)
    )


def conv3x3_applies(conv: nn.Module, x: torch.Tensor) -> bool:
    """Whether :class:`Conv3x3` can stand in for ``conv(x)``: the stem's shape — a bias-free dense 3×3 ``nn.Conv2d``
    with at most :data:`STEM_MAX_CHANNELS` input channels (any number: the input map needs no multiple of 8) and a
    multiple of 8 output channels, padding 1 with zeros, stride 1 or 2."""
    return (
        _plain_conv(conv, x, channel_multiple=1)
        and conv.groups == 1
        and conv.in_channels == x.shape[1] <= STEM_MAX_CHANNELS
        and conv.out_channels % 8 == 0
        and conv.kernel_size == (3, 3)
        and conv.padding == (1, 1)
        and conv.stride in ((1, 1), (2, 2))
        and conv.padding_mode == "zeros"
    )
