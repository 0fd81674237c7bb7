import json

import pytest

from mobilenet_v1.cli import main


def test_summary_json(capsys):
    assert main(["summary", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["mult_adds"] == 568_740_352 and d["params"] == 4_209_088 and d["trainable_params"] == 4_231_976
    first = d["layers"][0]
    assert {k: first[k] for k in ("name", "op", "stride")} == {"name": "Conv2d_0", "op": "conv", "stride": 2}
    assert first["output_shape"] == [112, 112, 32]
    assert sum(layer["mult_adds"] for layer in d["layers"]) == d["mult_adds"]
    assert sum(layer["params"] for layer in d["layers"]) == d["params"]


def test_summary_text(capsys):
    assert main(["summary", "--alpha", "0.5", "--resolution", "160"]) == 0
    out = capsys.readouterr().out
    assert "Total Mult-Adds: 76,524,800" in out and "Conv2d_13_pointwise" in out


@pytest.mark.parametrize(
    "argv,fragment",
    [
        (["summary", "--alpha", "0"], "alpha) must be a number in (0, 8], got 0"),
        (["summary", "--resolution", "16"], "resolution must be an integer in [32, 4096], got 16"),
        (["summary", "--variant", "tiny"], "variant must be one of"),
    ],
)
def test_bad_input_exit_2_no_traceback(argv, fragment, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_paper_command(capsys):
    assert main(["paper"]) == 0
    out = capsys.readouterr().out
    assert "typo for 1.91%" in out and "MISMATCH" not in out
    assert main(["paper", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert len(rows) > 30


def test_python_dash_m(tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "mobilenet_v1", "summary", "--json"], capture_output=True, text=True)
    assert r.returncode == 0 and json.loads(r.stdout)["mult_adds"] == 568_740_352
