"""Fold batch norm into the preceding convolution: ``BN(conv(x)) = conv'(x)`` with new weight and bias.

At inference BN is a per-channel affine map ``γ·(y − μ)/√(σ² + ε) + β``, so it can be absorbed into the
convolution's weight (scaled per output channel) and a bias. That removes one pass over every activation
map — 27 of them in MobileNet-V1 — and is what every deployment runtime does before anything else.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..layers import ConvBNAct


@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A copy of ``conv`` (same class, so TF 'SAME' padding survives) computing ``bn(conv(x))`` in eval mode."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm without running statistics (track_running_stats=False)")
    fused = copy.deepcopy(conv)
    # float64 for the arithmetic: with ε = 1e-3 and small variances the scale can reach 1e3, and the
    # rounding of a float32 product would then show up at the 1e-5 tolerance we promise.
    w = conv.weight.double()
    scale = bn.running_var.double().add(bn.eps).rsqrt()
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    shift = bn.bias.double() if bn.bias is not None else torch.zeros_like(scale)
    fused.weight = nn.Parameter((w * scale.view(-1, 1, 1, 1)).to(conv.weight.dtype), requires_grad=False)
    fused.bias = nn.Parameter(
        ((bias - bn.running_mean.double()) * scale + shift).to(conv.weight.dtype), requires_grad=False
    )
    return fused


@torch.no_grad()
def fold_bn(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode with every ``ConvBNAct``'s BN folded into its conv.

    Module names are kept (``features.Conv2d_3_pointwise.conv``; ``.bn`` becomes ``nn.Identity``), so
    hooks and profiles of the folded model line up with the spec's layer names.
    """
    folded = copy.deepcopy(model).eval()
    for module in folded.modules():
        if isinstance(module, ConvBNAct) and isinstance(module.bn, nn.BatchNorm2d):
            module.conv = fold_conv_bn(module.conv, module.bn)
            module.bn = nn.Identity()
    for p in folded.parameters():
        p.requires_grad_(False)
    return folded
