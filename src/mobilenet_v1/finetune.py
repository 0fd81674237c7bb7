"""Fine-tuning: start training from pretrained weights (``train --init SRC``)."""

from __future__ import annotations

import functools
from pathlib import Path

from .checkpoint import CONFIG_NAME, Preprocessing, Pretrained, from_pretrained
from .model import MobileNetV1, ModelConfig


@functools.lru_cache(maxsize=1)  # train reads the source twice (preprocessing, then weights): convert once
def _load(src: str) -> tuple[MobileNetV1, Pretrained]:
    path = Path(src)
    if path.is_dir() and (path / CONFIG_NAME).is_file():
        model = from_pretrained(path)
        return model, model.pretrained
    from .convert import load_any  # noqa: PLC0415 - TF/Keras/timm readers only when needed

    return load_any(src)


def load_init(src: str, target: ModelConfig) -> MobileNetV1:
    """Pretrained backbone with a fresh head when the class count differs.

    The width multiplier and variant must match (they fix every weight's shape); activation,
    padding and BN ε follow the source, since the weights were trained with them.
    """
    source, _ = _load(src)
    s = source.config
    if (s.width_multiplier, s.variant, s.in_chans) != (target.width_multiplier, target.variant, target.in_chans):
        raise ValueError(
            f"{src}: weights are alpha={s.width_multiplier:g}, variant={s.variant}, in_chans={s.in_chans}; "
            f"the model asked for is alpha={target.width_multiplier:g}, variant={target.variant}, "
            f"in_chans={target.in_chans}"
        )
    config = ModelConfig.from_dict(
        {**target.to_dict(), "activation": s.activation, "padding": s.padding, "bn_eps": s.bn_eps}
    )
    model = MobileNetV1(config=config)
    features = {k: v for k, v in source.state_dict().items() if k.startswith("features.")}
    model.load_state_dict(features, strict=False)
    if s.num_classes == target.num_classes:
        model.classifier.load_state_dict(source.classifier.state_dict())
    return model


def init_preprocessing(src: str, fallback: Preprocessing) -> Preprocessing:
    """The source's normalisation at the new input size (pretrained filters expect their input scale)."""
    _, info = _load(src)
    p = info.preprocessing
    return Preprocessing(fallback.input_size, fallback.resize, p.interpolation, p.mean, p.std, fallback.grayscale)
