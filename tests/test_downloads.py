"""Downloads are verified: against the SHA-256 pinned in the registry, else the one recorded at the first
download (trust on first use); plain http:// is refused; a cached file with no hash to check is refused; a
failed or mismatching download leaves nothing behind. Offline: ``urllib.request.urlopen`` is replaced by a
function serving bytes (or failing), so no test touches the network."""

from __future__ import annotations

import hashlib
import io
import re
import urllib.error
import urllib.request

import pytest

from mobilenet_v1 import create_model
from mobilenet_v1 import pretrained as pt

URL = "https://example.invalid/releases/weights.h5"
DATA = b"\x89HDF\r\n\x1a\n some released weights"
SHA = hashlib.sha256(DATA).hexdigest()


def serve(monkeypatch, data: bytes = DATA) -> list[str]:
    """Make urlopen serve ``data``; the URLs asked for are appended to the returned list."""
    asked: list[str] = []

    def urlopen(url, *args, **kwargs):
        asked.append(url)
        return io.BytesIO(data)

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return asked


def offline(monkeypatch) -> None:
    def urlopen(url, *args, **kwargs):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)


def one_line(e: pytest.ExceptionInfo) -> str:
    message = str(e.value)
    assert "\n" not in message
    return message


def listing(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.fixture
def downloads(tmp_path):
    return tmp_path / "downloads"


def test_registry_pins_are_sha256_with_their_source():
    pinned = [(f"{name}:{tag}", w) for name, sources in pt.PRETRAINED.items() for tag, w in sources.items() if w.sha256]
    assert len(pinned) == 6  # four TF-slim tarballs (Open Model Zoo) and timm's two files
    for label, weights in pinned:
        assert re.fullmatch(r"[0-9a-f]{64}", weights.sha256), label
        assert weights.sha256_from, f"{label}: a pinned SHA-256 says where it was published"
    for name, sources in pt.PRETRAINED.items():
        for tag, weights in sources.items():
            assert weights.url.startswith("https://"), f"{name}:{tag}"
            if not weights.sha256:
                assert not weights.sha256_from, f"{name}:{tag}"
    for width in ("100", "125"):  # pinned to the Hub revision whose file has that SHA-256, not to a moving branch
        timm = pt.PRETRAINED[f"mobilenet_v1_{width}_224"]["timm"]
        assert re.search(r"/resolve/[0-9a-f]{40}/model\.safetensors$", timm.url) and timm.sha256


def test_plain_http_is_refused_before_any_request(monkeypatch, downloads, tmp_path):
    asked = serve(monkeypatch)
    with pytest.raises(ValueError) as e:
        pt.fetch("http://example.invalid/weights.h5", downloads / "weights.h5", SHA)
    assert "http://example.invalid/weights.h5" in one_line(e) and "use an https:// URL or a local path" in str(e.value)
    with pytest.raises(ValueError, match="plain http:// downloads are refused"):
        pt.resolve("mobilenet_v1_100_224", "HTTP://example.invalid/weights.h5")
    # a registered source with an http:// URL is refused the same way, and nothing lands in the cache
    entry = pt.Weights("http://example.invalid/weights.h5", "weights.h5", None, 224)
    monkeypatch.setitem(pt.PRETRAINED, "mobilenet_v1_100_224", {"keras": entry})
    monkeypatch.setenv("MOBILENET_V1_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="plain http:// downloads are refused"):
        create_model("mobilenet_v1_100_224", pretrained=True)
    with pytest.raises(ValueError, match="not an https:// or file:// URL"):
        pt.fetch("ftp://example.invalid/weights.h5", downloads / "weights.h5")
    assert asked == [] and listing(downloads) == [] and not (tmp_path / "cache").exists()


def test_pinned_hash_mismatch_is_refused_and_nothing_is_kept(monkeypatch, downloads):
    serve(monkeypatch, DATA + b" tampered")
    with pytest.raises(ValueError) as e:
        pt.fetch(URL, downloads / "weights.h5", SHA)
    assert f"{URL}: SHA-256" in one_line(e) and f"is not the published {SHA}; download discarded" in str(e.value)
    assert listing(downloads) == []  # no file, no record, no temporary


def test_failed_download_leaves_nothing(monkeypatch, downloads):
    class Broken(io.BytesIO):
        def read(self, *args):
            raise ConnectionResetError("connection reset by peer")

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, *a, **k: Broken(DATA))
    for sha in (SHA, None):
        with pytest.raises(OSError, match="could not download .*connection reset by peer"):
            pt.fetch(URL, downloads / "weights.h5", sha)
        assert listing(downloads) == []


def test_first_download_is_recorded_then_a_changed_cached_file_is_refused(monkeypatch, downloads):
    asked = serve(monkeypatch)
    dest = downloads / "weights.h5"
    assert pt.fetch(URL, dest) == dest and dest.read_bytes() == DATA
    record = pt.record_path(dest)
    assert record.name == "weights.h5.sha256" and record.read_text() == f"{SHA}  weights.h5\n"  # sha256sum format
    assert listing(downloads) == ["weights.h5", "weights.h5.sha256"]

    offline(monkeypatch)  # later uses: checked against the record, no network
    assert pt.fetch(URL, dest) == dest

    dest.write_bytes(DATA.replace(b"released", b"poisoned"))
    with pytest.raises(ValueError) as e:
        pt.fetch(URL, dest)
    message = one_line(e)
    assert message.startswith(f"{dest}: SHA-256 ") and f"is not the {SHA} recorded when it was downloaded" in message
    assert "delete it and weights.h5.sha256 to download it again" in message

    # doing what the message says fetches a fresh copy and records it again
    dest.unlink()
    record.unlink()
    serve(monkeypatch)
    assert pt.fetch(URL, dest).read_bytes() == DATA and record.read_text().split()[0] == SHA
    assert asked == [URL]


def test_cached_file_without_any_hash_is_refused(monkeypatch, downloads):
    asked = serve(monkeypatch)
    downloads.mkdir()
    dest = downloads / "weights.h5"
    dest.write_bytes(DATA)  # put there by hand, or by a version that recorded nothing
    for record in (None, b"not a digest\n", b"\xff\xfe"):  # none, or one that holds no SHA-256
        if record is not None:
            pt.record_path(dest).write_bytes(record)
        with pytest.raises(ValueError) as e:
            pt.fetch(URL, dest)
        message = one_line(e)
        assert message.startswith(f"{dest}: no SHA-256 to check this cached file against")
        assert "delete the file to download it again" in message and "pass its path as the pretrained source" in message
    assert asked == [] and dest.read_bytes() == DATA  # refused, not replaced behind the user's back


def test_cached_file_with_pinned_hash_is_used_without_network(monkeypatch, downloads):
    offline(monkeypatch)
    downloads.mkdir()
    dest = downloads / "weights.h5"
    dest.write_bytes(DATA)  # no record needed: the pinned hash decides
    assert pt.fetch(URL, dest, SHA) == dest
    dest.write_bytes(DATA + b"!")
    with pytest.raises(ValueError) as e:
        pt.fetch(URL, dest, SHA)
    assert f"{dest}: SHA-256" in one_line(e) and f"is not the published {SHA}; delete the file" in str(e.value)


def test_registered_source_without_published_hash(monkeypatch, tmp_path):
    """Through the registry: a Keras-like entry with no published hash is downloaded once, recorded, re-checked."""
    entry = pt.Weights(URL, "mobilenet_2_5_128_tf.h5", None, 128)
    monkeypatch.setitem(pt.PRETRAINED, "mobilenet_v1_025_128", {"keras": entry})
    asked = serve(monkeypatch)
    cache = tmp_path / "cache"
    path = pt.fetch_source("mobilenet_v1_025_128", "keras", cache)
    assert path == cache / "downloads" / entry.filename and pt.record_path(path).read_text().split()[0] == SHA
    offline(monkeypatch)
    assert pt.fetch_source("mobilenet_v1_025_128", "keras", cache) == path
    assert asked == [URL]

    # offline with nothing cached: the message names the URL and asks for a path, not a copy in the cache
    path.unlink()
    pt.record_path(path).unlink()
    with pytest.raises(OSError) as e:
        pt.fetch_source("mobilenet_v1_025_128", "keras", cache)
    message = one_line(e)
    assert URL in message and "pass the file's path as the pretrained source" in message
    assert str(path) not in message and listing(cache / "downloads") == []


def test_user_https_url_is_recorded_too(monkeypatch, tmp_path):
    serve(monkeypatch)
    cache = tmp_path / "cache"
    path = pt.fetch_source("mobilenet_v1_100_224", "https://example.invalid/mine/model.safetensors", cache)
    assert path == cache / "downloads" / "model.safetensors" and pt.record_path(path).is_file()
    local = tmp_path / "local.safetensors"  # the user's own files are used as they are
    local.write_bytes(DATA)
    assert pt.fetch_source("mobilenet_v1_100_224", str(local), cache) == local
    assert pt.fetch_source("mobilenet_v1_100_224", local.as_uri(), cache) == local
