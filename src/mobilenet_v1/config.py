"""``ModelConfig``: everything needed to rebuild a model, stored as ``config.json`` beside its weights.

Plain data over the spec (no torch): the cost model, the summary and the converters read it without building
a module.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from . import spec

ACTIVATIONS = ("relu", "relu6")  # the paper's ReLU; Google's released weights use ReLU6
# the paper's 7×7 average pool; Keras's and timm's feature extractors also offer max, and "" (none: the forward
# returns the last feature map, headless models only)
GLOBAL_POOLS = ("avg", "max", "")


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model; stored as ``config.json`` beside its weights."""

    width_multiplier: float = 1.0  # α, Section 4.2
    resolution: int = 224  # input size; ρ = resolution / 224 (Section 4.3); the module accepts any size
    variant: str = "standard"
    num_classes: int = 1000
    in_chans: int = 3
    dropout: float = 0.0
    activation: str = "relu"  # the paper; Google's released weights use relu6
    padding: str = "symmetric"  # "tf_same" for TensorFlow graphs, "keras" for Keras files (spec.PADDINGS)
    bn_eps: float = 1e-5  # TF-slim and Keras use 1e-3
    output_stride: int = 32
    min_depth: int = spec.DEFAULT_MIN_DEPTH
    global_pool: str = "avg"  # the paper's 7×7 average pool; "max" for Keras's pooling="max" feature extractors
    extra: dict = field(default_factory=dict, compare=False)  # e.g. the 1001-class "background" offset

    def __post_init__(self):
        spec.validate(
            self.width_multiplier,
            self.resolution,
            self.variant,
            self.output_stride,
            self.num_classes,
            self.in_chans,
            self.min_depth,
            self.padding,
        )
        if not isinstance(self.activation, str) or self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}; got {self.activation!r}")
        if not isinstance(self.global_pool, str) or self.global_pool not in GLOBAL_POOLS:
            raise ValueError(f"global_pool must be one of avg, max or '' (none); got {self.global_pool!r}")
        if self.global_pool == "" and self.num_classes:
            raise ValueError("global_pool '' (no pooling) is for a model without a classifier (num_classes 0)")
        if not (spec._number(self.dropout) and 0.0 <= self.dropout < 1.0):
            raise ValueError(f"dropout must be a number in [0, 1), got {self.dropout!r}")
        if not (spec._number(self.bn_eps) and 0.0 < self.bn_eps <= 1.0):
            raise ValueError(f"bn_eps must be a number in (0, 1], got {self.bn_eps!r}")
        if not isinstance(self.extra, dict):
            raise ValueError(f"extra must be an object, got {self.extra!r}")

    def layers(self) -> list[spec.Layer]:
        return spec.resolve(
            self.width_multiplier,
            self.resolution,
            self.variant,
            self.output_stride,
            self.num_classes,
            self.in_chans,
            self.min_depth,
            self.padding,
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        if not isinstance(d, dict):
            raise ValueError(f"the model config must be an object, got {type(d).__name__}")
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)
