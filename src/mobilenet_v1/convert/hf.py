"""Hugging Face transformers' MobileNet-V1 directories, both ways, with ``json`` and ``safetensors`` alone.

transformers' ``MobileNetV1Model`` / ``MobileNetV1ForImageClassification`` (the ``google/mobilenet_v1_*`` models
on the Hub) hold ``conv_stem`` then ``layer.0`` … ``layer.25`` (depthwise and pointwise in turn), each a
``convolution`` and a ``normalization``, and a ``classifier`` Linear, under the prefix ``mobilenet_v1.`` when
there is a head. ``config.json`` says ``depth_multiplier`` (α), ``min_depth``, ``tf_padding`` (TF 'SAME', else
PyTorch's symmetric padding), ``hidden_act``, ``layer_norm_eps`` (batch norm's ε) and the labels (``id2label``: 1001
with "background" first for Google's weights); ``preprocessor_config.json`` the preprocessing.

Two traps of that port are not carried over: ``classifier_dropout_prob = 0.999`` (TF-slim's *keep* probability
read as a drop rate; written here as the model's own dropout) and ``BatchNorm2d(momentum=0.9997)``, TF's decay
under PyTorch's opposite convention, which transformers hard-codes: the exported directory's README says how to
reset it before fine-tuning there.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .. import spec
from ..checkpoint import TF_MEAN, TF_STD, Preprocessing
from ..files import remove_stale_temporaries
from ..imagenet import imagenet_classes
from ..model import MobileNetV1
from ..rundir import is_run
from .common import ConvBN, assemble, conv_layers, make_info

FORMAT = "hf"
MODEL_TYPE = "mobilenet_v1"
CLASSIFIER, BASE = "MobileNetV1ForImageClassification", "MobileNetV1Model"
PREFIX = "mobilenet_v1."
PREPROCESSOR = "preprocessor_config.json"
ACTIVATIONS = {"relu6": "relu6", "relu": "relu"}  # transformers' hidden_act -> ours
RESAMPLE = {"nearest": 0, "bilinear": 2, "bicubic": 3}  # PIL's codes, as transformers records them
BN = ("weight", "bias", "running_mean", "running_var")


def is_hf_dir(path: Path) -> bool:
    """A directory whose ``config.json`` is a transformers config (it names a ``model_type``)."""
    try:
        return isinstance(config := json.loads((path / "config.json").read_text()), dict) and "model_type" in config
    except (OSError, ValueError):
        return False


def hf_names() -> list[str]:
    """transformers' module names, in the order of our layers (``conv_layers``): conv_stem, layer.0, …, layer.25."""
    return ["conv_stem"] + [f"layer.{i}" for i in range(len(conv_layers()) - 1)]


def read_hf(path: str | os.PathLike, where: str | None = None) -> tuple[MobileNetV1, object]:
    """A transformers MobileNet-V1 directory → ``(model, Pretrained)``; ``ValueError`` naming what does not fit."""
    path = Path(path)
    where = where or str(path)
    config = _json(path / "config.json", where)
    if config.get("model_type") != MODEL_TYPE:
        raise ValueError(f"{where}: a transformers {config.get('model_type')!r} model, not MobileNet-V1 "
                         f"(model_type {MODEL_TYPE!r})")  # fmt: skip
    state = _weights(path, where)
    if any(k.startswith(PREFIX) for k in state):
        state = {k.removeprefix(PREFIX): v for k, v in state.items()}
    expected = {f"{n}.convolution.weight" for n in hf_names()}
    expected |= {f"{n}.normalization.{p}" for n in hf_names() for p in (*BN, "num_batches_tracked")}
    head = "classifier.weight" in state
    expected |= {"classifier.weight", "classifier.bias"} if head else set()
    missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]  # optional: older files omit it
    if missing or extra:
        raise ValueError(f"{where}: weights are not transformers' MobileNetV1 ({len(missing)} missing, e.g. "
                         f"{missing[:2]}; {len(extra)} unexpected, e.g. {extra[:2]})")  # fmt: skip
    act = config.get("hidden_act", "relu6")
    if act not in ACTIVATIONS:
        raise ValueError(f"{where}: hidden_act {act!r}; MobileNet-V1 here is relu or relu6")
    convs = {}
    for layer, name in zip(conv_layers(), hf_names()):
        bn = [state[f"{name}.normalization.{p}"].numpy() for p in BN]
        convs[layer.name] = ConvBN(state[f"{name}.convolution.weight"].numpy(), *bn)
    classifier = (state["classifier.weight"].numpy(), state["classifier.bias"].numpy()) if head else None
    size = config.get("image_size", 224)
    size = size[0] if isinstance(size, (list, tuple)) else size
    model = assemble(convs, classifier, where=where, activation=ACTIVATIONS[act],
                     padding="tf_same" if config.get("tf_padding", True) else "symmetric",
                     bn_eps=float(config.get("layer_norm_eps", 1e-3)), resolution=int(size))  # fmt: skip
    c = model.config
    alpha, min_depth = float(config.get("depth_multiplier", 1.0)), int(config.get("min_depth", spec.DEFAULT_MIN_DEPTH))
    channels = [layer.out_channels for layer in conv_layers(c.width_multiplier, c.min_depth)]
    if channels != [layer.out_channels for layer in conv_layers(alpha, min_depth)]:
        raise ValueError(f"{where}: config says depth_multiplier {alpha:g}, min_depth {min_depth}, but the weights' "
                         f"channels are those of {c.width_multiplier:g}, {c.min_depth}")  # fmt: skip
    model.config = c = dataclasses.replace(c, width_multiplier=alpha, min_depth=min_depth)  # the file's own words
    info = make_info(model, _preprocessing(path, where, c.resolution), {"format": FORMAT, "file": path.name})
    info.class_names, info.label_offset = _labels(config, c.num_classes, where)
    return model, info


