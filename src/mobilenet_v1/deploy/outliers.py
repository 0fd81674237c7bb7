"""A function-preserving edit that reproduces why MobileNet-V1 collapses under per-tensor int8 weights.

In Google's MobileNet-V1 some channels die after ReLU(6) (always 0). The BN after the *next* depthwise
conv then sees near-zero variance on that channel, and folding multiplies its 3×3 filter by
γ/√(σ²+ε) — hundreds of times its neighbours'. The float network doesn't care (the filter only ever sees
zeros), but one int8 scale per tensor is sized for that outlier and every other filter rounds to zero
(Krishnamoorthi 2018, Section 3.1). Per-channel scales isolate it.

:func:`with_dead_channel_outlier` builds exactly that on any model: kill one channel, blow up the
depthwise filter that reads it. fp32 outputs are unchanged by the blow-up (bit for bit).
"""

from __future__ import annotations

import torch

from .fold import fold_bn


@torch.no_grad()
def with_dead_channel_outlier(model, block: int = 3, channel: int = 0, scale: float = 1000.0):
    """A BN-folded copy of ``model`` with channel ``channel`` entering ``Conv2d_{block}_depthwise`` dead
    (the previous layer's filter zeroed, bias −1, so ReLU outputs 0) and that depthwise filter × ``scale``.
    """
    folded = fold_bn(model)
    features = dict(folded.features.named_children())
    depthwise = features.get(f"Conv2d_{block}_depthwise")
    names = list(features)
    if depthwise is None or names.index(f"Conv2d_{block}_depthwise") == 0:
        raise ValueError(f"block {block} has no depthwise layer with a layer before it")
    upstream = features[names[names.index(f"Conv2d_{block}_depthwise") - 1]].conv
    upstream.weight[channel] = 0.0
    upstream.bias[channel] = -1.0  # ReLU/ReLU6(−1) = 0: the channel is dead for every input
    biggest = depthwise.conv.weight.abs().max()
    depthwise.conv.weight[channel] = depthwise.conv.weight[channel].sign() * biggest * scale
    return folded
