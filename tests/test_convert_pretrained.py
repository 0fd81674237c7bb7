"""The pretrained registry: download once, verify SHA-256, convert, cache, load — exercised through
``file://`` URLs and local paths (the tests never touch the network)."""

from __future__ import annotations

import hashlib
import shutil
import tarfile
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch

from mobilenet_v1 import create_model
from mobilenet_v1 import pretrained as pt
from mobilenet_v1.cli import main
from test_convert_assets import google_graph, reference


def test_registry_lists_the_released_weights():
    names = [f"mobilenet_v1_{w}_{r}" for w in ("100", "075", "050", "025") for r in (224, 192, 160, 128)]
    for name in names:
        assert {"tf", "keras", "keras_no_top"} <= set(pt.PRETRAINED[name]), name
        assert next(iter(pt.PRETRAINED[name])) == "tf"  # pretrained=True: Google's original release
    tf = pt.PRETRAINED["mobilenet_v1_075_192"]["tf"]
    assert tf.url.endswith("mobilenet_v1_2018_08_02/mobilenet_v1_0.75_192.tgz") and tf.resolution == 192
    assert pt.PRETRAINED["mobilenet_v1_025_128"]["keras"].url.endswith("/mobilenet_2_5_128_tf.h5")
    assert pt.PRETRAINED["mobilenet_v1_125_224"]["timm"].filename == "mobilenetv1_125.ra4_e3600_r224_in1k.safetensors"
    published = {n for n, s in pt.PRETRAINED.items() if s.get("tf") and s["tf"].sha256}
    assert published == {"mobilenet_v1_100_224", "mobilenet_v1_050_224", "mobilenet_v1_050_160", "mobilenet_v1_025_128"}
    assert all(s["tf"].sha256_from == pt.OMZ for n, s in pt.PRETRAINED.items() if n in published)
    assert not any(s[k].sha256 for s in pt.PRETRAINED.values() for k in ("keras", "keras_no_top") if k in s)
    timm = {n: s["timm"] for n, s in pt.PRETRAINED.items() if "timm" in s}
    assert set(timm) == {"mobilenet_v1_100_224", "mobilenet_v1_125_224"}
    assert all(w.sha256 and w.sha256_from == pt.TIMM_FROM for w in timm.values())
    assert "mobilenet_v1_100_224:timm" in pt.list_pretrained()


@pytest.fixture
def release(tmp_path, monkeypatch):
    """A TF-slim-style release tarball of Google's graph, registered under a file:// URL."""
    tgz = tmp_path / "src" / "mobilenet_v1_1.0_224.tgz"
    tgz.parent.mkdir()
    with tarfile.open(tgz, "w:gz", compresslevel=1) as tar:
        tar.add(google_graph(), arcname="./mobilenet_v1_1.0_224_frozen.pb")
    sha = hashlib.sha256(tgz.read_bytes()).hexdigest()
    entry = pt.Weights(tgz.as_uri(), tgz.name, sha, 224)
    monkeypatch.setitem(pt.PRETRAINED, "mobilenet_v1_100_224", {"tf": entry})
    cache = tmp_path / "cache"
    monkeypatch.setenv("MOBILENET_V1_CACHE", str(cache))
    return tgz, cache, entry


def logits_of(model, x=None):
    ref = reference()
    x = torch.from_numpy(ref["input"][:2]).permute(0, 3, 1, 2) if x is None else x
    with torch.no_grad():
        return model(x).numpy()


def test_create_model_pretrained_downloads_verifies_converts_once(release):
    tgz, cache, entry = release
    model = create_model("mobilenet_v1_100_224", pretrained=True)
    assert np.abs(logits_of(model) - reference()["logits"][:2]).max() <= 1e-4
    assert (cache / "downloads" / tgz.name).is_file()
    converted = cache / "converted" / "mobilenet_v1_100_224.tf"
    info = model.pretrained
    assert info.source["url"] == entry.url and info.source["sha256"] == entry.sha256
    assert (converted / "config.json").is_file() and info.label_offset == 1
    tgz.unlink()  # second time: straight from the cache, no download, no conversion
    again = create_model("mobilenet_v1_100_224", pretrained=True)
    assert torch.equal(again.classifier.weight, model.classifier.weight)


def test_num_classes_1000_drops_the_background_logit(release):
    model = create_model("mobilenet_v1_100_224", pretrained=True, num_classes=1000)
    assert model.num_classes == 1000 and model.pretrained.label_offset == 0
    np.testing.assert_allclose(logits_of(model), reference()["logits"][:2, 1:], atol=1e-4, rtol=0)


def test_backbone_and_resolution_overrides(release):
    backbone = create_model("mobilenet_v1_100_224", pretrained=True, features_only=True, resolution=160)
    maps = backbone(torch.zeros(1, 3, 160, 160))
    assert [m.shape[1] for m in maps] == [64, 128, 256, 512, 1024]
    assert backbone.pretrained.preprocessing.input_size == 160


def test_wrong_sha256_is_refused_and_nothing_is_kept(release, monkeypatch):
    tgz, cache, entry = release
    bad = pt.Weights(entry.url, entry.filename, "0" * 64, 224)
    monkeypatch.setitem(pt.PRETRAINED, "mobilenet_v1_100_224", {"tf": bad})
    with pytest.raises(ValueError, match="SHA-256 .* is not the published 0000") as e:
        create_model("mobilenet_v1_100_224", pretrained=True)
    assert "\n" not in str(e.value)
    assert not any((cache / "downloads").iterdir())
    assert not (cache / "converted").exists()


def test_offline_failure_says_what_to_download_and_where(release, monkeypatch):
    tgz, cache, entry = release

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(OSError) as e:
        create_model("mobilenet_v1_100_224", pretrained=True)
    message = str(e.value)
    assert entry.url in message and str(cache / "downloads" / tgz.name) in message and "\n" not in message
    # doing what the message says makes it work offline
    (cache / "downloads").mkdir(parents=True)
    shutil.copy(tgz, cache / "downloads" / tgz.name)
    assert create_model("mobilenet_v1_100_224", pretrained=True).num_classes == 1001


def test_local_path_and_file_url_sources(release):
    tgz, _, _ = release
    for source in (str(google_graph()), google_graph().as_uri()):
        model = create_model("mobilenet_v1_100_224", pretrained=source)
        assert np.abs(logits_of(model) - reference()["logits"][:2]).max() <= 1e-4


def test_alpha_of_the_name_must_match_the_weights(release):
    with pytest.raises(ValueError, match="weights have alpha=1.0 but alpha=0.5 was requested"):
        create_model("mobilenet_v1_050_224", pretrained=str(google_graph()))


def test_class_mismatch_names_the_way_to_a_new_head(release):
    with pytest.raises(ValueError, match=r"1001 classes but num_classes=10 .*reset_classifier\(10\)"):
        create_model("mobilenet_v1_100_224", pretrained=True, num_classes=10)


def test_unknown_source_lists_the_known_ones():
    with pytest.raises(ValueError, match="sources: tf, keras, keras_no_top"):
        create_model("mobilenet_v1_050_160", pretrained="caffe")


def test_cli_converts_a_registered_name(release, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["convert", "mobilenet_v1_100_224:tf", "-o", str(out)]) == 0
    assert "alpha=1, 224px, 1001 classes" in capsys.readouterr().out
    assert (out / "model.safetensors").is_file()