def _json(path: Path, where: str) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{where}: no {path.name} (a transformers model directory holds config.json)")
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a JSON object")
    return data


def _weights(path: Path, where: str) -> dict[str, torch.Tensor]:
    st, bin_ = path / "model.safetensors", path / "pytorch_model.bin"
    try:
        if st.is_file():
            return load_file(str(st))
        if bin_.is_file():  # older uploads: a torch.save file, read without unpickling code
            state = torch.load(str(bin_), map_location="cpu", weights_only=True)
            if isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values()):
                return state
            raise ValueError("not a state dict of tensors")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ValueError(f"{where}: unreadable weights ({type(e).__name__}: {' '.join(str(e).split())})") from None
    raise FileNotFoundError(f"{where}: no model.safetensors (or pytorch_model.bin)")


def _labels(config: dict, num_classes: int, where: str) -> tuple[list[str] | None, int]:
    """(class names, label offset): Google's 1001 with "background" first give offset 1."""
    if not num_classes:
        return None, 0
    id2label = config.get("id2label") or {}
    try:
        names = [str(id2label[str(i)] if str(i) in id2label else id2label[i]) for i in range(num_classes)]
    except KeyError:
        return None, 0
    if num_classes == 1001 and names[0].lower() == "background":
        return names[1:], 1
    if all(re.fullmatch(r"LABEL_\d+", n) for n in names):  # transformers' placeholder names
        return None, 0
    return names, 0


