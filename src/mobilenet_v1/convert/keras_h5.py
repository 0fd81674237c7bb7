"""Import ``keras.applications.MobileNet`` weights with ``h5py`` alone (no Keras install needed).

Three containers, one model:

* legacy HDF5 (``.h5``: Keras 2's released ``mobilenet_1_0_224_tf.h5``, or any ``model.save("x.h5")``):
  groups named after the layers (``conv_dw_3``, ``conv_pw_3_bn``), each listing its ``weight_names``;
* Keras 3 weights (``.weights.h5``): groups named by layer *class* and position
  (``layers/conv2d_3/vars/0``), not by layer name;
* Keras 3 archives (``.keras``): a zip of that weights file plus ``config.json``.

Keras 3 files are mapped to layer names through ``config.json`` when there is one, else by position:
Keras names the k-th ``Conv2D`` of the model ``conv2d_k``, and MobileNet's layer order is Table 1's.
Keras's stride-2 depthwise convolutions are ``ZeroPadding2D(((0, 1), (0, 1)))`` + 'valid': TF's 'SAME' on an
even map, one pixel less on an odd one, so the converted model uses ``padding='keras'`` and computes what
Keras computes at every input size. ε, ReLU6 and ``pooling`` are read from the config when present.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path

import numpy as np

from ..model import MobileNetV1
from .common import ConvBN, assemble, conv_layers, depthwise_to_torch, hwio_to_torch, keras_preprocessing, make_info
from .tf_graph import MAX_CONSTANT

FORMAT = "keras"
MAX_ARCHIVE_MEMBER = 2 << 30  # bytes; a .keras member declared larger is refused before it is inflated
HEAD = "conv_preds"
BN_VARS = ("gamma", "beta", "moving_mean", "moving_variance")  # Keras's variable order
# Keras 3 weight-file group prefix of each layer class MobileNet has weights in
_GENERIC = {"Conv2D": "conv2d", "DepthwiseConv2D": "depthwise_conv2d", "BatchNormalization": "batch_normalization"}
_RELEASED_NAME = re.compile(r"mobilenet_\d_\d+_(\d+)_tf")  # Keras's own file names: mobilenet_7_5_160_tf.h5


def keras_name(layer_name: str) -> str:
    """Our (TF-slim) layer name → the ``keras.applications.MobileNet`` layer holding the same weights."""
    m = re.fullmatch(r"Conv2d_(\d+)(?:_(depthwise|pointwise))?", layer_name)
    if not m:
        raise ValueError(f"no Keras layer for {layer_name!r}")
    if m[2] is None:
        return "conv1"
    return f"conv_{'dw' if m[2] == 'depthwise' else 'pw'}_{m[1]}"


def read_keras(path: str | Path, where: str | None = None, resolution: int | None = None):
    """Convert a Keras MobileNet weights file (``.h5``, ``.weights.h5`` or ``.keras``) → ``(model, Pretrained)``."""
    path = Path(path)
    where = where or str(path)
    try:
        import h5py
    except ImportError as e:
        raise ValueError(
            f"{where}: reading Keras files needs h5py (pip install 'mobilenet-v1[convert]'): {e}"
        ) from None
    config = None
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
                if "model.weights.h5" not in names:
                    raise ValueError(f"{where}: a zip without model.weights.h5 is not a .keras archive")
                for member in ("model.weights.h5", "config.json"):  # sizes from the archive, checked before inflating
                    if member in names and z.getinfo(member).file_size > MAX_ARCHIVE_MEMBER:
                        raise ValueError(f"{where}: {member} inflates to {z.getinfo(member).file_size:,} bytes")
                blob = z.read("model.weights.h5")
                config = json.loads(z.read("config.json")) if "config.json" in names else None
        except (zipfile.BadZipFile, OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{where}: not a readable .keras archive ({e})") from None
        opener = lambda: h5py.File(io.BytesIO(blob), "r")  # noqa: E731
    else:
        opener = lambda: h5py.File(path, "r")  # noqa: E731
    try:
        with opener() as f:
            if config is None and "model_config" in f.attrs:
                config = json.loads(_text(f.attrs["model_config"]))
            weights = _read_legacy(f) if "layers" not in f else _read_keras3(f["layers"], config, where)
    except OSError as e:
        raise ValueError(f"{where}: not a readable HDF5 file ({' '.join(str(e).split())})") from None
    except ValueError as e:
        raise e if str(e).startswith(where) else ValueError(f"{where}: {e}") from None
    return _to_model(weights, config, where, resolution or _resolution(config, path))


def _array(dataset) -> np.ndarray:
    """An HDF5 dataset's values, its declared size checked before it is read (compressed data can inflate to far
    more than the file's size)."""
    if dataset.size > MAX_CONSTANT:
        raise ValueError(f"dataset {dataset.name} of shape {dataset.shape} is larger than any MobileNet weight")
    return np.asarray(dataset)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _read_legacy(f) -> dict[str, dict[str, np.ndarray]]:
    """Keras 2 / legacy HDF5: ``layer_names`` → each layer's ``weight_names`` (``conv1/kernel:0``)."""
    root = f["model_weights"] if "model_weights" in f else f
    out = {}
    for layer in (_text(n) for n in root.attrs.get("layer_names", [])):
        group = root[layer]
        names = [_text(n) for n in group.attrs.get("weight_names", [])]
        if names:
            out[layer] = {n.split("/")[-1].split(":")[0]: _array(group[n]) for n in names}
    return out


