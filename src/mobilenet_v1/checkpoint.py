"""Weights on disk: a directory holding ``config.json`` + ``model.safetensors``.

Never unpickles: weights travel as safetensors. Every write is atomic (temporary file in the same
directory, then ``os.replace``), so a crash leaves either the old file or the new one, never half.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from . import spec
from .files import atomic_path, write_json
from .model import MobileNetV1, ModelConfig

# tf1_bilinear: TensorFlow 1's resize_bilinear (TF-slim's evaluation; mobilenet_v1.tf_resize), with crop_fraction
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "tf1_bilinear")
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "mobilenet-v1"

# Google/Keras preprocessing: x/127.5 − 1. torchvision/timm ImageNet statistics are the alternative.
TF_MEAN, TF_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _integer(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass
class Preprocessing:
    """How an image becomes the model's input tensor (recorded so predict/export reproduce it)."""

    input_size: int = 224
    resize: int | None = None  # shorter side before the centre crop; None = resize straight to input_size
    interpolation: str = "bilinear"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    grayscale: bool = False  # convert to one channel (in_chans=1 models)
    # TF-slim's evaluation instead of resize + crop: the central fraction of each side (tf.image.central_crop), then
    # resized to input_size × input_size (not keeping the aspect ratio)
    crop_fraction: float | None = None

    def __post_init__(self):
        problems = []
        if self.crop_fraction is not None and not (spec._number(self.crop_fraction) and 0 < self.crop_fraction <= 1):
            problems.append(f"crop_fraction must be null or a number in (0, 1], got {self.crop_fraction!r}")
        if self.interpolation == "tf1_bilinear" and self.crop_fraction is None:
            problems.append("interpolation 'tf1_bilinear' is TF-slim's evaluation: it needs crop_fraction")
        if not (_integer(self.input_size) and 1 <= self.input_size <= spec.MAX_RESOLUTION):
            problems.append(f"input_size must be an integer in [1, {spec.MAX_RESOLUTION}], got {self.input_size!r}")
        if self.resize is not None and not (_integer(self.resize) and 1 <= self.resize <= 2 * spec.MAX_RESOLUTION):
            problems.append(f"resize must be null or an integer in [1, {2 * spec.MAX_RESOLUTION}], got {self.resize!r}")
        if self.interpolation not in INTERPOLATIONS:
            problems.append(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {self.interpolation!r}")
        for name in ("mean", "std"):
            v = getattr(self, name)
            if not (isinstance(v, tuple) and len(v) in (1, 3) and all(spec._number(x) for x in v)):
                problems.append(f"{name} must be a list of 1 or 3 finite numbers, got {v!r}")
        if not problems and not all(x > 0 for x in self.std):
            problems.append(f"std must be positive, got {self.std!r}")
        if not isinstance(self.grayscale, bool):
            problems.append(f"grayscale must be true or false, got {self.grayscale!r}")
        if problems:
            raise ValueError("preprocessing: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, d: dict | None) -> Preprocessing:
        if d is not None and not isinstance(d, dict):
            raise ValueError(f"preprocessing must be an object, got {type(d).__name__}")
        d = dict(d or {})
        for k in ("mean", "std"):
            if isinstance(d.get(k), list):
                d[k] = tuple(d[k])
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


@dataclass
class Pretrained:
    """What ``config.json`` holds besides the weights."""

    model: ModelConfig
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    class_names: list[str] | None = None
    # 1 for Google's 1001-class heads, whose index 0 is "background": class i of the 1000 is logit i + 1.
    label_offset: int = 0
    source: dict = field(default_factory=dict)  # provenance: converted from what, trained how

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "model": self.model.to_dict(),
            "preprocessing": asdict(self.preprocessing),
            "class_names": self.class_names,
            "label_offset": self.label_offset,
            "source": self.source,
        }

    def __post_init__(self):
        c = self.model
        if not (_integer(self.label_offset) and self.label_offset in (0, 1)):
            raise ValueError(f"label_offset must be 0 or 1, got {self.label_offset!r}")
        if self.label_offset and c.num_classes < 2:
            raise ValueError(f"label_offset 1 needs a head of at least 2 classes, the model has {c.num_classes}")
        names = self.class_names
        if names is not None:
            if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
                raise ValueError("class_names must be a list of strings or null")
            if c.num_classes and len(names) != c.num_classes - self.label_offset:
                raise ValueError(f"class_names has {len(names)} names for {c.num_classes - self.label_offset} classes "
                                 f"({c.num_classes} logits, label_offset {self.label_offset})")  # fmt: skip
        if not isinstance(self.source, dict):
            raise ValueError(f"source must be an object, got {type(self.source).__name__}")

    @classmethod
    def from_dict(cls, d: dict, where: str = "config") -> Pretrained:
        """Validated as a schema: a bad type, value or length is one ``ValueError`` naming ``where``."""
        if not isinstance(d, dict) or d.get("format") != FORMAT or "model" not in d:
            raise ValueError(f"{where}: not a mobilenet-v1 config (missing 'format': '{FORMAT}' or 'model')")
        try:
            return cls(
                ModelConfig.from_dict(d["model"]),
                Preprocessing.from_dict(d.get("preprocessing")),
                d.get("class_names"),
                d.get("label_offset", 0),
                d.get("source", {}),
            )
        except (ValueError, TypeError) as e:  # TypeError: a field of the wrong type met an operator
            raise ValueError(f"{where}: {e}") from None


def save_weights(state_dict: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict | None = None) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    data = save(tensors, metadata=metadata)  # serialized in memory: a full disk is then one OSError naming the file
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def load_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None


def save_pretrained(
    model: MobileNetV1, out_dir: str | os.PathLike, info: Pretrained | None = None, weights_name: str = WEIGHTS_NAME
) -> Path:
    """Write ``config.json`` and the weights into ``out_dir`` (both atomically)."""
    out_dir = Path(out_dir)
    info = info or Pretrained(model.config)
    info.model = model.config
    save_weights(model.state_dict(), out_dir / weights_name, metadata={"format": FORMAT})
    write_json(out_dir / CONFIG_NAME, info.to_dict())
    return out_dir


def read_config(path: str | os.PathLike) -> Pretrained:
    path = Path(path)
    cfg_path = path / CONFIG_NAME if path.is_dir() else path
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path}: no such file (expected a directory with {CONFIG_NAME} + {WEIGHTS_NAME})")
    try:
        data = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{cfg_path}: not valid JSON ({e})") from None
    return Pretrained.from_dict(data, where=str(cfg_path))


