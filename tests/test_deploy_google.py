"""int8 on Google's real ImageNet MobileNet-V1 (converted from the frozen TF-slim graph the weights issue uses).

The per-tensor collapse that Krishnamoorthi 2018 reports (0.1% top-1) happens on the real weights, not a
constructed example: BN folding leaves depthwise filters whose scales differ by orders of magnitude.
Evaluated against fp32 top-1 on two fixed sets of real photographs: ``samples.photo_views`` (100 views of
the 10 photos bundled with scikit-image, scikit-learn and matplotlib: textures, micrographs and a galaxy
field among them, so many near-ties) and ``samples.gcompris_photos`` (219 photos of animals and everyday
objects from Debian's gcompris-qt-data, fetched with apt-get: closer to ImageNet). Calibrated on 300 random
crops of the 10 bundled photos (``photo_crops``, seed 0): none of the 219 is seen.

Slow (converts, exports five int8 variants, evaluates both sets): CI runs it (MOBILENET_V1_SLOW=1).
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
from mobilenet_v1.deploy.samples import gcompris_photos, photo_crops, photo_views
from test_convert_assets import google_graph

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def google(tmp_path_factory):
    """Top-1 agreement (%) with fp32 of: per-tensor int8, per-channel int8, per-channel + bias correction,
    the default export (+ optimal depthwise rounding), and that with uint8 weights (ONNX Runtime's u8×u8
    kernels: full 8-bit weights on any x86 CPU); on the views (plain keys) and on the gcompris photos."""
    work = tmp_path_factory.mktemp("google")
    convert(google_graph(), work / "model")
    model = from_pretrained(work / "model")
    pre, offset = model.pretrained.preprocessing, model.pretrained.label_offset
    sets = {"views": photo_views(256), "gcompris": gcompris_photos()}
    calibration = photo_crops(300, 256, seed=0)

    def logits(run, images):
        return np.concatenate([run(b) for b in batches(images, pre, 50)])[:, offset:]

    with torch.inference_mode():
        fp32 = {k: logits(lambda b: model(torch.from_numpy(b)).numpy(), v) for k, v in sets.items()}
    confident = torch.softmax(torch.from_numpy(fp32["gcompris"]), 1).max(1).values.numpy() >= 0.5
    agreement = {}
    for name, per_channel, corrected, weight_type, optimal in (
        ("per-tensor", False, False, "int8", False), ("per-channel", True, False, "int8", False),
        ("per-channel + bias correction", True, True, "int8", False),
        ("default", True, True, "int8", True),  # + optimal depthwise rounding (deploy/rounding.py)
        ("uint8 weights", True, True, "uint8", True),
    ):  # fmt: skip
        path = work / f"{name}.onnx"
        export_int8(model, path, calibration, per_channel=per_channel, bias_correction=corrected,
                    weight_type=weight_type, optimal_rounding=optimal)  # fmt: skip
        session = ort_session(path)
        for key, images in sets.items():
            same = logits(lambda b, s=session: s.run(None, {"input": b})[0], images).argmax(1) == fp32[key].argmax(1)
            agreement[name if key == "views" else f"{name}, gcompris"] = 100.0 * float(same.mean())
            if key == "gcompris":
                agreement[f"{name}, gcompris, fp32 p >= 0.5"] = 100.0 * float(same[confident].mean())
    return agreement


def test_per_tensor_int8_collapses_on_googles_weights(google):
    assert google["per-tensor"] <= 20.0, google  # measured 7%
    assert google["per-tensor, gcompris"] <= 20.0, google  # measured 0.5% (Zen 3)


def test_on_imagenet_like_photos_int8_keeps_the_confident_predictions(google):
    # Measured on the Zen 3 (7-bit int8 weights), 219 photos: per-channel 75.8%, + bias correction 90.9%,
    # + optimal depthwise rounding (the default) 94.5%, uint8 weights 95.4% (bf16 rounding alone, autocast:
    # 94.5%); where fp32 is confident (p >= 0.5, 159 photos) 98.7%, 99.4%, 100%. Every miss is a photo whose
    # fp32 top-1 is in int8's top 5 (benchmarks/int8_accuracy.py --data gcompris).
    corrected, default = google["per-channel + bias correction, gcompris"], google["default, gcompris"]
    assert corrected >= 88.0 and default >= 92.0 and google["uint8 weights, gcompris"] >= 92.0, google
    assert corrected >= google["per-channel, gcompris"] + 8.0, google
    assert default >= corrected + 2.0, google  # what optimal rounding of 13 depthwise layers adds
    for name in ("per-channel + bias correction", "default", "uint8 weights"):
        assert google[f"{name}, gcompris, fp32 p >= 0.5"] >= 97.0, google


def test_int8_agreement_reaches_the_issues_95_percent_on_imagenet_like_photos(google):
    # issue 5: >= 95% top-1 agreement with fp32 "on a fixed set of real photos (say which)": the 219
    # gcompris photos. Measured on the Zen 3: uint8 weights 95.4% (209/219), 7-bit int8 94.5% (207/219).
    assert max(google["default, gcompris"], google["uint8 weights, gcompris"]) >= 95.0, google


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


def test_int8_agreement_reaches_95_percent_on_the_bundled_photo_views_too(google):
    # The 100 near-tie-heavy views (bf16 alone: 90% on the Zen 5): 85-91% before optimal depthwise rounding
    # (sessions 3-6), >= 95% with it (session 7, Zen 3; BENCHMARKS.md).
    assert max(google["default"], google["uint8 weights"]) >= 95.0, google
