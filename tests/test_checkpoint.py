import json

import pytest
import torch

from mobilenet_v1 import create_model, from_pretrained, save_pretrained
from mobilenet_v1.checkpoint import WEIGHTS_NAME
from mobilenet_v1.files import atomic_path


def test_roundtrip_and_features_only(tmp_path):
    m = create_model("mobilenet_v1_025_128", num_classes=10).eval()
    save_pretrained(m, tmp_path)
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        assert torch.equal(m(x), from_pretrained(tmp_path)(x))
        feats = from_pretrained(tmp_path, features_only=True)(x)
    assert feats[-1].shape == (2, 256, 4, 4)
    assert not list(tmp_path.glob(".*tmp"))


def test_truncated_weights_one_line(tmp_path):
    save_pretrained(create_model("mobilenet_v1_025_128", num_classes=10), tmp_path)
    w = tmp_path / WEIGHTS_NAME
    w.write_bytes(w.read_bytes()[:1000])
    with pytest.raises(ValueError, match="model.safetensors: not a readable safetensors file"):
        from_pretrained(tmp_path)


def test_alpha_mismatch_names_file_and_shapes(tmp_path):
    save_pretrained(create_model("mobilenet_v1_025_128", num_classes=10), tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["model"]["width_multiplier"] = 0.5
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    pattern = r"model\.safetensors: \S+ has shape .* \(alpha=0\.5, classes=10\) expects"
    with pytest.raises(ValueError, match=pattern):
        from_pretrained(tmp_path)


def test_atomic_path_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "x.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"partial")
        raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [target]
