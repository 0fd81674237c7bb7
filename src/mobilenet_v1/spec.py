"""Table 1 of Howard et al. 2017, declared once, and its resolution into concrete layers.

Everything else derives from :func:`resolve`: the ``nn.Module`` (``model.py``), the Mult-Adds and
parameter counter (``cost.py``), the TF-slim layer names that weight converters use, and the
``summary`` printout. Change the architecture here and all of them follow.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

VARIANTS = ("standard", "full_conv", "shallow")
OUTPUT_STRIDES = (8, 16, 32)
# How a convolution pads its input; every consumer (module, cost model, summary, exporters) reads :func:`pads`.
#   symmetric  dilation·(k−1)/2 on each side: PyTorch's and timm's default.
#   tf_same    TensorFlow's 'SAME' (TF-slim, Google's graphs, timm's pad_type='same'): output ceil(size/stride),
#              the odd row/column of padding at the bottom/right.
#   keras      keras.applications.MobileNet: 'SAME', except that a stride-2 depthwise convolution reads
#              ZeroPadding2D(((0, 1), (0, 1))) + 'valid'. That equals 'SAME' only on an even map; on an odd
#              one (a 150 px input reaches 75×75) 'SAME' pads (1, 1) and gives ceil(75/2) = 38, Keras (0, 1) and 37.
PADDINGS = ("symmetric", "tf_same", "keras")
MIN_RESOLUTION = 32
# Upper bounds on what a config may ask for: far past any published use, yet small enough that a typo (α = 1e6, a
# 10⁷-pixel input) fails here, before a module or an export allocates gigabytes.
MAX_WIDTH = 8.0
MAX_RESOLUTION = 4096
MAX_CLASSES = 100_000
MAX_CHANNELS = 64  # input channels
DEFAULT_MIN_DEPTH = 8  # TF-slim's floor on channel counts after α scaling


@dataclass(frozen=True)
class Conv:
    """A full convolution + BN + ReLU row of Table 1 (``Conv / s2, 3×3×3×32``)."""

    kernel: int
    stride: int
    out: int  # output channels at α = 1


@dataclass(frozen=True)
class DepthSepConv:
    """A depthwise-separable block: ``Conv dw / s`` (3×3 depthwise) then ``Conv / s1`` (1×1 pointwise)."""

    kernel: int
    stride: int
    out: int  # pointwise output channels at α = 1


# Table 1, row by row. Index i of this tuple is TF-slim's ``Conv2d_{i}``.
TABLE_1: tuple[Conv | DepthSepConv, ...] = (
    Conv(kernel=3, stride=2, out=32),  # 224×224×3 -> 112×112×32
    DepthSepConv(kernel=3, stride=1, out=64),  # 112×112
    DepthSepConv(kernel=3, stride=2, out=128),  # -> 56×56
    DepthSepConv(kernel=3, stride=1, out=128),
    DepthSepConv(kernel=3, stride=2, out=256),  # -> 28×28
    DepthSepConv(kernel=3, stride=1, out=256),
    DepthSepConv(kernel=3, stride=2, out=512),  # -> 14×14
    DepthSepConv(kernel=3, stride=1, out=512),  # 5× 14×14×512 (removed in Table 5's shallow net)
    DepthSepConv(kernel=3, stride=1, out=512),
    DepthSepConv(kernel=3, stride=1, out=512),
    DepthSepConv(kernel=3, stride=1, out=512),
    DepthSepConv(kernel=3, stride=1, out=512),
    DepthSepConv(kernel=3, stride=2, out=1024),  # -> 7×7
    # Table 1 prints "Conv dw / s2" here, yet its input and output are both 7×7 and the next row is a
    # 7×7 average pool: the stride is 1 (TF-slim and Keras agree). See docs/paper-notes.md.
    DepthSepConv(kernel=3, stride=1, out=1024),
)

# Table 5's "shallow" MobileNet: "remove the 5 layers of separable filters with feature size 14×14×512".
SHALLOW_REMOVED = (7, 8, 9, 10, 11)

# Kinds of layer, used for Table 2's "resource per layer type".
OP_CONV = "conv"  # full convolution (the stem, and every block of the full_conv variant)
OP_DEPTHWISE = "depthwise"
OP_POINTWISE = "pointwise"
OP_POOL = "avgpool"
OP_FC = "fc"


@dataclass(frozen=True)
class Layer:
    """One concrete layer at a given α, resolution, variant and output stride."""

    name: str  # TF-slim end-point name, e.g. "Conv2d_13_pointwise"; doubles as the module name
    op: str  # one of OP_*
    kernel: int
    stride: int
    dilation: int
    in_channels: int
    out_channels: int
    groups: int
    input_hw: tuple[int, int]
    output_hw: tuple[int, int]
    block: int  # Table 1 row index (-1 for pool and FC)
    feature_stride: int  # nominal stride of the output relative to the input (before dilation)
    reduction: int = 0  # the actual stride of the output (at most output_stride: dilation replaces the rest)

    @property
    def params(self) -> int:
        """Weights only, no bias or BN: the paper's convention (it reproduces Table 2 exactly)."""
        if self.op == OP_POOL:
            return 0
        return self.kernel * self.kernel * (self.in_channels // self.groups) * self.out_channels

    @property
    def mult_adds(self) -> int:
        """Multiply-accumulates of this layer for one image (the paper's "Mult-Adds")."""
        return self.params * self.output_hw[0] * self.output_hw[1]

    @property
    def trainable_params(self) -> int:
        """Parameters of the built module: weights + BN γ/β for convs, weights + bias for the FC."""
        if self.op == OP_POOL:
            return 0
        extra = self.out_channels if self.op == OP_FC else 2 * self.out_channels
        return self.params + extra

    def to_dict(self) -> dict:
        d = asdict(self)
        d["input_hw"], d["output_hw"] = list(self.input_hw), list(self.output_hw)
        d.update(params=self.params, mult_adds=self.mult_adds)
        return d


def pads(size: int, kernel: int, stride: int, dilation: int, padding: str, depthwise: bool) -> tuple[int, int]:
    """Zeros (before, after) along one spatial axis of a convolution's input, by the model's padding rule."""
    span = dilation * (kernel - 1) + 1
    if padding == "symmetric":
        return (span - 1) // 2, (span - 1) // 2
    if padding == "keras" and depthwise and stride == 2:
        return 0, 1
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {', '.join(PADDINGS)}; got {padding!r}")
    total = max((math.ceil(size / stride) - 1) * stride + span - size, 0)
    return total // 2, total - total // 2


def output_size(size: int, kernel: int, stride: int, dilation: int, padding: str, depthwise: bool) -> int:
    """Output length along one axis: ``⌊(size + padding − span) / stride⌋ + 1``."""
    before, after = pads(size, kernel, stride, dilation, padding, depthwise)
    out = (size + before + after - dilation * (kernel - 1) - 1) // stride + 1
    if out < 1:
        raise ValueError(f"a {size}-pixel map is too small for a {kernel}×{kernel} convolution at stride {stride}")
    return out


def _number(x) -> bool:
    """A real, finite number (not a bool, which Python counts as an int)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _integer(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def scaled_channels(n: int, width_multiplier: float, min_depth: int = DEFAULT_MIN_DEPTH) -> int:
    """Channels of a layer with N channels at α = 1: ``max(int(α·N), min_depth)`` (Section 4.2, TF-slim)."""
    return max(int(n * width_multiplier), min_depth)


def validate(
    width_multiplier: float = 1.0,
    resolution: int = 224,
    variant: str = "standard",
    output_stride: int = 32,
    num_classes: int = 1000,
    in_chans: int = 3,
    min_depth: int = DEFAULT_MIN_DEPTH,
    padding: str = "symmetric",
) -> None:
    """Raise ``ValueError`` naming what was received and what is allowed."""
    checks = [
        (
            _number(width_multiplier) and 0 < width_multiplier <= MAX_WIDTH,
            f"width_multiplier (alpha) must be a number in (0, {MAX_WIDTH:g}], got {width_multiplier!r}",
        ),
        (
            _integer(resolution) and MIN_RESOLUTION <= resolution <= MAX_RESOLUTION,
            f"resolution must be an integer in [{MIN_RESOLUTION}, {MAX_RESOLUTION}], got {resolution!r}",
        ),
        (
            isinstance(variant, str) and variant in VARIANTS,
            f"variant must be one of {', '.join(VARIANTS)}; got {variant!r}",
        ),
        (
            _integer(output_stride) and output_stride in OUTPUT_STRIDES,
            f"output_stride must be one of {', '.join(map(str, OUTPUT_STRIDES))}; got {output_stride!r}",
        ),
        (
            _integer(num_classes) and 0 <= num_classes <= MAX_CLASSES,
            f"num_classes must be an integer in [0, {MAX_CLASSES}], got {num_classes!r}",
        ),
        (
            _integer(in_chans) and 1 <= in_chans <= MAX_CHANNELS,
            f"in_chans must be an integer in [1, {MAX_CHANNELS}], got {in_chans!r}",
        ),
        (
            _integer(min_depth) and 1 <= min_depth <= 1024,
            f"min_depth must be an integer in [1, 1024], got {min_depth!r}",
        ),
        (
            isinstance(padding, str) and padding in PADDINGS,
            f"padding must be one of {', '.join(PADDINGS)}; got {padding!r}",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)


def _rows(variant: str):
    """(Table 1 index, row) pairs of a variant."""
    for i, row in enumerate(TABLE_1):
        if variant == "shallow" and i in SHALLOW_REMOVED:
            continue
        if variant == "full_conv" and isinstance(row, DepthSepConv):
            # Table 4: each separable block replaced by one full 3×3 convolution of the same stride.
            row = Conv(kernel=row.kernel, stride=row.stride, out=row.out)
        yield i, row


def resolve(
    width_multiplier: float = 1.0,
    resolution: int = 224,
    variant: str = "standard",
    output_stride: int = 32,
    num_classes: int = 1000,
    in_chans: int = 3,
    min_depth: int = DEFAULT_MIN_DEPTH,
    padding: str = "symmetric",
) -> list[Layer]:
    """Concrete layers, in order: convolutions, global average pool, and (if ``num_classes``) the FC.

    ``output_stride`` < 32 follows TF-slim: once the running stride reaches it, later stride-2
    layers run at stride 1 and every later depthwise conv is dilated by the stride it skipped.
    """
    validate(width_multiplier, resolution, variant, output_stride, num_classes, in_chans, min_depth, padding)
    layers: list[Layer] = []
    channels, hw = in_chans, (resolution, resolution)
    current_stride, rate = 1, 1

    def add(name, op, kernel, stride, dilation, out, groups, block, nominal):
        nonlocal channels, hw
        depthwise = op == OP_DEPTHWISE
        out_hw = tuple(output_size(size, kernel, stride, dilation, padding, depthwise) for size in hw)
        layers.append(Layer(name, op, kernel, stride, dilation, channels, out, groups, hw, out_hw, block, nominal,
                            current_stride))  # fmt: skip
        channels, hw = out, out_hw

    for i, row in _rows(variant):
        if current_stride == output_stride:
            stride, dilation = 1, rate
            rate *= row.stride
        else:
            stride, dilation = row.stride, 1
            current_stride *= row.stride
        nominal = current_stride * rate
        out = scaled_channels(row.out, width_multiplier, min_depth)
        if isinstance(row, Conv):
            add(f"Conv2d_{i}", OP_CONV, row.kernel, stride, dilation, out, 1, i, nominal)
        else:
            add(f"Conv2d_{i}_depthwise", OP_DEPTHWISE, row.kernel, stride, dilation, channels, channels, i, nominal)
            add(f"Conv2d_{i}_pointwise", OP_POINTWISE, 1, 1, 1, out, 1, i, nominal)
    final = current_stride * rate
    layers.append(Layer("AvgPool", OP_POOL, hw[0], 1, 1, channels, channels, channels, hw, (1, 1), -1, final,
                        current_stride))  # fmt: skip
    if num_classes:
        layers.append(Layer("Logits", OP_FC, 1, 1, 1, channels, num_classes, 1, (1, 1), (1, 1), -1, final,
                            current_stride))  # fmt: skip
    return layers


def feature_layers(layers: list[Layer]) -> list[Layer]:
    """For each nominal stride 2, 4, 8, 16, 32: the last convolution whose output is at that stride.

    These are the maps a dense-prediction head takes (``features_only=True``).
    """
    convs = [layer for layer in layers if layer.op not in (OP_POOL, OP_FC)]
    last_at: dict[int, Layer] = {}
    for layer in convs:
        last_at[layer.feature_stride] = layer
    return [last_at[s] for s in sorted(last_at)]
