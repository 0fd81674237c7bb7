"""TensorFlow frozen graphs → our model, checked against TensorFlow's own outputs.

Reference: tests/data/tf_reference.npz, TensorFlow 2.21 (CPU, Eigen kernels) running Google's real
MobileNet_v1_1.0_224 graph on six photos (tools/make_tf_reference.py). Graphs with fused batch norm,
other α and 1000 classes are written here from a random model (no TensorFlow needed to write them).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mobilenet_v1.checkpoint import TF_MEAN
from mobilenet_v1.convert import load_any
from mobilenet_v1.convert.common import conv_layers
from mobilenet_v1.convert.tf_graph import read_tf_graph
from mobilenet_v1.imagenet import imagenet_classes, label_of
from mobilenet_v1.model import MobileNetV1, ModelConfig
from mobilenet_v1.tf_resize import tf1_resize_bilinear, tf_graph_input
from parity import assert_close, draw_sizes
from test_convert_assets import google_graph, google_sdist, reference

LOGITS_TOL = 1e-4  # the bound on max |Δ logits| vs TensorFlow (logits up to ~20 here: parity.py's bound is 2e-4)
SIZES_REFERENCE = Path(__file__).parent / "data" / "tf_reference_sizes.npz"


@pytest.fixture(scope="module")
def google():
    model, info = load_any(google_graph())
    return model, info


def nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def test_google_graph_logits_match_tensorflow(google):
    model, _ = google
    ref = reference()
    with torch.no_grad():
        feats = model.forward_features(nchw(ref["input"]))
        logits = model.forward_head(feats).numpy()
        stem = model.features.Conv2d_0(nchw(ref["input"][:1])).permute(0, 2, 3, 1).numpy()
    d_logits = np.abs(logits - ref["logits"]).max()
    d_pooled = np.abs(feats.mean((2, 3)).numpy() - ref["pooled"]).max()
    d_last = np.abs(feats[:1].permute(0, 2, 3, 1).numpy() - ref["act0_conv2d_13_pointwise"]).max()
    d_stem = np.abs(stem[..., :8] - ref["act0_conv2d_0"]).max()
    print(f"max |Δ| vs TF: logits {d_logits:.2e}, pooled {d_pooled:.2e}, last conv {d_last:.2e}, stem {d_stem:.2e}")
    assert d_stem <= 1e-5  # the first layer alone: padding, layout and BN are right
    assert d_last <= LOGITS_TOL
    assert d_logits <= LOGITS_TOL
    np.testing.assert_array_equal(np.argsort(-logits, axis=1, kind="stable")[:, :5], ref["top5"])


@pytest.mark.parametrize("size", [200, 213])
def test_google_graph_matches_tensorflow_at_sizes_that_reach_odd_maps(google, size):
    """TensorFlow ran the same graph at 200 px (a 25×25 map) and 213 px (an odd input;
    tools/make_tf_sizes_reference.py): 'SAME' padding must be right on odd maps, not only at 224."""
    model, _ = google
    with np.load(SIZES_REFERENCE) as z:
        ref = {k.split("_", 1)[1]: z[k] for k in z.files if k.startswith(f"s{size}_")}
    x = nchw((ref["input_u8"].astype(np.float32) - 128) / 128)
    with torch.no_grad():
        stem = model.features.Conv2d_0(x).permute(0, 2, 3, 1).numpy()[..., :8]
        feats = model.forward_features(x)
        logits = model.forward_head(feats).numpy()
    assert np.abs(stem - ref["stem"]).max() <= 1e-5  # the first layer alone: its padding is right
    # after 27 layers float32 sums in another order differ by up to ~7e-5 on this 0..6 map (6.5e-5 at 224 too)
    assert np.abs(feats.permute(0, 2, 3, 1).numpy() - ref["features"]).max() <= LOGITS_TOL
    d = assert_close(logits, ref["logits"], "logits")
    print(f"{size} px: max |Δ logits| vs TF {d:.2e}")
    assert logits.argmax() == ref["logits"].argmax()


def test_google_graph_predicts_imagenet_classes(google):
    model, info = google
    ref = reference()
    names = list(ref["image_names"])
    with torch.no_grad():
        top1 = model(nchw(ref["input"])).argmax(1).tolist()
    labels = {name: label_of(i, info.class_names, info.label_offset) for name, i in zip(names, top1)}
    assert labels["chelsea"] == "Egyptian cat"
    assert labels["coffee"] == "espresso"


def test_end_to_end_from_photos_matches_tensorflow(google):
    """skimage's photos through our TF1 resize and the converted graph ≡ TensorFlow's whole pipeline."""
    import skimage.data as skimage_data  # a dev dependency (real photos)

    model, info = google
    ref = reference()
    for i, name in enumerate(ref["image_names"][:2]):
        x = tf_graph_input(getattr(skimage_data, str(name))())
        with torch.no_grad():
            logits = model(x)[0].numpy()
        assert np.abs(logits - ref["e2e_logits"][i]).max() <= LOGITS_TOL
        assert label_of(int(logits.argmax()), info.class_names, info.label_offset) in ("Egyptian cat", "espresso")


def test_tf1_resize_is_tensorflows():
    ref = reference()
    out = tf1_resize_bilinear(ref["resize_src"], 224, 224)
    assert np.abs(out - ref["resize_out"]).max() <= 1e-4


def test_google_graph_records_what_it_inferred(google):
    model, info = google
    c = model.config
    assert (c.width_multiplier, c.resolution, c.num_classes) == (1.0, 224, 1001)
    assert (c.activation, c.padding, c.bn_eps) == ("relu6", "tf_same", 1e-3)
    assert info.label_offset == 1 and info.class_names == imagenet_classes()
    assert info.preprocessing.mean == TF_MEAN and info.preprocessing.input_size == 224
    # the retrained 2-class head on top is reported, not converted
    assert info.source["dropped"] == [
        "final_training_ops/biases/final_biases 2",
        "final_training_ops/weights/final_weights 1001x2",
    ]


def test_tarball_with_one_graph_converts_like_the_graph(google):
    model, _ = load_any(google_sdist())
    for (k, a), b in zip(model.state_dict().items(), google[0].state_dict().values()):
        assert torch.equal(a, b), k


# --- graphs written from a random model: fused batch norm, other α, 1000 classes, bad structure ---


def random_model(alpha: float, num_classes: int, resolution: int) -> MobileNetV1:
    cfg = ModelConfig(alpha, resolution, num_classes=num_classes, activation="relu6", padding="tf_same", bn_eps=1e-3)
    model = MobileNetV1(config=cfg).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0, 0.1, generator=g)
                m.running_mean.normal_(0, 0.1, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)
    return model


def slim_graph(model: MobileNetV1, fused=True, scale=True, padding=b"SAME", stride_of=None) -> bytes:
    """A frozen TF-slim MobilenetV1 GraphDef holding ``model``'s weights (the nodes a converter reads)."""
    from tensorboard.compat.proto import graph_pb2

    g = graph_pb2.GraphDef()
    state = {k: v.numpy() for k, v in model.state_dict().items()}

    def node(name, op, inputs=(), **attrs):
        n = g.node.add(name=name, op=op, input=list(inputs))
        for key, value in attrs.items():
            if isinstance(value, list):
                n.attr[key].list.i.extend(value)
            elif isinstance(value, bytes):
                n.attr[key].s = value
            elif isinstance(value, float):
                n.attr[key].f = value
        return name

    def const(name, array):
        n = g.node.add(name=name, op="Const")
        n.attr["dtype"].type = 1
        t = n.attr["value"].tensor
        t.dtype = 1
        for s in array.shape:
            t.tensor_shape.dim.add(size=s)
        t.tensor_content = np.ascontiguousarray(array, dtype="<f4").tobytes()
        return node(name + "/read", "Identity", [name])

    res = model.config.resolution
    x = g.node.add(name="input", op="Placeholder")
    for s in (1, res, res, 3):
        x.attr["shape"].shape.dim.add(size=s)
    x = "input"
    for layer in conv_layers(model.config.width_multiplier):
        scope, ops = f"MobilenetV1/{layer.name}", f"MobilenetV1/MobilenetV1/{layer.name}"
        w = state[f"features.{layer.name}.conv.weight"]
        stride = (stride_of or {}).get(layer.name, layer.stride)
        conv = dict(strides=[1, stride, stride, 1], padding=padding, data_format=b"NHWC")
        if layer.op == "depthwise":
            kernel = const(f"{scope}/depthwise_weights", w.transpose(2, 3, 0, 1))
            x = node(f"{ops}/depthwise", "DepthwiseConv2dNative", [x, kernel], **conv)
        else:
            kernel = const(f"{scope}/weights", w.transpose(2, 3, 1, 0))
            x = node(f"{ops}/convolution", "Conv2D", [x, kernel], **conv)
        bn = {k: state[f"features.{layer.name}.bn.{t}"] for k, t in (("gamma", "weight"), ("beta", "bias"))}
        bn |= {"moving_mean": state[f"features.{layer.name}.bn.running_mean"]}
        bn |= {"moving_variance": state[f"features.{layer.name}.bn.running_var"]}
        reads = [const(f"{scope}/BatchNorm/{k}", v) for k, v in bn.items() if scale or k != "gamma"]
        if fused:
            x = node(f"{ops}/BatchNorm/FusedBatchNormV3", "FusedBatchNormV3", [x, *reads], epsilon=1e-3)
        else:
            const(f"{ops}/BatchNorm/batchnorm/add/y", np.array(1e-3, np.float32))
            x = node(f"{ops}/BatchNorm/batchnorm/add_1", "Add", [x, reads[0]])
        x = node(f"{ops}/Relu6", "Relu6", [x])
    if model.config.num_classes:
        w, b = state["classifier.weight"], state["classifier.bias"]
        kernel = const("MobilenetV1/Logits/Conv2d_1c_1x1/weights", w.T.reshape(1, 1, *w.T.shape))
        const("MobilenetV1/Logits/Conv2d_1c_1x1/biases", b)
        node("MobilenetV1/Logits/Conv2d_1c_1x1/convolution", "Conv2D", [x, kernel], strides=[1, 1, 1, 1])
    return g.SerializeToString()