def _read_keras3(layers, config: dict | None, where: str) -> dict[str, dict[str, np.ndarray]]:
    """Keras 3: ``layers/<class>_<k>/vars/<i>``, renamed to layer names (by config, else by position)."""
    rename = _names_from_config(config) if config else _names_by_position(layers)
    out = {}
    for generic, group in layers.items():
        if generic not in rename or "vars" not in group:
            continue
        values = [_array(group["vars"][str(i)]) for i in range(len(group["vars"]))]
        name = rename[generic]
        if generic.startswith("batch_normalization"):
            if len(values) != 4:
                raise ValueError(f"{where}: batch norm {name} has {len(values)} variables; MobileNet's have 4")
            out[name] = dict(zip(BN_VARS, values))
        else:
            kernel = "depthwise_kernel" if generic.startswith("depthwise") else "kernel"
            out[name] = dict(zip((kernel, "bias"), values))
    return out


def _config_layers(config: dict) -> list[dict]:
    return config.get("config", {}).get("layers", [])


def _names_from_config(config: dict) -> dict[str, str]:
    """Keras 3 names the k-th layer of class C in the model ``snake(C)_k`` (``conv2d``, ``conv2d_1``, …)."""
    counts: dict[str, int] = {}
    rename = {}
    for layer in _config_layers(config):
        prefix = _GENERIC.get(layer.get("class_name"))
        if prefix:
            k = counts.get(prefix, 0)
            counts[prefix] = k + 1
            rename[prefix if k == 0 else f"{prefix}_{k}"] = layer.get("name") or layer["config"]["name"]
    return rename


def _names_by_position(layers) -> dict[str, str]:
    """Without a config: Table 1's order is conv1, (conv_dw_i, conv_pw_i) for i = 1..13, then conv_preds."""
    convs = [keras_name(layer.name) for layer in conv_layers()]
    full = [n for n in convs if "_dw_" not in n] + [HEAD]
    depthwise = [n for n in convs if "_dw_" in n]
    rename = {}
    for prefix, names in (("conv2d", full), ("depthwise_conv2d", depthwise), ("batch_normalization", convs)):
        for k, name in enumerate(names):
            rename[prefix if k == 0 else f"{prefix}_{k}"] = name + ("_bn" if prefix == "batch_normalization" else "")
    return {g: n for g, n in rename.items() if g in layers}


def _resolution(config: dict | None, path: Path) -> int:
    """Input size: the config's input layer, else Keras's file name (``mobilenet_5_0_160_tf.h5``), else 224."""
    for layer in _config_layers(config or {}):
        shape = layer.get("config", {}).get("batch_shape") or layer.get("config", {}).get("batch_input_shape")
        if layer.get("class_name") == "InputLayer" and shape and len(shape) == 4 and shape[1] and shape[1] == shape[2]:
            return int(shape[1])
    m = _RELEASED_NAME.search(path.name)
    return int(m[1]) if m else 224


