"""Building blocks: convolution + batch norm + activation, padded as PyTorch, TensorFlow or Keras pad."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import spec

ACTIVATIONS = {"relu": nn.ReLU, "relu6": nn.ReLU6}  # config.ACTIVATIONS, as modules


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` padded by TensorFlow's 'SAME' rule (``rule="tf_same"``) or Keras's (``rule="keras"``).

    TF puts the odd row/column of padding at the bottom/right: at stride 2 on an even input that is
    (0, 1), not (1, 1). Symmetric padding gives the same output shape but shifts every activation by
    a pixel, which breaks parity with TF/Keras weights. Keras's MobileNet pads its stride-2 depthwise
    convolutions by (0, 1) whatever the map's size (:func:`mobilenet_v1.spec.pads`). At stride 1 both
    rules are symmetric, so those layers use plain static padding and only stride-2 layers pay for the pad.
    """

    def __init__(self, *args, rule: str = "tf_same", **kwargs):
        super().__init__(*args, **kwargs)
        self.rule = rule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, same_pads(self, x)))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rule={self.rule}"


def same_pads(conv: nn.Module, x: torch.Tensor) -> list[int]:
    """Padding of ``x`` for ``conv`` (a :class:`Conv2dSame`, or a module copying its attributes), in
    ``F.pad`` order: (left, right, top, bottom)."""
    pads = []
    for size, k, s, d in zip(x.shape[-1:-3:-1], conv.kernel_size[::-1], conv.stride[::-1], conv.dilation[::-1]):
        pads += spec.pads(size, k, s, d, conv.rule, conv.groups > 1)
    return pads


def make_conv(in_ch: int, out_ch: int, kernel: int, stride: int, dilation: int, groups: int, padding: str) -> nn.Conv2d:
    if padding != "symmetric" and stride > 1:
        return Conv2dSame(in_ch, out_ch, kernel, stride, padding=0, dilation=dilation, groups=groups, bias=False,
                          rule=padding)  # fmt: skip
    pad = dilation * (kernel - 1) // 2
    return nn.Conv2d(in_ch, out_ch, kernel, stride, padding=pad, dilation=dilation, groups=groups, bias=False)


class ConvBNAct(nn.Sequential):
    """conv → BN → ReLU: every convolution in Table 1 is followed by batch norm and ReLU (Section 3.2)."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        padding: str = "symmetric",
        activation: str = "relu",
        bn_eps: float = 1e-5,
    ):
        super().__init__()
        self.conv = make_conv(in_ch, out_ch, kernel, stride, dilation, groups, padding)
        self.bn = nn.BatchNorm2d(out_ch, eps=bn_eps)
        self.act = ACTIVATIONS[activation](inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))
