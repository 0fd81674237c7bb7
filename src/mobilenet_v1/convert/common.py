"""What every importer shares: the layer-name schema from the spec, α inference, and assembly.

Each reader (TF graph, Keras, timm) only has to produce one :class:`ConvBN` per convolution, keyed by
the TF-slim end-point name the spec gives it (``Conv2d_0``, ``Conv2d_1_depthwise``, …), in PyTorch
layout, plus the classifier. :func:`assemble` then infers α from the channel counts, builds the
model and loads the weights, so no reader hand-writes the 27 layer names or the state-dict keys.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .. import spec
from ..checkpoint import TF_MEAN, TF_STD, Preprocessing, Pretrained, load_state_into
from ..imagenet import imagenet_labels
from ..model import MobileNetV1, ModelConfig

CONV_OPS = (spec.OP_CONV, spec.OP_DEPTHWISE, spec.OP_POINTWISE)
TF_SLIM_CROP = 0.875  # TF-slim's ImageNet evaluation: the central 87.5% of each side


@dataclass
class ConvBN:
    """One convolution (PyTorch layout: ``(out, in/groups, k, k)``) and the batch norm after it."""

    weight: np.ndarray
    gamma: np.ndarray
    beta: np.ndarray
    mean: np.ndarray
    var: np.ndarray


def conv_layers(width_multiplier: float = 1.0, min_depth: int = spec.DEFAULT_MIN_DEPTH) -> list[spec.Layer]:
    """The standard network's convolutions in order; their names are the converters' schema."""
    layers = spec.resolve(width_multiplier, num_classes=0, min_depth=min_depth)
    return [layer for layer in layers if layer.op in CONV_OPS]


def layer_names() -> list[str]:
    return [layer.name for layer in conv_layers()]


def hwio_to_torch(kernel: np.ndarray) -> np.ndarray:
    """TF/Keras conv kernel (kh, kw, in, out) → PyTorch (out, in, kh, kw)."""
    return np.ascontiguousarray(np.transpose(kernel, (3, 2, 0, 1)))


def depthwise_to_torch(kernel: np.ndarray) -> np.ndarray:
    """TF/Keras depthwise kernel (kh, kw, C, multiplier=1) → PyTorch grouped conv (C, 1, kh, kw)."""
    if kernel.ndim != 4 or kernel.shape[3] != 1:
        raise ValueError(f"depthwise kernel of shape {kernel.shape}: only channel multiplier 1 is MobileNet-V1")
    return np.ascontiguousarray(np.transpose(kernel, (2, 3, 0, 1)))


def infer_width(out_channels: dict[str, int], where: str) -> tuple[float, int]:
    """α and min_depth reproducing every layer's output channels, from the spec (``int(α·N)`` floored).

    The last pointwise layer has N = 1024, so α ≈ C/1024; the roundest candidate that reproduces all
    27 counts wins (0.75, not 0.7500001). min_depth 8 is TF-slim's floor; 1 covers Keras, which has none.
    """
    last = out_channels[conv_layers()[-1].name]
    exact = last / spec.TABLE_1[-1].out
    candidates = [round(exact, digits) for digits in (2, 3, 4)] + [exact]
    for min_depth in (spec.DEFAULT_MIN_DEPTH, 1):
        for alpha in candidates:
            if alpha > 0 and all(
                out_channels[layer.name] == layer.out_channels for layer in conv_layers(alpha, min_depth)
            ):
                return alpha, min_depth
    got = [out_channels[n] for n in layer_names() if not n.endswith("_depthwise")]
    raise ValueError(f"{where}: channel counts {got} match no width multiplier of MobileNet-V1 (Table 1 × alpha)")


def assemble(
    convs: dict[str, ConvBN],
    head: tuple[np.ndarray, np.ndarray] | None,
    *,
    where: str,
    activation: str,
    padding: str,
    bn_eps: float,
    resolution: int = 224,
    global_pool: str = "avg",
) -> MobileNetV1:
    """Build our model from per-layer weights; ``head`` is ``(weight (K, C), bias (K,))`` or None."""
    expected = layer_names()
    missing = [n for n in expected if n not in convs]
    if missing:
        raise ValueError(
            f"{where}: not a complete MobileNet-V1: {len(missing)} of {len(expected)} convolutions missing "
            f"(e.g. {', '.join(missing[:3])})"
        )
    out_channels = {name: int(c.weight.shape[0]) for name, c in convs.items()}
    alpha, min_depth = infer_width(out_channels, where)
    num_classes = 0 if head is None else int(head[0].shape[0])
    config = ModelConfig(
        width_multiplier=alpha,
        resolution=resolution,
        num_classes=num_classes,
        activation=activation,
        padding=padding,
        bn_eps=float(bn_eps),
        min_depth=min_depth,
        global_pool=global_pool,
    )
    state: dict[str, torch.Tensor] = {}
    for name in expected:
        c, prefix = convs[name], f"features.{name}"
        state[f"{prefix}.conv.weight"] = _tensor(c.weight)
        for key, value in (("weight", c.gamma), ("bias", c.beta), ("running_mean", c.mean), ("running_var", c.var)):
            state[f"{prefix}.bn.{key}"] = _tensor(value)
        state[f"{prefix}.bn.num_batches_tracked"] = torch.tensor(0)
    if head is not None:
        state["classifier.weight"], state["classifier.bias"] = _tensor(head[0]), _tensor(head[1])
    model = MobileNetV1(config=config)
    load_state_into(model, state, where)
    return model.eval()


def _tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(a, dtype=np.float32, copy=True))


def tf_preprocessing(resolution: int) -> Preprocessing:
    """TF-slim's ImageNet evaluation (``inception_preprocessing.preprocess_for_eval``): the central 87.5% of each
    side, resized to ``resolution`` with TF1's bilinear kernel, then x/127.5 − 1."""
    return Preprocessing(input_size=resolution, interpolation="tf1_bilinear", mean=TF_MEAN, std=TF_STD,
                         crop_fraction=TF_SLIM_CROP)  # fmt: skip


def keras_preprocessing(resolution: int) -> Preprocessing:
    """Keras's documented use: the image loaded at the input size (``load_img(target_size=...)``, here bilinear),
    then ``keras.applications.mobilenet.preprocess_input`` (x/127.5 − 1)."""
    return Preprocessing(input_size=resolution, interpolation="bilinear", mean=TF_MEAN, std=TF_STD)


def describe(model: MobileNetV1, info: Pretrained) -> dict:
    """The facts a converter inferred and records; also what ``convert`` prints."""
    c = model.config
    return {
        "width_multiplier": c.width_multiplier,
        "resolution": c.resolution,
        "num_classes": c.num_classes,
        "label_offset": info.label_offset,
        "activation": c.activation,
        "padding": c.padding,
        "bn_eps": c.bn_eps,
        "min_depth": c.min_depth,
    }


def make_info(model: MobileNetV1, preprocessing: Preprocessing, source: dict) -> Pretrained:
    names, offset = imagenet_labels(model.config.num_classes)
    info = Pretrained(model.config, preprocessing, names, offset, dict(source))
    info.source["inferred"] = describe(model, info)
    return info
