"""The paper's cost tables, at their printed precision, recomputed from the spec."""

import pytest

from mobilenet_v1.cost import model_cost, reduction_factor, single_layer_cost
from mobilenet_v1.paper import paper_report

M = 1e6


def test_exact_integers_alpha1_224():
    r = model_cost()
    assert r.mult_adds == 568_740_352
    assert r.params == 4_209_088
    assert r.trainable_params == 4_231_976
    body = model_cost(num_classes=0)  # TF-slim's body, without Logits
    assert body.params == 3_185_088
    assert body.mult_adds == 567_716_352


@pytest.mark.parametrize(
    "kind,channels,size,ma,params",
    [
        ("full", 512, 14, 462, 2.36),
        ("separable", 512, 14, 52.3, 0.27),
        ("separable", 384, 14, 29.6, 0.15),
        ("separable", 384, 10, 15.1, 0.15),
    ],
)
def test_table3_single_layer(kind, channels, size, ma, params):
    c = single_layer_cost(kind, channels, channels, size)
    decimals = 0 if ma >= 100 else 1
    assert round(c.mult_adds / M, decimals) == ma
    assert round(c.params / M, 2) == params


def test_table3_rho_0714_is_resolution_160():
    # ρ = 0.714 in Table 3 is the 14×14 map at 160/224 of the resolution: 14·160/224 = 10.
    r = model_cost(resolution=160)
    assert [lay.output_shape[0] for lay in r.layers if lay.name == "Conv2d_7_pointwise"] == [10]


def test_eq5_reduction_8_to_9_times():
    full = single_layer_cost("full", 512, 512, 14).mult_adds
    sep = single_layer_cost("separable", 512, 512, 14).mult_adds
    assert sep / full == pytest.approx(reduction_factor(512, 3), rel=1e-12)
    assert 8 < full / sep < 9
    network = model_cost(variant="full_conv").mult_adds / model_cost().mult_adds
    assert 8 < network < 9


@pytest.mark.parametrize("alpha,ma,params", [(1.0, 569, 4.2), (0.75, 325, 2.6), (0.5, 149, 1.3), (0.25, 41, 0.5)])
def test_table6_width_multiplier(alpha, ma, params):
    r = model_cost(width_multiplier=alpha)
    assert round(r.mult_adds / M) == ma
    assert round(r.params / M, 1) == params


@pytest.mark.parametrize("res,ma", [(224, 569), (192, 418), (128, 186)])
def test_table7_resolution(res, ma):
    r = model_cost(resolution=res)
    assert round(r.mult_adds / M) == ma
    assert r.params == 4_209_088  # ρ changes no parameter


def test_table7_160_is_printed_without_fc():
    """Paper inconsistency: 290M at 160 is 290.7M with the FC layer (as every other row counts it),
    289.7M -> 290 without. The same holds for Table 4's 4866M and Table 9's 76M."""
    assert round(model_cost(resolution=160).mult_adds / M, 1) == 290.7
    assert round(model_cost(resolution=160, num_classes=0).mult_adds / M) == 290
    assert round(model_cost(variant="full_conv").mult_adds / M, 1) == 4867.3
    assert round(model_cost(variant="full_conv", num_classes=0).mult_adds / M) == 4866
    assert round(model_cost(width_multiplier=0.5, resolution=160).mult_adds / M) == 77
    assert round(model_cost(width_multiplier=0.5, resolution=160, num_classes=0).mult_adds / M) == 76


def test_table4_full_conv():
    assert round(model_cost(variant="full_conv").params / M, 1) == 29.3


def test_table5_shallow():
    r = model_cost(variant="shallow")
    assert round(r.mult_adds / M) == 307
    assert round(r.params / M, 1) == 2.9
    narrow = model_cost(width_multiplier=0.75)
    assert (round(narrow.mult_adds / M), round(narrow.params / M, 1)) == (325, 2.6)


def test_table9_params():
    assert round(model_cost(width_multiplier=0.5, resolution=160).params / M, 2) == 1.32


def test_table2_shares():
    shares = model_cost().shares
    printed = {
        "Conv 1x1": (94.86, 74.59),
        "Conv DW 3x3": (3.06, 1.06),
        "Conv 3x3": (1.91, 0.02),
        "Fully Connected": (0.18, 24.33),
    }
    for label, (ma, p) in printed.items():
        assert round(shares[label]["mult_adds"], 2) == ma, label
        assert round(shares[label]["params"], 2) == p, label


def test_table2_typo_119_percent():
    """Table 2 prints 1.19% Mult-Adds for the 3×3 conv; with it the column sums to 99.29%, with 1.91 to 100.01."""
    assert round(model_cost().shares["Conv 3x3"]["mult_adds"], 2) == 1.91
    assert round(94.86 + 3.06 + 1.19 + 0.18, 2) != 100.0
    assert round(94.86 + 3.06 + 1.91 + 0.18) == 100


def test_paper_report_has_no_unexplained_mismatch():
    rows = paper_report().rows
    assert {r.table for r in rows} == {"2", "3", "4", "5", "6", "7", "8", "9"}
    assert not [r for r in rows if r.verdict == "MISMATCH"]
    inconsistent = {(r.table, r.row) for r in rows if r.verdict == "paper inconsistent"}
    assert inconsistent == {
        ("2", "Conv 3x3"),
        ("4", "Conv MobileNet"),
        ("7", "1.0 MobileNet-160"),
        ("9", "0.50 MobileNet-160"),
    }