# keras.applications.MobileNet's padding layers: before the stride-2 depthwise convolutions of blocks 2, 4, 6, 12
KERAS_PADS = {f"conv_pad_{i}" for i in (2, 4, 6, 12)}
POOLS = {"GlobalAveragePooling2D": "avg", "GlobalMaxPooling2D": "max"}


def _options(config: dict | None, where: str) -> tuple[str, float, str]:
    """(activation, BN ε, global pool) from the config; Keras MobileNet's ReLU(6.), ε = 1e-3 and average pooling
    when there is none."""
    eps, acts, pool = set(), set(), "avg"
    for layer in _config_layers(config or {}):
        cls, cfg = layer.get("class_name"), layer.get("config", {})
        name = layer.get("name") or cfg.get("name", "")
        if cls == "ZeroPadding2D" and name not in KERAS_PADS:
            raise ValueError(
                f"{where}: Keras layer {name!r} pads where keras.applications.MobileNet does not (an older Keras's "
                "MobileNet, or another network); only the current keras.applications.MobileNet is supported"
            )
        if cls in POOLS:
            pool = POOLS[cls]
        if cls == "BatchNormalization":
            eps.add(float(cfg.get("epsilon", 1e-3)))
        elif cls == "ReLU":
            acts.add("relu6" if cfg.get("max_value") == 6.0 else "relu" if cfg.get("max_value") is None else "other")
        elif cls == "Activation" and cfg.get("name", "").endswith("_relu"):
            acts.add(str(cfg.get("activation")))
    if len(eps) > 1 or not acts <= {"relu6", "relu"} or len(acts) > 1:
        raise ValueError(
            f"{where}: batch-norm epsilons {sorted(eps)} / activations {sorted(acts)} are not one MobileNet"
        )
    return (acts.pop() if acts else "relu6"), (eps.pop() if eps else 1e-3), pool


def _to_model(weights: dict, config: dict | None, where: str, resolution: int) -> tuple[MobileNetV1, object]:
    if "conv1" not in weights:
        found = ", ".join(sorted(weights)[:5]) or "no weights"
        raise ValueError(f"{where}: not a keras.applications.MobileNet weights file (no layer 'conv1'; found {found})")
    convs = {}
    for layer in conv_layers():
        name = keras_name(layer.name)
        conv, bn = weights.get(name), weights.get(name + "_bn")
        if conv is None or bn is None:
            continue  # assemble() reports every missing layer at once
        # Keras 2 calls the depthwise variable depthwise_kernel, Keras 3 kernel.
        kernel = conv.get("depthwise_kernel", conv.get("kernel"))
        if kernel is None:
            raise ValueError(f"{where}: Keras layer {name} has no kernel")
        weight = depthwise_to_torch(kernel) if layer.op == "depthwise" else hwio_to_torch(kernel)
        if not set(BN_VARS) <= set(bn):
            raise ValueError(f"{where}: Keras layer {name}_bn lacks {sorted(set(BN_VARS) - set(bn))}")
        convs[layer.name] = ConvBN(weight, *(bn[k] for k in BN_VARS))
    head = None
    if HEAD in weights:
        kernel = weights[HEAD]["kernel"]  # (1, 1, C, K): Keras's classifier is a 1×1 conv
        bias = weights[HEAD].get("bias", np.zeros(kernel.shape[-1], np.float32))
        head = (np.ascontiguousarray(kernel.reshape(kernel.shape[-2], kernel.shape[-1]).T), bias)
    activation, eps, pool = _options(config, where)
    model = assemble(convs, head, where=where, activation=activation, padding="keras", bn_eps=eps,
                     resolution=resolution, global_pool=pool)  # fmt: skip
    source = {"format": FORMAT, "file": Path(where).name, "keras_config": config is not None}
    return model, make_info(model, keras_preprocessing(resolution), source)
