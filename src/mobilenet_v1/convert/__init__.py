"""Weights in and out: TensorFlow frozen graphs, Keras and timm → our model, and our model → Keras.

    from mobilenet_v1.convert import load_any, convert, export_keras

    model, info = load_any("mobilenet_v1_1.0_224.tgz")          # or .pb, .h5, .keras, .safetensors, .pth
    convert("mobilenet_1_0_224_tf.h5", "out/")                   # config.json + model.safetensors
    export_keras(model, "mobilenet.keras")                       # keras.applications.MobileNet

Readers need no TensorFlow and no Keras: GraphDefs are parsed with the protobuf schema shipped in
``tensorboard``, HDF5 with ``h5py``. Only :func:`export_keras` imports Keras (3, any backend).
"""

from .adapt import adapt
from .formats import FORMATS, detect_format, load_any
from .output import ConvertResult, convert


def export_keras(model, path, classifier_activation="softmax"):
    """Write ``model`` as ``keras.applications.MobileNet`` (``.keras``) or its weights (``.weights.h5``)."""
    from .keras_export import export_keras as _export

    return _export(model, path, classifier_activation)


def to_keras(model, classifier_activation="softmax"):
    """A live ``keras.applications.MobileNet`` with ``model``'s weights."""
    from .keras_export import to_keras as _to_keras

    return _to_keras(model, classifier_activation)


__all__ = ["FORMATS", "ConvertResult", "adapt", "convert", "detect_format", "export_keras", "load_any", "to_keras"]
