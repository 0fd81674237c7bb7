"""Export our weights into ``keras.applications.MobileNet(weights=None, alpha=α)`` (Keras 3, any backend).

Keras's MobileNet is fixed: its own padding (``padding='keras'``; TF 'SAME' on even maps), BN ε = 1e-3,
ReLU6, ``int(α·N)`` channels with no minimum depth and average pooling under its classifier. A model that
differs in any of these (e.g. one converted from timm: symmetric padding, ε = 1e-5; or a TF 'SAME' model at a
size that reaches an odd map) would give different outputs in Keras, so exporting it is refused with the
reason rather than silently approximated.

Keras is imported only here. Keras 3 picks its backend at import time and defaults to TensorFlow,
which this project never requires; when nothing chose a backend and TensorFlow is absent we ask for
the torch backend (already installed with this package).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from .. import spec
from ..model import MobileNetV1
from .common import conv_layers
from .keras_h5 import HEAD, keras_name

KERAS_BN_EPS = 1e-3
KERAS_DEFAULT_DROPOUT = 1e-3  # keras.applications.MobileNet(dropout=1e-3)
SUFFIXES = (".keras", ".weights.h5")


def import_keras():
    if "keras" not in sys.modules and "KERAS_BACKEND" not in os.environ:
        backend = "tensorflow"  # Keras's default, unless keras.json chose another
        config = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "keras.json"
        with contextlib.suppress(OSError, ValueError, AttributeError):
            backend = json.loads(config.read_text()).get("backend", backend)
        if importlib.util.find_spec(backend) is None:
            os.environ["KERAS_BACKEND"] = "torch"
    try:
        import keras
    except ImportError as e:
        raise ValueError(f"exporting to Keras needs Keras 3 (pip install keras): {e}") from None
    if int(keras.__version__.split(".")[0]) < 3:
        raise ValueError(f"exporting to Keras needs Keras 3, found {keras.__version__}")
    return keras


def keras_incompatibilities(model: MobileNetV1) -> list[str]:
    """Why Keras's MobileNet cannot reproduce this model (empty when it can)."""
    c = model.config
    problems = []
    if c.variant != "standard":
        problems.append(f"variant {c.variant!r} (Keras has only the standard network)")
    if c.padding == "symmetric":
        problems.append("padding 'symmetric' (Keras pads like TF 'SAME' on even maps: padding='keras')")
    elif c.padding == "tf_same":
        odd = [layer for layer in c.layers() if layer.op == spec.OP_DEPTHWISE and layer.stride == 2
               and any(size % 2 for size in layer.input_hw)]  # fmt: skip
        if odd:
            h, w = odd[0].input_hw
            problems.append(
                f"padding 'tf_same' at resolution {c.resolution}: {odd[0].name} reads a {h}×{w} map, which TF "
                "'SAME' pads (1, 1) and Keras (0, 1) (export at a resolution whose maps are even, e.g. a multiple "
                "of 32, or a model with padding='keras')"
            )
    if c.activation != "relu6":
        problems.append(f"activation {c.activation!r} (Keras uses relu6)")
    if abs(c.bn_eps - KERAS_BN_EPS) > 1e-9:
        problems.append(f"bn_eps {c.bn_eps:g} (Keras uses {KERAS_BN_EPS:g})")
    if c.num_classes and c.global_pool != "avg":
        problems.append(f"global_pool {c.global_pool!r} under a classifier (Keras's top pools by average)")
    if c.output_stride != 32:
        problems.append(f"output_stride {c.output_stride} (Keras has no dilation)")
    ours = [layer.out_channels for layer in model.config.layers() if layer.op in ("conv", "pointwise")]
    theirs = [int(row.out * c.width_multiplier) for row in spec.TABLE_1]
    if ours != theirs:
        problems.append(f"channels {ours} (Keras's int(alpha*N) gives {theirs}: min_depth differs)")
    return problems


def to_keras(model: MobileNetV1, classifier_activation: str | None = "softmax"):
    """A ``keras.applications.MobileNet`` holding exactly our weights.

    ``classifier_activation`` is Keras's own argument: ``"softmax"`` (its default) outputs
    probabilities, ``None`` logits like our model.
    """
    problems = keras_incompatibilities(model)
    if problems:
        raise ValueError("cannot export to keras.applications.MobileNet: " + "; ".join(problems))
    keras = import_keras()
    c = model.config
    kmodel = keras.applications.MobileNet(
        input_shape=(c.resolution, c.resolution, c.in_chans),
        alpha=c.width_multiplier,
        depth_multiplier=1,  # Keras's depthwise channel multiplier, not TF-slim's depth_multiplier (= α)
        dropout=c.dropout or KERAS_DEFAULT_DROPOUT,
        include_top=c.num_classes > 0,
        pooling=None if c.num_classes else c.global_pool,  # without a top our model pools as it was configured
        weights=None,
        classes=c.num_classes or 1000,
        classifier_activation=classifier_activation,
    )
    state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    for layer in conv_layers(c.width_multiplier, c.min_depth):
        w = state[f"features.{layer.name}.conv.weight"]
        # PyTorch (out, in, kh, kw) → Keras (kh, kw, in, out); depthwise (C, 1, kh, kw) → (kh, kw, C, 1)
        kernel = np.transpose(w, (2, 3, 0, 1)) if layer.op == "depthwise" else np.transpose(w, (2, 3, 1, 0))
        kmodel.get_layer(keras_name(layer.name)).set_weights([kernel])
        bn = [state[f"features.{layer.name}.bn.{k}"] for k in ("weight", "bias", "running_mean", "running_var")]
        kmodel.get_layer(keras_name(layer.name) + "_bn").set_weights(bn)
    if c.num_classes:
        w, b = state["classifier.weight"], state["classifier.bias"]
        kmodel.get_layer(HEAD).set_weights([w.T.reshape(1, 1, *w.T.shape), b])
    return kmodel


def export_keras(model: MobileNetV1, path: str | os.PathLike, classifier_activation: str | None = "softmax") -> Path:
    """Write the Keras model (``.keras``) or its weights (``.weights.h5``), atomically."""
    path = Path(path)
    suffix = next((s for s in SUFFIXES if path.name.endswith(s)), None)
    if suffix is None:
        raise ValueError(f"{path}: a Keras export must end in {' or '.join(SUFFIXES)}")
    kmodel = to_keras(model, classifier_activation)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Keras insists on the suffix, so the temporary file keeps it; rename over the target when complete.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        if suffix == ".keras":
            kmodel.save(tmp)
        else:
            kmodel.save_weights(tmp, overwrite=True)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's file is private (0600); give the export the usual mode
        os.replace(tmp, path)
    except OSError as e:  # Keras's writers do not always say which file
        raise OSError(e.errno, e.strerror or str(e), str(path)) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