def _written_cases(seed: int = 2017):
    """α in [0.1, 1.5] and input sizes from a seeded grid (odd maps included), each head and BN form once."""
    rng = np.random.default_rng(seed)
    forms = [(1000, True, True), (1001, False, True), (0, True, False)]
    return [(float(a), classes, size, fused, scale) for a, size, (classes, fused, scale) in
            zip(np.round(rng.uniform(0.1, 1.5, 3), 2), draw_sizes(3, seed, odd_maps=2), forms)]  # fmt: skip


@pytest.mark.parametrize(("alpha", "classes", "res", "fused", "scale"), _written_cases())
def test_written_graph_round_trips_exactly(alpha, classes, res, fused, scale):
    model = random_model(alpha, classes, res)
    if not scale:  # batch norm without gamma (scale=False): TF-slim then multiplies by nothing
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.weight.fill_(1.0)
    back, info = read_tf_graph(slim_graph(model, fused=fused, scale=scale), "written.pb")
    c = back.config
    assert (c.width_multiplier, c.num_classes, c.resolution, c.bn_eps) == (alpha, classes, res, 1e-3)
    assert info.label_offset == (1 if classes == 1001 else 0)
    for (k, a), b in zip(model.state_dict().items(), back.state_dict().values()):
        assert torch.equal(a, b), k


def test_valid_padding_graph_is_refused():
    with pytest.raises(ValueError, match="'VALID' padding"):
        read_tf_graph(slim_graph(random_model(0.25, 0, 128), padding=b"VALID"), "valid.pb")


def test_wrong_strides_graph_is_refused():
    model = random_model(0.25, 0, 128)
    with pytest.raises(ValueError, match="Conv2d_13_depthwise has strides \\[2, 2\\]"):
        read_tf_graph(slim_graph(model, stride_of={"Conv2d_13_depthwise": 2}), "strides.pb")
