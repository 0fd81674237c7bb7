"""Keras ``keras.applications.MobileNet`` ⇄ our model, checked against Keras itself (Keras 3, torch backend).

Every Keras model gets random weights *and* random BN statistics (so a swapped mean/variance or a
transposed kernel cannot hide behind BN's identity initialisation), and is built once per module.
"""

from __future__ import annotations

import os

os.environ["KERAS_BACKEND"] = "torch"  # before Keras is imported: the tests use its torch backend

import h5py  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from mobilenet_v1.convert import export_keras, load_any, to_keras  # noqa: E402
from mobilenet_v1.model import MobileNetV1, ModelConfig  # noqa: E402

TOL = 1e-5  # the bound on max |Δ| vs Keras
# Keras's own variables trip NumPy 2's __array__(copy=...) deprecation thousands of times: not ours
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")
_BUILT: dict[tuple, object] = {}


def randomize(kmodel, seed: int = 0):
    """He-scaled kernels, BN γ/β/mean/var all random, a head scaled to O(1) logits."""
    rng = np.random.default_rng(seed)
    for layer in kmodel.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        kind = type(layer).__name__
        if kind == "BatchNormalization":
            c = weights[0].shape[0]
            new = [rng.uniform(0.5, 1.5, c), rng.normal(0, 0.2, c), rng.normal(0, 0.2, c), rng.uniform(0.5, 2.0, c)]
        else:
            kernel = weights[0]
            fan_in = 9 if kind == "DepthwiseConv2D" else int(np.prod(kernel.shape[:-1]))
            new = [rng.normal(0, np.sqrt(2.0 / fan_in), kernel.shape)] + [
                rng.normal(0, 0.1, w.shape) for w in weights[1:]
            ]
        layer.set_weights([w.astype(np.float32) for w in new])
    return kmodel


def keras_model(alpha: float, size: int, include_top: bool = True):
    key = (alpha, size, include_top)
    if key not in _BUILT:
        km = keras.applications.MobileNet(
            input_shape=(size, size, 3), alpha=alpha, weights=None, include_top=include_top, classifier_activation=None
        )
        _BUILT[key] = randomize(km, seed=len(_BUILT))
    return _BUILT[key]


def images(size: int, n: int = 2) -> np.ndarray:
    return np.random.default_rng(size).uniform(-1, 1, (n, size, size, 3)).astype(np.float32)


def keras_out(km, x: np.ndarray) -> np.ndarray:
    return keras.ops.convert_to_numpy(km(x, training=False))


def ours_out(model: MobileNetV1, x: np.ndarray, features: bool = False) -> np.ndarray:
    t = torch.from_numpy(x).permute(0, 3, 1, 2)
    with torch.no_grad():
        y = model.forward_features(t).permute(0, 2, 3, 1) if features else model(t)
    return y.numpy()


GRID = [(a, s) for a in (0.25, 0.5, 0.75, 1.0) for s in (128, 160, 224)]


@pytest.mark.parametrize(("alpha", "size"), [*GRID, (0.35, 96), (0.2, 96)])
def test_keras_weights_match_keras_outputs(tmp_path, alpha, size):
    km = keras_model(alpha, size)
    path = tmp_path / "m.weights.h5"
    km.save_weights(path)
    model, info = load_any(path, resolution=size)
    x = images(size)
    expected = keras_out(km, x)
    assert expected.std() > 0.1  # logits far from zero: a mapping error cannot hide in a dead network
    diff = np.abs(ours_out(model, x) - expected).max()
    print(f"alpha={alpha} size={size}: max |Δ logits| vs Keras {diff:.2e}")
    assert diff <= TOL
    c = model.config
    assert (c.width_multiplier, c.resolution, c.num_classes) == (alpha, size, 1000)
    assert (c.activation, c.padding, c.bn_eps) == ("relu6", "tf_same", 1e-3)
    # Keras has no minimum depth: below α = 0.25 the stem has fewer than TF-slim's 8 channels
    assert c.min_depth == (1 if alpha == 0.2 else 8)


