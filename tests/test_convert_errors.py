"""Bad input to ``mobilenet-v1 convert``: one clear line on stderr, exit code 2, nothing written."""

from __future__ import annotations

import hashlib
import tarfile

import h5py
import numpy as np
import pytest

from mobilenet_v1 import pretrained as pt
from mobilenet_v1.cli import main
from mobilenet_v1.convert import load_any
from mobilenet_v1.convert.common import conv_layers
from mobilenet_v1.convert.keras_h5 import keras_name
from mobilenet_v1.model import MobileNetV1, ModelConfig
from test_convert_assets import google_graph


def fails(args: list[str], capsys, out) -> str:
    """Run the CLI, expect exit 2 and a single stderr line; return that line."""
    assert main(["convert", *args, "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mobilenet-v1 convert: error: ") and "\n" not in err, err
    assert "Traceback" not in err
    return err


def keras2_h5(path, alpha=0.25):
    """A legacy weights-only Keras HDF5 (as Keras 2 released them), written with h5py from our model."""
    model = MobileNetV1(config=ModelConfig(alpha, 128, activation="relu6", padding="tf_same", bn_eps=1e-3))
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    with h5py.File(path, "w") as f:
        layers = []
        for layer in conv_layers(alpha):
            w, name = state[f"features.{layer.name}.conv.weight"], keras_name(layer.name)
            kernel = w.transpose(2, 3, 0, 1) if layer.op == "depthwise" else w.transpose(2, 3, 1, 0)
            bn = [state[f"features.{layer.name}.bn.{k}"] for k in ("weight", "bias", "running_mean", "running_var")]
            layers += [
                (name, {"kernel": kernel}),
                (name + "_bn", dict(zip(("gamma", "beta", "moving_mean", "moving_variance"), bn))),
            ]
        w = state["classifier.weight"]
        layers.append(("conv_preds", {"kernel": w.T.reshape(1, 1, *w.T.shape), "bias": state["classifier.bias"]}))
        f.attrs["layer_names"] = [n.encode() for n, _ in layers]
        for name, weights in layers:
            g = f.create_group(name)
            g.attrs["weight_names"] = [f"{name}/{k}:0".encode() for k in weights]
            for k, v in weights.items():
                g.create_dataset(f"{name}/{k}:0", data=v)
    return path


def truncate(src, dst, fraction=0.5):
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def test_truncated_pb(tmp_path, capsys):
    bad = truncate(google_graph(), tmp_path / "graph.pb")
    assert "not a readable TensorFlow GraphDef (truncated or corrupt" in fails([str(bad)], capsys, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_truncated_h5(tmp_path, capsys):
    good = keras2_h5(tmp_path / "good.h5")
    assert load_any(good)[0].config.width_multiplier == 0.25  # the untruncated file is fine
    bad = truncate(good, tmp_path / "bad.h5")
    assert "not a readable HDF5 file" in fails([str(bad)], capsys, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_truncated_tarball(tmp_path, capsys):
    tgz = tmp_path / "mobilenet_v1_1.0_224.tgz"
    with tarfile.open(tgz, "w:gz", compresslevel=1) as tar:
        tar.add(google_graph(), arcname="mobilenet_v1_1.0_224_frozen.pb")
    bad = truncate(tgz, tmp_path / "bad.tgz")
    assert "truncated or corrupt" in fails([str(bad)], capsys, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_graph_that_is_not_a_mobilenet(tmp_path, capsys):
    from tensorboard.compat.proto import graph_pb2

    g = graph_pb2.GraphDef()
    g.node.add(name="x", op="Placeholder")
    g.node.add(name="dense/kernel", op="Const")
    g.node.add(name="dense/MatMul", op="MatMul", input=["x", "dense/kernel"])
    path = tmp_path / "dense.pb"
    path.write_bytes(g.SerializeToString())
    assert "not a TF-slim MobilenetV1 graph" in fails([str(path)], capsys, tmp_path / "out")


def test_h5_that_is_not_a_keras_mobilenet(tmp_path, capsys):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [b"dense"]
        g = f.create_group("dense")
        g.attrs["weight_names"] = [b"dense/kernel:0"]
        g.create_dataset("dense/kernel:0", data=np.zeros((4, 2), np.float32))
    assert "not a keras.applications.MobileNet weights file" in fails([str(path)], capsys, tmp_path / "out")


def test_alpha_mismatch_with_the_target(tmp_path, capsys):
    err = fails([str(google_graph()), "--alpha", "0.5"], capsys, tmp_path / "out")
    assert "weights have alpha=1.0 but alpha=0.5 was requested" in err
    assert not (tmp_path / "out").exists()


def test_class_mismatch_with_the_target(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("untouched")
    err = fails([str(keras2_h5(tmp_path / "k.h5")), "--num-classes", "10"], capsys, out)
    assert "1000 classes but num_classes=10 was requested" in err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]  # an existing output directory is left as it was


def test_wrong_sha256_of_a_registered_download(tmp_path, capsys, monkeypatch):
    src = keras2_h5(tmp_path / "mobilenet_2_5_128_tf.h5")
    wrong = hashlib.sha256(b"something else").hexdigest()
    monkeypatch.setitem(
        pt.PRETRAINED, "mobilenet_v1_025_128", {"keras": pt.Weights(src.as_uri(), src.name, wrong, 128)}
    )
    monkeypatch.setenv("MOBILENET_V1_CACHE", str(tmp_path / "cache"))
    assert f"is not the published {wrong}" in fails(["mobilenet_v1_025_128:keras"], capsys, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not any((tmp_path / "cache" / "downloads").iterdir())


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("model.tflite", b"TFL3" * 10, ".tflite is not supported"),
        ("notes.txt", b"hello", "unrecognised format"),
        ("junk.h5", b"\x89HDF\r\n\x1a\n" + b"\0" * 100, "not a readable HDF5 file"),
        ("junk.safetensors", b"\x08\0\0\0\0\0\0\0{}", "not a readable PyTorch state dict"),
    ],
)
def test_unreadable_files(tmp_path, capsys, name, data, message):
    path = tmp_path / name
    path.write_bytes(data)
    assert message in fails([str(path)], capsys, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_source(tmp_path, capsys):
    assert "no such file" in fails([str(tmp_path / "absent.pb")], capsys, tmp_path / "out")
