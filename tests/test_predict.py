"""predict: every common image kind decodes; a bad file is reported by name and the rest still run."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from mobilenet_v1 import create_model, save_pretrained
from mobilenet_v1.checkpoint import Preprocessing, Pretrained
from mobilenet_v1.cli import main
from mobilenet_v1.predict import predict
from mobilenet_v1.preprocess import load_image

NAMES = [f"class_{i}" for i in range(7)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    model = create_model("mobilenet_v1_025_128", num_classes=7).eval()
    save_pretrained(model, d, Pretrained(model.config, Preprocessing(input_size=64, resize=72), NAMES))
    return d


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """One real photo (skimage's chelsea) saved in every format and mode predict must read."""
    from skimage import data

    d = tmp_path_factory.mktemp("images")
    rgb = Image.fromarray(data.chelsea())
    paths = {}
    for name, (im, fmt) in {
        "cat.jpg": (rgb, "JPEG"),
        "cat.png": (rgb, "PNG"),
        "cat.webp": (rgb, "WEBP"),
        "gray.png": (rgb.convert("L"), "PNG"),
        "rgba.png": (rgb.convert("RGBA"), "PNG"),
        "cmyk.jpg": (rgb.convert("CMYK"), "JPEG"),
        "palette.gif": (rgb.quantize(256), "GIF"),
        "deep16.png": (Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.uint16) * 257), "PNG"),
    }.items():
        im.save(d / name, fmt)
        paths[name] = d / name
    (d / "broken.jpg").write_bytes((d / "cat.jpg").read_bytes()[:200])
    (d / "notes.txt.png").write_text("not an image")
    return d, paths


def test_every_format_decodes(images):
    _, paths = images
    reference = np.asarray(load_image(paths["cat.png"]), dtype=np.float64)
    for name, path in paths.items():
        im = load_image(path)
        assert im.mode == "RGB" and im.size == (451, 300), name
        if name in ("cat.jpg", "cmyk.jpg", "cat.webp", "palette.gif"):  # lossy: close to the PNG
            assert np.abs(np.asarray(im, dtype=np.float64) - reference).mean() < 12, name
    deep = np.asarray(load_image(paths["deep16.png"], grayscale=True))
    gray = np.asarray(load_image(paths["gray.png"], grayscale=True))
    assert np.array_equal(deep, gray)  # 16-bit scaled down, not clipped at 255


def test_predict_reports_bad_files_and_keeps_going(model_dir, images):
    d, paths = images
    files = [paths["cat.jpg"], d / "broken.jpg", paths["rgba.png"], d / "missing.png", d / "notes.txt.png"]
    results = predict(model_dir, [str(p) for p in files], topk=3)
    assert [r.error is None for r in results] == [True, False, True, False, False]
    assert "broken.jpg: not a readable image" in results[1].error
    assert "missing.png: no such file" in results[3].error
    ok = results[0]
    assert len(ok.classes) == 3 and set(ok.classes) <= set(NAMES)
    assert abs(sum(ok.probabilities) - 1) < 1 and ok.probabilities == sorted(ok.probabilities, reverse=True)


def test_predict_cli_exit_code_and_json(model_dir, images, capsys):
    d, paths = images
    assert main(["predict", str(model_dir), *map(str, paths.values()), "--json", "--topk", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(paths)
    first = json.loads(lines[0])
    assert first["path"].endswith("cat.jpg") and len(first["top"]) == 2
    assert main(["predict", str(model_dir), str(paths["cat.jpg"]), str(d / "broken.jpg")]) == 1
    captured = capsys.readouterr()
    assert "cat.jpg:" in captured.out
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "broken.jpg: not a readable image" in err[0]


def test_predict_missing_model_dir(tmp_path, capsys):
    assert main(["predict", str(tmp_path / "nope"), "x.jpg"]) == 2
    assert "nope: no such file" in capsys.readouterr().err
