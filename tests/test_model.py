"""The module and the cost model cannot disagree; strides, backbone API and bad input."""

import re

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from mobilenet_v1 import MobileNetV1, ModelConfig, cost_of, create_model, list_models
from mobilenet_v1.spec import TABLE_1, DepthSepConv

GRID = [
    # α, resolution, variant, output_stride, classes
    (1.0, 224, "standard", 32, 1000),
    (0.6, 100, "standard", 32, 10),
    (1.3, 225, "standard", 16, 1000),
    (0.25, 128, "shallow", 32, 1000),
    (0.75, 160, "full_conv", 32, 5),
    (0.5, 193, "standard", 8, 1001),
    (0.6, 225, "shallow", 8, 3),
    (1.0, 33, "full_conv", 16, 1000),
]


@pytest.mark.parametrize("alpha,res,variant,os_,classes", GRID)
@pytest.mark.parametrize("padding", ["symmetric", "tf_same", "keras"])
def test_counter_matches_module(alpha, res, variant, os_, classes, padding):
    cfg = ModelConfig(alpha, res, variant, classes, output_stride=os_, padding=padding)
    model = MobileNetV1(config=cfg).eval()
    report = cost_of(cfg)
    shapes = {}
    hooks = [
        m.register_forward_hook(lambda _m, _i, out, name=name: shapes.__setitem__(name, tuple(out.shape[1:])))
        for name, m in model.features.named_children()
    ]
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        out = model(torch.randn(1, 3, res, res))
    for h in hooks:
        h.remove()
    assert out.shape == (1, classes)
    assert counter.get_total_flops() == 2 * report.mult_adds  # FlopCounterMode counts a MAC as 2 FLOPs
    assert report.trainable_params == sum(p.numel() for p in model.parameters() if p.requires_grad)
    for row in report.layers:
        if row.name in shapes:
            h, w, c = row.output_shape
            assert shapes[row.name] == (c, h, w), row.name
    assert set(shapes) == {r.name for r in report.layers if r.op not in ("avgpool", "fc")}


def test_table1_typo_last_depthwise_is_stride_1():
    """Table 1 prints "Conv dw / s2" for the 13th depthwise layer; the map stays 7×7, so it is s1."""
    assert [i for i, row in enumerate(TABLE_1) if row.stride == 2] == [0, 2, 4, 6, 12]
    assert isinstance(TABLE_1[13], DepthSepConv) and TABLE_1[13].stride == 1
    model = MobileNetV1().eval()
    with torch.no_grad():
        assert model.forward_features(torch.randn(1, 3, 224, 224)).shape == (1, 1024, 7, 7)


def test_features_only_strides():
    model = MobileNetV1(features_only=True).eval()
    with torch.no_grad():
        maps = model(torch.randn(1, 3, 224, 224))
    assert [m.shape[-1] for m in maps] == [112, 56, 28, 14, 7]
    assert [m.shape[1] for m in maps] == [64, 128, 256, 512, 1024]
    assert [f["reduction"] for f in model.feature_info] == [2, 4, 8, 16, 32]


@pytest.mark.parametrize("os_,last", [(16, 14), (8, 28)])
def test_output_stride_dilation(os_, last):
    model = MobileNetV1(output_stride=os_, features_only=True, out_indices=(3, 4)).eval()
    with torch.no_grad():
        maps = model(torch.randn(1, 3, 224, 224))
    assert [m.shape[-1] for m in maps] == [last, last]
    dilations = {n: m.conv.dilation[0] for n, m in model.features.named_children()}
    assert dilations["Conv2d_13_depthwise"] == 32 // os_
    assert dilations["Conv2d_13_pointwise"] == 1


def test_width_multiplier_channels_are_int_and_floored():
    model = MobileNetV1(width_multiplier=0.1)
    assert model.features.Conv2d_0.conv.out_channels == 8  # int(0.1·32) = 3 -> min_depth 8
    assert model.features.Conv2d_13_pointwise.conv.out_channels == 102  # int(0.1·1024)
    assert all(isinstance(m.conv.out_channels, int) for m in model.features.children())


def test_tf_same_padding_differs_from_symmetric_only_in_position():
    torch.manual_seed(0)
    a = MobileNetV1(padding="tf_same").eval()
    b = MobileNetV1(padding="symmetric").eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        fa, fb = a.forward_features(x), b.forward_features(x)
    assert fa.shape == fb.shape
    assert (fa - fb).abs().max() > 0.1 * fa.abs().max()  # a one-pixel shift changes every map
    # TF 'SAME' at stride 2 on 224: pad (0, 1) — equals symmetric padding applied to the input shifted by one pixel.
    conv = a.features.Conv2d_0.conv
    ref = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (0, 1, 0, 1)), conv.weight, stride=2)
    assert torch.allclose(conv(x), ref)


def test_module_names_are_tf_slim_end_points():
    names = [n for n, _ in MobileNetV1().features.named_children()]
    assert names[0] == "Conv2d_0"
    assert names[1:3] == ["Conv2d_1_depthwise", "Conv2d_1_pointwise"]
    assert names[-1] == "Conv2d_13_pointwise" and len(names) == 27


def test_registry_has_paper_grid_baselines_and_timms_width():
    names = list_models()
    assert len(names) == 19  # 4 α × 4 resolutions, the two baselines, α = 1.25
    assert create_model("mobilenet_v1_125_224").config.width_multiplier == 1.25
    m = create_model("mobilenet_v1_075_192", num_classes=10)
    assert m.config.width_multiplier == 0.75 and m.config.resolution == 192 and m.num_classes == 10
    assert create_model("mobilenet_v1_shallow_100_224").config.variant == "shallow"


@pytest.mark.parametrize(
    "kwargs,fragment",
    [
        ({"width_multiplier": 0}, "in (0, 8], got 0"),
        ({"width_multiplier": -1.0}, "in (0, 8], got -1.0"),
        ({"width_multiplier": float("nan")}, "in (0, 8], got nan"),
        ({"width_multiplier": True}, "got True"),
        ({"resolution": 31}, "in [32, 4096], got 31"),
        ({"resolution": 10**7}, "in [32, 4096], got 10000000"),
        ({"num_classes": 10**6}, "num_classes must be an integer in [0, 100000]"),
        ({"bn_eps": 0.0}, "bn_eps must be a number in (0, 1], got 0.0"),
        ({"variant": "mobile"}, "standard, full_conv, shallow; got 'mobile'"),
        ({"output_stride": 4}, "8, 16, 32; got 4"),
        ({"activation": "gelu"}, "relu, relu6; got 'gelu'"),
        ({"padding": "same"}, "symmetric, tf_same, keras; got 'same'"),
        ({"global_pool": "sum"}, "avg, max or '' (none); got 'sum'"),
    ],
)
def test_bad_config(kwargs, fragment):
    with pytest.raises(ValueError, match=re.escape(fragment)):
        ModelConfig(**kwargs)


def test_bad_model_name():
    with pytest.raises(ValueError, match="unknown model 'mobilenet_v2'.*mobilenet_v1_100_224"):
        create_model("mobilenet_v2")


def test_wrong_channel_count():
    with pytest.raises(ValueError, match=r"expected input of shape \(N, 3, H, W\), got \(1, 1, 64, 64\)"):
        MobileNetV1()(torch.randn(1, 1, 64, 64))
    assert MobileNetV1(in_chans=1, num_classes=10).eval()(torch.randn(2, 1, 64, 64)).shape == (2, 10)
