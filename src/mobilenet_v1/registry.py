"""Named models: the paper's 16 α × resolution MobileNets (Tables 6 and 7), the two baselines, and α = 1.25
(the width timm trains and releases weights for)."""

from __future__ import annotations

from .model import MobileNetV1, ModelConfig

WIDTHS = {"100": 1.0, "075": 0.75, "050": 0.5, "025": 0.25}
RESOLUTIONS = (224, 192, 160, 128)

_MODELS: dict[str, dict] = {
    f"mobilenet_v1_{w}_{r}": {"width_multiplier": a, "resolution": r} for w, a in WIDTHS.items() for r in RESOLUTIONS
}
# Table 4: every separable block replaced by a full 3×3 conv; Table 5: the five 14×14×512 blocks removed.
_MODELS["mobilenet_v1_full_conv_100_224"] = {"width_multiplier": 1.0, "resolution": 224, "variant": "full_conv"}
_MODELS["mobilenet_v1_shallow_100_224"] = {"width_multiplier": 1.0, "resolution": 224, "variant": "shallow"}
_MODELS["mobilenet_v1_125_224"] = {"width_multiplier": 1.25, "resolution": 224}


def list_models() -> list[str]:
    return list(_MODELS)


def model_config(name: str, **overrides) -> ModelConfig:
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(_MODELS)}")
    return ModelConfig(**{**_MODELS[name], **overrides})


def create_model(name: str, pretrained: bool | str = False, **overrides) -> MobileNetV1:
    """Build a named model; ``overrides`` are :class:`ModelConfig` fields (``num_classes=10``, …)
    or the backbone options ``features_only`` and ``out_indices``."""
    backbone = {k: overrides.pop(k) for k in ("features_only", "out_indices") if k in overrides}
    if pretrained:
        from .pretrained import load_pretrained  # noqa: PLC0415 - optional, pulls in converters

        return load_pretrained(name, source=pretrained, **overrides, **backbone)
    return MobileNetV1(config=model_config(name, **overrides), **backbone)
