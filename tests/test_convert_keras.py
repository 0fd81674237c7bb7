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
from mobilenet_v1.convert.adapt import adapt  # noqa: E402
from mobilenet_v1.convert.common import conv_layers  # noqa: E402
from mobilenet_v1.convert.keras_h5 import keras_name  # noqa: E402
from mobilenet_v1.cost import cost_of  # noqa: E402
from mobilenet_v1.model import MobileNetV1, ModelConfig  # noqa: E402
from parity import assert_close, draw_sizes, reaches_odd_map  # noqa: E402

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


def keras_model(alpha: float, size: int, include_top: bool = True, pooling: str | None = None):
    key = (alpha, size, include_top, pooling)
    if key not in _BUILT:
        km = keras.applications.MobileNet(
            input_shape=(size, size, 3), alpha=alpha, weights=None, include_top=include_top, pooling=pooling,
            classifier_activation=None,
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


HEADS = (("top", None), ("no top", None), ("no top", "avg"), ("no top", "max"))  # Keras's include_top / pooling
CONTAINERS = (".weights.h5", ".keras", ".h5")


def keras_grid(n: int = 14, seed: int = 23) -> list[tuple[float, int, str, str | None, str]]:
    """(α, size, top, pooling, container) cases: α uniform in [0.1, 1.5], sizes in [32, 320] with at least four
    reaching odd maps, every head and container cycled through in a seeded random order."""
    rng = np.random.default_rng(seed)
    sizes = draw_sizes(n, seed, odd_maps=4)
    alphas = np.round(rng.uniform(0.1, 1.5, n), 2)
    heads = [HEADS[i] for i in rng.permutation(n) % len(HEADS)]
    containers = [CONTAINERS[i] for i in rng.permutation(n) % len(CONTAINERS)]
    return [(float(a), s, *h, c) for a, s, h, c in zip(alphas, sizes, heads, containers)]


GRID = keras_grid()


def test_the_keras_grid_covers_what_it_claims():
    assert len(GRID) >= 12
    assert sum(reaches_odd_map(size, "keras") for _, size, *_ in GRID) >= 4
    assert {(top, pool) for _, _, top, pool, _ in GRID} == set(HEADS)
    assert min(a for a, *_ in GRID) < 0.25 and max(a for a, *_ in GRID) > 1.0  # below min_depth, above 1


@pytest.mark.parametrize(("alpha", "size", "top", "pooling", "container"), GRID)
def test_keras_weights_match_keras_outputs(tmp_path, alpha, size, top, pooling, container):
    km = keras_model(alpha, size, include_top=top == "top", pooling=pooling)
    path = tmp_path / f"m{container}"
    km.save_weights(path) if container == ".weights.h5" else km.save(path)
    model, info = load_any(path, resolution=size)
    if container == ".weights.h5":  # a weights file has no config to say how Keras pooled: the caller says it
        model = adapt(model, info, str(path), global_pool=pooling)
    x = images(size)
    expected = keras_out(km, x)
    assert expected.std() > 0.1  # outputs far from zero: a mapping error cannot hide in a dead network
    got = ours_out(model, x, features=top != "top" and pooling is None)
    print(f"alpha={alpha} size={size} {top} pooling={pooling} {container}: max |Δ| vs Keras "
          f"{assert_close(got, expected):.2e}")  # fmt: skip
    c = model.config
    assert (c.width_multiplier, c.resolution, c.num_classes) == (alpha, size, 1000 if top == "top" else 0)
    assert (c.activation, c.padding, c.bn_eps) == ("relu6", "keras", 1e-3)
    assert c.global_pool == (pooling or "avg")
    # Keras has no minimum depth: where int(α·32) < 8 the stem has fewer than TF-slim's 8 channels
    assert c.min_depth == (1 if int(32 * alpha) < 8 else 8)
    # the cost model (and so `summary`) gives every layer the output shape Keras gives it
    shapes = {r.name: r.output_shape for r in cost_of(c).layers}
    for layer in conv_layers(alpha, c.min_depth):
        assert tuple(km.get_layer(keras_name(layer.name)).output.shape[1:]) == shapes[layer.name], layer.name


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
        assert_close(ours_out(model, x, features=True), keras_out(km, x))


def random_ours(alpha=0.5, res=160, classes=1001, padding="keras", global_pool="avg") -> MobileNetV1:
    cfg = ModelConfig(alpha, res, num_classes=classes, activation="relu6", padding=padding, bn_eps=1e-3,
                      global_pool=global_pool)  # fmt: skip
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


@pytest.mark.parametrize(("alpha", "size", "classes", "pool"), [
    (float(a), size, classes, pool) for a, size, classes, pool in
    zip(np.round(np.random.default_rng(5).uniform(0.1, 1.5, 3), 2), draw_sizes(3, 5, odd_maps=3), (10, 0, 0),
        ("avg", "avg", "max"))
])  # fmt: skip
def test_exported_keras_model_computes_what_ours_does(alpha, size, classes, pool):
    model = random_ours(alpha=alpha, res=size, classes=classes, global_pool=pool)
    km = to_keras(model, classifier_activation=None)
    assert km.name == f"mobilenet_{alpha:0.2f}_{size}"
    x = images(size)
    assert_close(keras_out(km, x), ours_out(model, x))


def test_tf_same_model_exports_where_keras_pads_alike_and_is_refused_where_it_does_not(tmp_path):
    """At 160 every map is even and Keras's padding is TF 'SAME': the export computes what ours does, and comes
    back as padding='keras' (what the Keras file computes at any size). At 150 the 75×75 map is padded
    differently: refused with one line naming the layer, nothing written."""
    model = random_ours(0.5, 160, padding="tf_same")
    path = export_keras(model, tmp_path / "even.keras")
    back, _ = load_any(path)
    assert back.config.padding == "keras"
    assert {**back.config.to_dict(), "padding": "tf_same"} == model.config.to_dict()
    x = images(160)
    assert np.array_equal(ours_out(back, x), ours_out(model, x))
    odd = random_ours(0.5, 150, padding="tf_same")
    with pytest.raises(ValueError, match="padding 'tf_same' at resolution 150: Conv2d_2_depthwise reads a 75×75 map"):
        export_keras(odd, tmp_path / "odd.keras")
    assert [p.name for p in tmp_path.iterdir()] == ["even.keras"]


def test_export_refuses_a_model_keras_cannot_reproduce(tmp_path):
    timm_like = MobileNetV1(config=ModelConfig(activation="relu6", padding="symmetric", bn_eps=1e-5))
    with pytest.raises(ValueError, match="padding 'symmetric'.*bn_eps 1e-05"):
        export_keras(timm_like, tmp_path / "x.keras")
    max_pooled_head = random_ours(global_pool="max")
    with pytest.raises(ValueError, match="global_pool 'max' under a classifier"):
        export_keras(max_pooled_head, tmp_path / "x.keras")
    assert not any(tmp_path.iterdir())


def test_converted_keras_directory_keeps_its_padding_in_summary_and_onnx(tmp_path, capsys):
    """Keras's padding travels in config.json: ``summary DIR`` gives Keras's map sizes and the ONNX export
    computes what Keras computes, at a size (150) whose maps are odd."""
    import json

    import onnxruntime as ort

    from mobilenet_v1.cli import main

    km = keras_model(0.6, 150)
    km.save(tmp_path / "m.keras")
    assert main(["convert", str(tmp_path / "m.keras"), "-o", str(tmp_path / "ours")]) == 0
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["model"]["padding"] == "keras"
    capsys.readouterr()
    assert main(["summary", str(tmp_path / "ours"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    shapes = {layer["name"]: tuple(layer["output_shape"]) for layer in report["layers"]}
    for layer in conv_layers(0.6):
        assert tuple(km.get_layer(keras_name(layer.name)).output.shape[1:]) == shapes[layer.name], layer.name
    assert main(["export", str(tmp_path / "ours"), "--format", "onnx", "-o", str(tmp_path / "m.onnx")]) == 0
    x = images(150)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": np.ascontiguousarray(x.transpose(0, 3, 1, 2))})[0]
    assert_close(got, keras_out(km, x))