def _preprocessing(path: Path, where: str, resolution: int) -> Preprocessing:
    """``preprocessor_config.json`` (transformers' MobileNetV1ImageProcessor), else transformers' defaults."""
    p = _json(path / PREPROCESSOR, where) if (path / PREPROCESSOR).is_file() else {}
    crop = p.get("crop_size", {"height": resolution, "width": resolution})
    size = p.get("size", {"shortest_edge": 256 * resolution // 224})
    crop = crop.get("height", resolution) if isinstance(crop, dict) else int(crop)
    resize = size.get("shortest_edge") if isinstance(size, dict) else int(size)
    resample = {v: k for k, v in RESAMPLE.items()}.get(p.get("resample", 2), "bilinear")
    return Preprocessing(
        input_size=int(crop) if p.get("do_center_crop", True) else resolution,
        resize=int(resize) if p.get("do_resize", True) and resize else None,
        interpolation=resample,
        # transformers' defaults: IMAGENET_STANDARD_MEAN/STD, which are 0.5 (x/127.5 − 1, as TF-slim)
        mean=tuple(p.get("image_mean", TF_MEAN)) if p.get("do_normalize", True) else (0.0, 0.0, 0.0),
        std=tuple(p.get("image_std", TF_STD)) if p.get("do_normalize", True) else (1.0, 1.0, 1.0),
    )


def hf_incompatibilities(model: MobileNetV1) -> list[str]:
    """Why transformers' MobileNetV1 cannot reproduce this model (empty when it can)."""
    c = model.config
    problems = []
    if c.variant != "standard":
        problems.append(f"variant {c.variant!r} (transformers has only the standard network)")
    if c.output_stride != 32:
        problems.append(f"output_stride {c.output_stride} (transformers has no dilation)")
    if c.num_classes and c.global_pool != "avg":
        problems.append(f"global_pool {c.global_pool!r} (transformers pools by average)")
    if c.in_chans != 3:
        problems.append(f"in_chans {c.in_chans} (transformers' image processor feeds RGB)")
    if c.padding == "keras":
        odd = [layer for layer in c.layers() if layer.stride == 2 and layer.op == spec.OP_DEPTHWISE
               and any(s % 2 for s in layer.input_hw)]  # fmt: skip
        if odd:
            problems.append(f"padding 'keras' at resolution {c.resolution}: {odd[0].name} reads an odd map, which "
                            "transformers pads like TF 'SAME'")  # fmt: skip
    return problems


def write_hf(model: MobileNetV1, out: str | os.PathLike, info=None) -> Path:
    """Write ``model`` as a transformers MobileNet-V1 directory (``config.json``, ``model.safetensors``,
    ``preprocessor_config.json``, ``README.md``), atomically: all of it appears at once, or nothing."""
    out = Path(out)
    problems = hf_incompatibilities(model)
    if problems:
        raise ValueError(f"cannot export to transformers' MobileNetV1: {'; '.join(problems)}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out}: exists and is not an empty directory; export into a new one")
    if out.exists() and is_run(out):
        raise ValueError(f"{out}: holds a training run; export into another directory")
    info = info if info is not None else getattr(model, "pretrained", None)
    c = model.config
    state = model.state_dict()
    prefix = PREFIX if c.num_classes else ""
    tensors = {}
    for layer, name in zip(conv_layers(c.width_multiplier, c.min_depth), hf_names()):
        tensors[f"{prefix}{name}.convolution.weight"] = state[f"features.{layer.name}.conv.weight"]
        for p in (*BN, "num_batches_tracked"):
            tensors[f"{prefix}{name}.normalization.{p}"] = state[f"features.{layer.name}.bn.{p}"]
    if c.num_classes:
        tensors["classifier.weight"], tensors["classifier.bias"] = state["classifier.weight"], state["classifier.bias"]
    config = {
        "architectures": [CLASSIFIER if c.num_classes else BASE],
        "model_type": MODEL_TYPE,
        "num_channels": c.in_chans,
        "image_size": c.resolution,
        "depth_multiplier": c.width_multiplier,
        "min_depth": c.min_depth,
        "hidden_act": c.activation,
        "tf_padding": c.padding != "symmetric",
        "classifier_dropout_prob": c.dropout,  # a drop rate (TF-slim's 0.999 was its keep probability)
        "layer_norm_eps": c.bn_eps,
        "initializer_range": 0.02,
        "torch_dtype": "float32",
    }
    if c.num_classes:
        names = _hf_labels(info, c.num_classes)
        config["id2label"] = {str(i): n for i, n in enumerate(names)}
        config["label2id"] = {n: i for i, n in enumerate(names)}
    pre = info.preprocessing if info is not None else Preprocessing(input_size=c.resolution)
    # transformers resizes then crops; TF-slim's central crop then resize is the same geometry up to rounding
    resize = round(pre.input_size / pre.crop_fraction) if pre.crop_fraction else pre.resize
    processor = {
        "image_processor_type": "MobileNetV1ImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": resize} if resize else {"height": pre.input_size, "width": pre.input_size},
        "resample": RESAMPLE["bilinear" if pre.interpolation == "tf1_bilinear" else pre.interpolation],
        "do_center_crop": bool(resize),
        "crop_size": {"height": pre.input_size, "width": pre.input_size},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(pre.mean),
        "image_std": list(pre.std),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.{os.getpid()}.", suffix=".tmp", dir=out.parent))
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / "model.safetensors"),
                  metadata={"format": "pt"})  # fmt: skip
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        (tmp / PREPROCESSOR).write_text(json.dumps(processor, indent=2) + "\n")
        (tmp / "README.md").write_text(_model_card(c, info))
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)
        for f in tmp.iterdir():
            f.chmod(0o666 & ~umask)
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(tmp, out)
    except OSError as e:
        raise OSError(e.errno, e.strerror or str(e), str(out)) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _hf_labels(info, num_classes: int) -> list[str]:
    names = list(info.class_names) if info is not None and info.class_names else None
    offset = info.label_offset if info is not None else 0
    if names is None and num_classes in (1000, 1001):
        names, offset = imagenet_classes(), 1 if num_classes == 1001 else 0
    if names is None or len(names) + offset != num_classes:
        return [f"LABEL_{i}" for i in range(num_classes)]
    return ["background"] * offset + names


def _model_card(c, info) -> str:
    source = (info.source or {}).get("format", "mobilenet-v1") if info is not None else "mobilenet-v1"
    return f"""---
library_name: transformers
pipeline_tag: image-classification
license: apache-2.0
tags: [mobilenet_v1, image-classification]
---

# MobileNet-V1 (α = {c.width_multiplier:g}, {c.resolution} px)

Exported by the `mobilenet-v1` package (source: {source}) into transformers' `MobileNetV1` layout; the outputs
equal the package's own model to float rounding.

**Before fine-tuning in transformers**, set batch norm's momentum: transformers' code hard-codes
`BatchNorm2d(momentum=0.9997)`, TF's decay under PyTorch's opposite convention, so the running statistics would
be replaced by each batch's. TF-slim's decay 0.9997 is PyTorch's momentum 0.0003:

```python
for m in model.modules():
    if isinstance(m, torch.nn.BatchNorm2d):
        m.momentum = 0.0003
```

`classifier_dropout_prob` is the dropout rate ({c.dropout:g}), not TF-slim's keep probability.
"""
