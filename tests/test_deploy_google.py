"""int8 on Google's real ImageNet MobileNet-V1 (converted from the frozen TF-slim graph the weights issue uses).

The per-tensor collapse that Krishnamoorthi 2018 reports (0.1% top-1) happens on the real weights, not a
constructed example: BN folding leaves depthwise filters whose scales differ by orders of magnitude.
Evaluated on a fixed set of real photographs (``samples.photo_views``: 100 views of the 10 photos
bundled with scikit-image, scikit-learn and matplotlib), against fp32 top-1; calibrated on 300 random
crops of the same photos (``photo_crops``, seed 0).

Slow (converts, calibrates twice, evaluates): CI runs it (MOBILENET_V1_SLOW=1).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mobilenet_v1.checkpoint import from_pretrained
from mobilenet_v1.convert import convert
from mobilenet_v1.deploy.calibration import batches
from mobilenet_v1.deploy.onnx_export import ort_session
from mobilenet_v1.deploy.quantize import default_reduce_range, export_int8
from mobilenet_v1.deploy.samples import photo_crops, photo_views
from test_convert_assets import google_graph

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def google(tmp_path_factory):
    """Top-1 agreement (%) with fp32 of: per-tensor int8, per-channel int8, per-channel + bias correction,
    and the last with uint8 weights (ONNX Runtime's u8×u8 kernels: full 8-bit weights on any x86 CPU)."""
    work = tmp_path_factory.mktemp("google")
    convert(google_graph(), work / "model")
    model = from_pretrained(work / "model")
    pre, offset = model.pretrained.preprocessing, model.pretrained.label_offset
    views, calibration = photo_views(256), photo_crops(300, 256, seed=0)
    with torch.inference_mode():
        fp32 = np.concatenate([model(torch.from_numpy(b)).numpy() for b in batches(views, pre, 50)])[:, offset:]
    agreement = {}
    for name, per_channel, corrected, weight_type in (
        ("per-tensor", False, False, "int8"), ("per-channel", True, False, "int8"),
        ("per-channel + bias correction", True, True, "int8"), ("uint8 weights", True, True, "uint8"),
    ):  # fmt: skip
        path = work / f"{name}.onnx"
        export_int8(model, path, calibration, per_channel=per_channel, bias_correction=corrected,
                    weight_type=weight_type)  # fmt: skip
        session = ort_session(path)
        int8 = np.concatenate([session.run(None, {"input": b})[0] for b in batches(views, pre, 50)])[:, offset:]
        agreement[name] = 100.0 * float((int8.argmax(1) == fp32.argmax(1)).mean())
    return agreement


def test_per_tensor_int8_collapses_on_googles_weights(google):
    assert google["per-tensor"] <= 20.0, google  # measured 7%


def test_bias_correction_recovers_what_per_channel_rounding_loses(google):
    # measured: per-channel 66%, + bias correction 91% (bf16 rounding alone: 90% on this near-tie-heavy set)
    assert google["per-channel"] >= 50.0, google
    assert google["per-channel + bias correction"] >= 85.0, google
    assert google["per-channel + bias correction"] >= google["per-channel"] + 10.0, google


def test_uint8_weights_are_as_good_as_int8_ones(google):
    # uint8 weights are never reduced to 7 bits; int8 ones are on CPUs without VNNI. Measured on the Zen 3
    # (AVX2): 90% against 85% for 7-bit int8; with VNNI both are full 8-bit (int8: 91% on the Zen 5).
    assert google["uint8 weights"] >= 85.0, google
    if default_reduce_range():
        assert google["uint8 weights"] >= google["per-channel + bias correction"], google


@pytest.mark.xfail(
    strict=True,
    reason="issue 5 asks >= 95%; post-training int8 measures 91% (Zen 5), 85% / 90% with uint8 weights (Zen 3)",
)
def test_int8_agreement_reaches_the_issues_95_percent(google):
    assert max(google["per-channel + bias correction"], google["uint8 weights"]) >= 95.0, google