def load_state_into(model: MobileNetV1, state: dict[str, torch.Tensor], where: str) -> None:
    """Load a state dict, turning shape/key mismatches into one line naming the file and the problem."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(
            f"{where}: weights do not fit this model ({len(missing)} missing, e.g. {missing[:2]}; "
            f"{len(unexpected)} unexpected, e.g. {unexpected[:2]})"
        )
    for k, v in state.items():
        if own[k].shape != v.shape:
            raise ValueError(
                f"{where}: {k} has shape {tuple(v.shape)} but the model (alpha={model.config.width_multiplier:g}, "
                f"classes={model.config.num_classes}) expects {tuple(own[k].shape)}"
            )
        if own[k].is_floating_point() and not v.is_floating_point():
            raise ValueError(f"{where}: {k} holds {v.dtype} values where weights are floating point")
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise ValueError(f"{where}: {k} holds NaN or infinite values")
    model.load_state_dict(state)


def from_pretrained(path: str | os.PathLike, weights_name: str = WEIGHTS_NAME, **backbone) -> MobileNetV1:
    """The model in eval mode from a directory with ``config.json`` + ``model.safetensors``.

    ``backbone`` may hold ``features_only`` / ``out_indices``; the head's weights are then ignored.
    The :class:`Pretrained` info is attached as ``model.pretrained``.
    """
    path = Path(path)
    info = read_config(path)
    model = MobileNetV1(config=info.model, **backbone)
    weights = path / weights_name
    state = load_weights(weights)
    if backbone.get("features_only"):
        state = {k: v for k, v in state.items() if k.startswith("features.")}
    load_state_into(model, state, str(weights))
    model.pretrained = info
    return model.eval()