def test_every_keras_container_gives_the_same_weights(tmp_path):
    km = keras_model(0.5, 160)
    km.save_weights(tmp_path / "m.weights.h5")
    km.save(tmp_path / "m.keras")
    km.save(tmp_path / "m.h5")  # legacy HDF5 (model_weights group + config)
    keras2_style_h5(km, tmp_path / "mobilenet_5_0_160_tf.h5")  # like Keras's released files
    base, _ = load_any(tmp_path / "m.weights.h5", resolution=160)
    for name in ("m.keras", "m.h5", "mobilenet_5_0_160_tf.h5"):
        model, info = load_any(tmp_path / name)  # resolution from the config or Keras's file name
        assert model.config.resolution == 160, name
        for (k, a), b in zip(base.state_dict().items(), model.state_dict().values()):
            assert torch.equal(a, b), (name, k)


def keras2_style_h5(km, path):
    """A weights-only HDF5 as Keras 2 wrote it: ``layer_names``, ``weight_names`` with ``:0``,
    ``depthwise_kernel`` for depthwise layers."""
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [layer.name.encode() for layer in km.layers]
        for layer in km.layers:
            g = f.create_group(layer.name)
            names = []
            for w in layer.weights:
                leaf = "depthwise_kernel" if type(layer).__name__ == "DepthwiseConv2D" else w.name.split("/")[-1]
                names.append(f"{layer.name}/{leaf}:0")
                g.create_dataset(names[-1], data=keras.ops.convert_to_numpy(w))
            g.attrs["weight_names"] = [n.encode() for n in names]


def test_keras_without_top_matches_keras_features(tmp_path):
    km = keras_model(0.75, 128, include_top=False)
    km.save(tmp_path / "notop.keras")
    km.save_weights(tmp_path / "notop.weights.h5")  # no config: layers mapped by position
    x = images(128)
    for name in ("notop.keras", "notop.weights.h5"):
        model, _ = load_any(tmp_path / name, resolution=128)
        assert model.config.num_classes == 0
        assert np.abs(ours_out(model, x, features=True) - keras_out(km, x)).max() <= TOL


def random_ours(alpha=0.5, res=160, classes=1001) -> MobileNetV1:
    cfg = ModelConfig(alpha, res, num_classes=classes, activation="relu6", padding="tf_same", bn_eps=1e-3)
    model = MobileNetV1(config=cfg).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0, 0.2, generator=g)
                m.running_mean.normal_(0, 0.2, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
            elif isinstance(m, torch.nn.Linear):
                m.weight.normal_(0, 0.05, generator=g)
                m.bias.normal_(0, 0.1, generator=g)
    return model


@pytest.mark.parametrize("suffix", [".keras", ".weights.h5"])
def test_ours_to_keras_to_ours_is_exact(tmp_path, suffix):
    model = random_ours()
    path = export_keras(model, tmp_path / f"exported{suffix}")
    back, info = load_any(path, resolution=160)
    assert back.config.to_dict() == model.config.to_dict()
    assert info.label_offset == 1  # 1001 classes read back as Google's layout
    for (k, a), b in zip(model.state_dict().items(), back.state_dict().values()):
        assert torch.equal(a, b), k


def test_exported_keras_model_computes_what_ours_does():
    model = random_ours(alpha=0.25, res=128, classes=10)
    km = to_keras(model, classifier_activation=None)
    assert km.name == "mobilenet_0.25_128"
    x = images(128)
    assert np.abs(keras_out(km, x) - ours_out(model, x)).max() <= TOL


def test_export_refuses_a_model_keras_cannot_reproduce(tmp_path):
    timm_like = MobileNetV1(config=ModelConfig(activation="relu6", padding="symmetric", bn_eps=1e-5))
    with pytest.raises(ValueError, match="padding 'symmetric'.*bn_eps 1e-05"):
        export_keras(timm_like, tmp_path / "x.keras")
    assert not any(tmp_path.iterdir())
