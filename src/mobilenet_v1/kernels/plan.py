"""How a training forward runs on the kernels, and :func:`enable`, which lets a model use them.

:func:`enable` swaps a model's ``ConvBNAct`` blocks for :class:`KernelConvBNAct` and the ``nn.Sequential`` holding
them for :class:`KernelSequential`: subclasses with the same children, so parameters, buffers and state-dict keys
are unchanged, and evaluation runs PyTorch's operators as before. In training, :func:`sequential` hands each
block's batch norm + ReLU to the depthwise block after it, together with that block's own
(:class:`~.convolution.DepthwiseBlock`), and that one's to the 1×1 convolution after it: per depthwise layer, three
maps fewer written and read, and one pass fewer over its output and over the 1×1 convolution's.
"""

from __future__ import annotations

import torch
from torch import nn

from ..layers import ConvBNAct
from . import batchnorm, convolution
from .build import load
from .convolution import GEMM_MIN_CHANNELS, _out_size, _rows_layout
from .support import _bn_module_applies, _hooked, applies, conv3x3_applies, depthwise_applies, pointwise_applies


class KernelConvBNAct(ConvBNAct):
    """A ``ConvBNAct`` whose training forward runs each part on a kernel where one applies."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv_bn_act(self, x) if self.training else super().forward(x)


class KernelSequential(nn.Sequential):
    """An ``nn.Sequential`` whose training forward is :func:`sequential`: kernel blocks share maps."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sequential(self, x) if self.training else super().forward(x)


def _conv(block: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, tuple | None]:
    """(``block.conv(x)``, its batch statistics where the 1×1 product summed them as it wrote it, else None)"""
    if _hooked(block.conv):
        return block.conv(x), None
    if depthwise_applies(block.conv, x):
        return convolution.depthwise(block.conv, x), None
    if pointwise_applies(block.conv, x):
        stats = batchnorm._new_stats(block.conv.out_channels)
        return convolution.pointwise(block.conv, x, stats), stats
    if conv3x3_applies(block.conv, x):
        return convolution.conv3x3(block.conv, x), None
    return block.conv(x), None


def _unhooked_relu(block: nn.Module) -> bool:
    return isinstance(block.act, nn.ReLU) and not (_hooked(block.bn) or _hooked(block.act))


def _bn_relu_fusable(block: nn.Module, y: torch.Tensor) -> bool:
    return _unhooked_relu(block) and applies(block.bn, y)


def _depthwise_bn_relu_fusable(block: nn.Module, x: torch.Tensor) -> bool:
    """Whether the kernel can run this depthwise block's batch norm + ReLU on the output of its convolution of x (a
    map the depthwise kernel writes: float32, channels-last, x's channels)"""
    n, _, h, w = x.shape
    stride = block.conv.stride[0]
    return (
        _unhooked_relu(block)
        and _bn_module_applies(block.bn, x.shape[1])
        and n * _out_size(h, stride) * _out_size(w, stride) > 1
    )


def _bn_act(block: nn.Module, y: torch.Tensor, stats=None) -> torch.Tensor:
    return batchnorm.batch_norm_relu(block.bn, y, stats) if _bn_relu_fusable(block, y) else block.act(block.bn(y))


def conv_bn_act(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A ``ConvBNAct`` block's training forward, each part on a kernel where one applies."""
    return _bn_act(block, *_conv(block, x))


def _fused_block(m: nn.Module | None) -> bool:
    return type(m) is KernelConvBNAct and m.training and not _hooked(m)  # a further subclass keeps its forward


def _takes_depthwise_output(block: nn.Module | None, y: torch.Tensor) -> bool:
    """Whether ``block``'s 1×1 convolution may run inside the :class:`DepthwiseBlock` before it, reading its batch
    norm + ReLU on the fly: on the matrix products (from :data:`GEMM_MIN_CHANNELS` input channels, as
    :class:`PointwiseConv`'s gradients), of a map like y (the depthwise convolution's input: same channels, dtype,
    memory format)"""
    return (
        _fused_block(block)
        and not _hooked(block.conv)
        and pointwise_applies(block.conv, y)
        and block.conv.in_channels >= GEMM_MIN_CHANNELS
        and _rows_layout(block.conv.weight)
    )


def sequential(blocks: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """``blocks(x)``, except that in training a kernel-enabled ``ConvBNAct`` followed by a depthwise one hands its
    batch norm + ReLU to that block's depthwise kernel, which reads it in place of the map it would have stored; and
    that block's own batch norm + ReLU to the 1×1 convolution after it, whose matrix products read it likewise."""
    mods = list(blocks)
    if _hooked(blocks) or not any(map(_fused_block, mods)):
        return nn.Sequential.forward(blocks, x)
    i, y, stats = 0, None, None  # y: block i's convolution output, where the previous step computed it
    while i < len(mods):
        block, nxt = mods[i], mods[i + 1] if i + 1 < len(mods) else None
        if not _fused_block(block):
            x, i = block(x), i + 1
            continue
        if y is None:
            y, stats = _conv(block, x)
        if (
            _fused_block(nxt)
            and _bn_relu_fusable(block, y)
            and depthwise_applies(nxt.conv, y)
            and not _hooked(nxt.conv)
        ):
            if _depthwise_bn_relu_fusable(nxt, y):
                after = mods[i + 2] if i + 2 < len(mods) else None
                if _takes_depthwise_output(after, y):
                    pw_stats = batchnorm._new_stats(after.conv.out_channels)
                    y = convolution.depthwise_block(block.bn, nxt.conv, nxt.bn, y, stats, (after.conv, pw_stats))
                    stats, i = pw_stats, i + 2  # block i + 2's convolution output
                    continue
                x = convolution.depthwise_block(block.bn, nxt.conv, nxt.bn, y, stats)
            else:
                x = _bn_act(nxt, convolution.batch_norm_relu_depthwise(block.bn, nxt.conv, y, stats))
            y, i = None, i + 2
            continue
        x, y, i = _bn_act(block, y, stats), None, i + 1
    return x


def _swap(module: nn.Module, cls: type) -> nn.Module:
    """``module`` as an instance of ``cls``: a new module object holding the same children, parameters and buffers."""
    new = cls.__new__(cls)
    new.__dict__.update(module.__dict__)  # nn.Module keeps its children, parameters, buffers and hooks here
    return new


def enable(model: nn.Module, on: bool = True) -> int:
    """Let ``model``'s conv-BN-ReLU blocks use the kernels in training (``on=False``: undo it), by swapping
    modules in place as ``nn.SyncBatchNorm.convert_sync_batchnorm`` does; state-dict keys, parameters and
    evaluation are unchanged. Returns how many blocks will use the kernels (0 where they cannot be built)."""
    on = on and load() is not None
    blocks = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) in (ConvBNAct, KernelConvBNAct):
                setattr(parent, name, _swap(child, KernelConvBNAct if on else ConvBNAct))
                blocks += 1
            elif type(child) in (nn.Sequential, KernelSequential) and any(
                isinstance(m, ConvBNAct) for m in child.children()
            ):
                setattr(parent, name, _swap(child, KernelSequential if on else nn.Sequential))
    return blocks if on else 0
