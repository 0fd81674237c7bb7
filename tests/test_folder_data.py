"""ImageFolder trees: a real-image dataset (Fashion-MNIST saved as PNG files), corrupt files, bad layouts."""

import json

import pytest
from PIL import Image

from mobilenet_v1.cli import main
from mobilenet_v1.rundir import read_metrics

CLASSES = {0: "tshirt", 1: "trouser", 7: "sneaker"}


@pytest.fixture
def tree(tmp_path, fashion_mnist_test):
    images, labels = fashion_mnist_test
    root = tmp_path / "data"
    counts = {}
    for i in range(600):
        name = CLASSES.get(int(labels[i]))
        if name is None:
            continue
        split = "val" if i % 4 == 0 else "train"
        d = root / split / name
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(d / f"{i}.png")
        counts[split] = counts.get(split, 0) + 1
    (root / "train" / "sneaker" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return root, counts


def _train(out, data, *extra):
    return main(
        [
            "train",
            "--out",
            str(out),
            "--dataset",
            "folder",
            "--data",
            str(data),
            "--alpha",
            "0.25",
            "--resolution",
            "32",
            "--epochs",
            "1",
            "--batch-size",
            "16",
            "--workers",
            "0",
            "--quiet",
            "--json",
            *extra,
        ]
    )


def test_corrupt_image_is_skipped_and_counted(tree, tmp_path, capsys):
    root, counts = tree
    assert _train(tmp_path / "run", root) == 0
    out, err = capsys.readouterr()
    warned = [line for line in err.splitlines() if "warning:" in line]  # one line, naming the file
    assert len(warned) == 1 and "skipping" in warned[0] and "corrupt.png: not a readable image" in warned[0]
    result = json.loads(out)
    assert result["final"]["samples"] == counts["val"]
    assert int(read_metrics(tmp_path / "run")[0]["skipped"]) == 1
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["class_names"] == sorted(CLASSES.values())


def test_no_class_folders(tmp_path, capsys):
    (tmp_path / "data" / "train").mkdir(parents=True)
    (tmp_path / "data" / "train" / "loose.png").write_bytes(b"")
    assert _train(tmp_path / "run", tmp_path / "data") == 2
    err = capsys.readouterr().err
    assert "train: no class folders" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_empty_split(tree, tmp_path, capsys):
    root, _ = tree
    for f in (root / "val").rglob("*.png"):
        f.unlink()
    assert _train(tmp_path / "run", root) == 2
    err = capsys.readouterr().err
    assert "val: empty split" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_missing_split(tree, tmp_path, capsys):
    root, _ = tree
    assert _train(tmp_path / "run", root / "train") == 2
    assert "no such directory" in capsys.readouterr().err


def test_eval_class_count_mismatch(tree, tmp_path, capsys):
    root, _ = tree
    assert _train(tmp_path / "run", root) == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run"), "--subset", "50"]) == 2  # Fashion-MNIST has 10 classes
    err = capsys.readouterr().err
    assert "model has 3 classes but the fashion-mnist val split has 10" in err
