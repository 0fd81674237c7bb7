"""Exact Mult-Adds and parameter counts, derived from the same resolved spec as the module.

The paper's convention (Section 3, Table 2): Mult-Adds of the conv and FC layers for one image,
parameters = conv and FC weights without biases or batch norm.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from . import spec
from .config import ModelConfig

# Table 2's row labels, by op.
LAYER_TYPES = {
    spec.OP_POINTWISE: "Conv 1x1",
    spec.OP_DEPTHWISE: "Conv DW 3x3",
    spec.OP_CONV: "Conv 3x3",
    spec.OP_FC: "Fully Connected",
}


@dataclass(frozen=True)
class LayerCost:
    name: str
    op: str
    kernel: int
    stride: int
    dilation: int
    input_shape: tuple[int, int, int]  # (H, W, C), as Table 1 prints it
    output_shape: tuple[int, int, int]
    mult_adds: int
    params: int


@dataclass(frozen=True)
class CostReport:
    config: ModelConfig
    layers: list[LayerCost]
    mult_adds: int
    params: int  # paper convention
    trainable_params: int  # the built module's
    shares: dict[str, dict[str, float]]  # Table 2: layer type -> {"mult_adds": %, "params": %}

    def to_json(self) -> str:
        d = asdict(self)
        d["config"] = self.config.to_dict()
        return json.dumps(d)


def cost_of(config: ModelConfig) -> CostReport:
    layers = config.layers()
    rows = [
        LayerCost(
            layer.name,
            layer.op,
            layer.kernel,
            layer.stride,
            layer.dilation,
            (*layer.input_hw, layer.in_channels),
            (*layer.output_hw, layer.out_channels),
            layer.mult_adds,
            layer.params,
        )
        for layer in layers
    ]
    mult_adds = sum(r.mult_adds for r in rows)
    params = sum(r.params for r in rows)
    shares = {}
    for op, label in LAYER_TYPES.items():
        of_type = [r for r in rows if r.op == op]
        if of_type:
            shares[label] = {
                "mult_adds": 100.0 * sum(r.mult_adds for r in of_type) / mult_adds,
                "params": 100.0 * sum(r.params for r in of_type) / params,
            }
    trainable = sum(layer.trainable_params for layer in layers)
    return CostReport(config, rows, mult_adds, params, trainable, shares)


def model_cost(
    width_multiplier: float = 1.0,
    resolution: int = 224,
    variant: str = "standard",
    num_classes: int = 1000,
    output_stride: int = 32,
    **config,
) -> CostReport:
    """Cost of a whole network; ``resolution`` = 224·ρ."""
    return cost_of(
        ModelConfig(width_multiplier, resolution, variant, num_classes, output_stride=output_stride, **config)
    )


@dataclass(frozen=True)
class SingleLayerCost:
    """Table 3: one layer with M input and N output channels on a D_F×D_F map, kernel D_K."""

    kind: str  # "full" or "separable"
    mult_adds: int
    params: int


def single_layer_cost(
    kind: str, in_channels: int = 512, out_channels: int = 512, map_size: int = 14, kernel: int = 3
) -> SingleLayerCost:
    """Eq. 2 (full: D_K·D_K·M·N·D_F·D_F) or Eq. 4 (separable: D_K·D_K·M·D_F·D_F + M·N·D_F·D_F)."""
    m, n, f, k = in_channels, out_channels, map_size, kernel
    if kind == "full":
        params = k * k * m * n
    elif kind == "separable":
        params = k * k * m + m * n
    else:
        raise ValueError(f"kind must be 'full' or 'separable', got {kind!r}")
    return SingleLayerCost(kind, params * f * f, params)


def reduction_factor(out_channels: int, kernel: int = 3) -> float:
    """Eq. 5: separable / full cost = 1/N + 1/D_K²."""
    return 1.0 / out_channels + 1.0 / kernel**2
