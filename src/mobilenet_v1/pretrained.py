"""Released MobileNet-V1 weights by name: download once, verify, convert, cache, load.

    model = create_model("mobilenet_v1_100_224", pretrained=True)          # Google's TF-slim release
    model = create_model("mobilenet_v1_050_160", pretrained="keras")       # Keras's .h5 of the same
    model = create_model("mobilenet_v1_100_224", pretrained="/data/mobilenet_v1_1.0_224.tgz")  # a local copy

Sources per model name (``pretrained=True`` takes the first): ``tf`` — the TF-slim 2018_08_02 float
tarballs (frozen graph inside; 1001 classes, logit 0 = background), ``keras`` / ``keras_no_top`` —
the Keras applications ``.h5`` files (the same weights, 1000 classes), ``timm`` — timm's own training
(``mobilenetv1_100``, ``mobilenetv1_125``). Any local path or ``file://``/``https://`` URL works too;
plain ``http://`` is refused (use https or a local path).

Every download is verified: against the SHA-256 pinned in the registry where one was published for
that file (``sha256_from`` says where), else trust on first use — the first download's SHA-256 is
recorded beside it (``<file>.sha256``) and every later use of the cached file is checked against it.
A cached file with neither (put there by hand, or by an older version) is refused with how to fetch it
again; a failed or mismatching download leaves nothing behind.

Files land in :func:`cache_dir` (``$MOBILENET_V1_CACHE``, else ``$XDG_CACHE_HOME/mobilenet-v1``,
else ``~/.cache/mobilenet-v1``): ``downloads/`` holds what was fetched, ``converted/<name>.<source>/``
the converted model, so each file is downloaded and converted once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from . import spec
from .checkpoint import CONFIG_NAME, Preprocessing, from_pretrained
from .config import ModelConfig
from .convert.common import keras_preprocessing, tf_preprocessing
from .convert.timm_sd import TIMM_MEAN, TIMM_STD
from .cost import cost_of
from .files import atomic_path, cache_dir, sha256_of
from .imagenet import imagenet_classes
from .model import MobileNetV1

PUBLISHERS = {"tf": "Google (TF-slim)", "keras": "Keras", "keras_no_top": "Keras", "timm": "timm (Ross Wightman)"}
PUBLISHED_FROM = {  # where the ImageNet accuracy in meta["_metrics"] was printed
    "tf": "https://github.com/tensorflow/models/blob/master/research/slim/nets/mobilenet_v1.md",
    "keras": "https://github.com/tensorflow/models/blob/master/research/slim/nets/mobilenet_v1.md (the same weights)",
}
# TF-slim's table for the float mobilenet_v1_2018_08_02 releases: ImageNet top-1 / top-5 (%), not measured here.
TF_SLIM_TOP = {
    "1.0_224": (70.9, 89.9), "1.0_192": (70.0, 89.2), "1.0_160": (68.0, 87.7), "1.0_128": (65.2, 85.8),
    "0.75_224": (68.4, 88.2), "0.75_192": (67.2, 87.3), "0.75_160": (65.3, 86.0), "0.75_128": (62.1, 83.9),
    "0.5_224": (63.3, 84.9), "0.5_192": (61.7, 83.6), "0.5_160": (59.1, 81.9), "0.5_128": (56.3, 79.4),
    "0.25_224": (49.8, 74.2), "0.25_192": (47.7, 72.3), "0.25_160": (45.5, 70.3), "0.25_128": (41.5, 66.3),
}  # fmt: skip


@dataclass(frozen=True)
class Weights:
    """One downloadable weights file, and what torchvision's ``Weights`` tell about theirs: :meth:`transforms` (the
    publisher's preprocessing) and :attr:`meta` (classes, source, license, size, cost, published accuracy)."""

    url: str
    filename: str  # name in the cache's downloads/ (URLs such as huggingface's all end in model.safetensors)
    sha256: str | None  # None: no checksum published for this file; the first download's is recorded (TOFU)
    resolution: int  # the input size the weights were trained at (Keras .h5 files do not record it)
    preprocessing: dict = field(default_factory=dict)  # overrides of what the converter records
    sha256_from: str = ""  # where the checksum was published
    name: str = ""  # the model's registry name
    source: str = ""  # tf, keras, keras_no_top, timm
    published: tuple[float, float] | None = None  # ImageNet top-1, top-5 (%) as the publisher printed them

    def preprocessing_spec(self) -> Preprocessing:
        """The publisher's documented preprocessing, as the converted model records it."""
        if self.source == "tf":
            pre = tf_preprocessing(self.resolution)
        elif self.source.startswith("keras"):
            pre = keras_preprocessing(self.resolution)
        else:
            pre = Preprocessing(input_size=self.resolution, interpolation="bicubic", mean=TIMM_MEAN, std=TIMM_STD)
        return dataclasses.replace(pre, **self.preprocessing)

    def transforms(self):
        """A torchvision v2 transform: a PIL image → the model's input tensor, as the publisher preprocessed
        (TF-slim's central crop and TF1 resize; Keras's resize and x/127.5 − 1; timm's resize, crop and scale)."""
        from .preprocess import eval_transform  # noqa: PLC0415 - torchvision only when asked

        return eval_transform(self.preprocessing_spec())

    @property
    def meta(self) -> dict:
        width = int(re.fullmatch(r"mobilenet_v1_(\d{3})_\d+", self.name)[1]) / 100
        classes = 0 if self.source == "keras_no_top" else 1001 if self.source == "tf" else 1000
        cost = cost_of(ModelConfig(width, self.resolution, num_classes=classes))
        return {
            "categories": imagenet_classes() if classes else None,
            "label_offset": 1 if classes == 1001 else 0,  # logit 0 is "background"
            "source": self.url,
            "publisher": PUBLISHERS[self.source],
            "license": "Apache-2.0",  # TF-slim's models, Keras's copies of them, timm's weights
            "num_params": cost.trainable_params,
            "mult_adds": cost.mult_adds,
            "min_size": (spec.MIN_RESOLUTION, spec.MIN_RESOLUTION),
            "sha256": self.sha256,
            "_metrics": {"ImageNet-1K": {"acc@1": self.published[0], "acc@5": self.published[1]}}
            if self.published else {},  # fmt: skip
            "_docs": PUBLISHED_FROM.get(self.source, ""),
        }


TF_SLIM = "https://storage.googleapis.com/download.tensorflow.org/models/mobilenet_v1_2018_08_02/"
KERAS = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet/"
TIMM = "https://huggingface.co/timm/{tag}/resolve/{revision}/model.safetensors"
OMZ = "OpenVINO Open Model Zoo, models/public/mobilenet-v1-*/model.yml"
# Google publishes no checksums; the Open Model Zoo records these four tarballs' SHA-256 (1.0_224's also
# TensorFlow's own workspace.bzl, tflite_mobilenet_float). None is published for the other twelve tarballs
# nor for Keras's .h5 files (keras.applications downloads them unchecked): those are trusted on first use.
TF_SLIM_SHA256 = {
    "1.0_224": "2fadeabb9968ec6833bee903900dda6e61b3947200535874ce2fe42a8493abc0",
    "0.5_224": "98cf7a39552f73920cb99617cfa9b88d5732a87abf9ec14f7cc7f3ade1db0aaa",
    "0.5_160": "6bbc9dd7892433e49b4b6ff6af2952183eaa6c1c0cb862868465377a29c77b0d",
    "0.25_128": "879ddc3e0857f3611b5cf248e36de2288c7a11ea8c2ed8a8bdded635e6010dfe",
}
# timm's model.safetensors on the Hugging Face Hub, pinned by Hub revision with the SHA-256 (and size: 17030248,
# 25207640 bytes) that D-Robotics' model zoo records for exactly these revisions' files.
TIMM_FROM = "D-Robotics/rdk_model_zoo, utils/tools/mobilenet/checkpoints.json (Hub revision, SHA-256, size)"
TIMM_RELEASES = {  # width: (Hub revision, SHA-256 of model.safetensors)
    "100": (
        "6e88b523abded44469eafcd52f7832d5e0300b1b",
        "15c2f1411deb8e0533acbb41fe9523062f80d444d0393e7ad2b429f41378efc3",
    ),
    "125": (
        "9e2b4f9a089f39eaf59cb38fb5d595f4d78c8064",
        "5616b1d4d774ac5bdf3fb254a72da78a5f27b19aa13bcceac03a743077c6acd8",
    ),
}
_TF_ALPHA = {"100": "1.0", "075": "0.75", "050": "0.5", "025": "0.25"}  # TF-slim file names
_KERAS_ALPHA = {"100": "1_0", "075": "7_5", "050": "5_0", "025": "2_5"}  # Keras file names


def _registry() -> dict[str, dict[str, Weights]]:
    table: dict[str, dict[str, Weights]] = {}
    for width, tf_alpha in _TF_ALPHA.items():
        for res in (224, 192, 160, 128):
            tf_name = f"mobilenet_v1_{tf_alpha}_{res}.tgz"
            sha = TF_SLIM_SHA256.get(f"{tf_alpha}_{res}")
            k = f"mobilenet_{_KERAS_ALPHA[width]}_{res}_tf"
            name, top = f"mobilenet_v1_{width}_{res}", TF_SLIM_TOP[f"{tf_alpha}_{res}"]
            table[name] = {
                "tf": Weights(TF_SLIM + tf_name, tf_name, sha, res, sha256_from=OMZ if sha else "", name=name,
                              source="tf", published=top),
                "keras": Weights(KERAS + k + ".h5", k + ".h5", None, res, name=name, source="keras", published=top),
                "keras_no_top": Weights(KERAS + k + "_no_top.h5", k + "_no_top.h5", None, res, name=name,
                                        source="keras_no_top"),
            }  # fmt: skip
    for width, crop in (("100", 0.875), ("125", 0.9)):  # timm's pretrained_cfg crop_pct for each
        tag = f"mobilenetv1_{width}.ra4_e3600_r224_in1k"
        revision, sha = TIMM_RELEASES[width]
        url = TIMM.format(tag=tag, revision=revision)
        name = f"mobilenet_v1_{width}_224"
        timm = Weights(url, tag + ".safetensors", sha, 224, {"resize": int(224 / crop)}, sha256_from=TIMM_FROM,
                       name=name, source="timm")  # fmt: skip
        table.setdefault(name, {})["timm"] = timm
    return table


PRETRAINED: dict[str, dict[str, Weights]] = _registry()


def list_pretrained() -> list[str]:
    """``name:source`` for every registered weights file."""
    return [f"{name}:{tag}" for name, sources in PRETRAINED.items() for tag in sources]


_SHA256 = re.compile(r"[0-9a-f]{64}")


def _refuse_plain_http(url: str) -> None:
    if url.lower().startswith("http://"):
        raise ValueError(
            f"{url}: plain http:// downloads are refused (anyone on the way can alter them); "
            "use an https:// URL or a local path"
        )


def record_path(dest: Path) -> Path:
    """Where the SHA-256 of a download without a published one is recorded: ``<file>.sha256`` beside it."""
    return dest.with_name(dest.name + ".sha256")


def _recorded(dest: Path) -> str | None:
    """The SHA-256 recorded when ``dest`` was downloaded (``sha256sum`` format), or None."""
    try:
        words = record_path(dest).read_text().split()
    except (OSError, UnicodeDecodeError):
        return None
    return words[0] if words and _SHA256.fullmatch(words[0]) else None


def _record(dest: Path, digest: str) -> None:
    with atomic_path(record_path(dest)) as tmp:
        tmp.write_text(f"{digest}  {dest.name}\n")


def _check_cached(dest: Path, sha256: str | None) -> Path:
    """``dest`` once its bytes match the pinned SHA-256, else the one recorded at download; refused otherwise."""
    if sha256:
        if (got := sha256_of(dest)) != sha256:
            raise ValueError(
                f"{dest}: SHA-256 {got} is not the published {sha256}; delete the file to download it again"
            )
        return dest
    recorded = _recorded(dest)
    if recorded is None:
        raise ValueError(
            f"{dest}: no SHA-256 to check this cached file against (none is published and {record_path(dest).name} "
            "does not hold the one recorded at download); delete the file to download it again, or pass its path "
            "as the pretrained source if you trust it"
        )
    if (got := sha256_of(dest)) != recorded:
        raise ValueError(
            f"{dest}: SHA-256 {got} is not the {recorded} recorded when it was downloaded, so the file changed; "
            f"delete it and {record_path(dest).name} to download it again"
        )
    return dest


def fetch(url: str, dest: Path, sha256: str | None = None) -> Path:
    """``dest``, downloading ``url`` there first unless present, verified against ``sha256`` when given.

    Without a published ``sha256`` the first download's is recorded beside it (:func:`record_path`) and a
    cached ``dest`` is checked against that; a cached file with no hash to check is refused. Plain
    ``http://`` is refused. A mismatch or a failed download leaves nothing at ``dest``.
    """
    dest = Path(dest)
    _refuse_plain_http(url)
    scheme = urllib.parse.urlparse(url).scheme.lower()
    if scheme not in ("https", "file"):
        raise ValueError(f"{url}: not an https:// or file:// URL; use an https:// URL or a local path")
    if dest.is_file():
        return _check_cached(dest, sha256)
    record = record_path(dest)
    try:
        record.unlink(missing_ok=True)  # a record without its file belongs to no download
        with urllib.request.urlopen(url, timeout=60) as response, atomic_path(dest) as tmp:
            h = hashlib.sha256()
            with open(tmp, "wb") as f:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    h.update(chunk)
                    f.write(chunk)
            digest = h.hexdigest()
            if sha256 and digest != sha256:
                raise ValueError(f"{url}: SHA-256 {digest} is not the published {sha256}; download discarded")
            if not sha256:
                _record(dest, digest)  # before the file appears: a file never lands without its record
    except BaseException as e:
        record.unlink(missing_ok=True)
        if isinstance(e, ValueError) or not isinstance(e, (urllib.error.URLError, OSError)):
            raise
        reason = getattr(e, "reason", None) or e
        if sha256:
            where = f"put it at {dest} (or pass the file's path as the pretrained source)"
        else:  # a copy put in the cache would have no hash to check it against
            where = "pass the file's path as the pretrained source"
        raise OSError(f"could not download {url} ({reason}); offline, download it by hand and {where}") from None
    return dest


def resolve(name: str, source: bool | str = True) -> tuple[str, Weights | None, str]:
    """``(tag, registry entry or None, local path or URL)`` for ``source`` of model ``name``."""
    known = PRETRAINED.get(name, {})
    if source is True:
        if not known:
            raise ValueError(f"no released weights for {name!r}; models with weights: {', '.join(PRETRAINED)}")
        source = next(iter(known))
    source = str(source)
    if source in known:
        return source, known[source], known[source].url
    _refuse_plain_http(source)
    if Path(source).exists() or re.match(r"^(file|https)://", source, re.IGNORECASE):
        return "file", None, source
    choices = ", ".join(known) or "none registered"
    raise ValueError(f"{source!r}: not a file, URL or weights source of {name!r} (sources: {choices})")


def fetch_source(name: str, source: bool | str = True, cache: Path | None = None) -> Path:
    """The local file behind ``source`` (downloaded into the cache first when it is a URL)."""
    tag, entry, where = resolve(name, source)
    cache = cache or cache_dir()
    if where.startswith("file://"):
        path = Path(urllib.request.url2pathname(urllib.parse.urlparse(where).path))
        if entry is None:
            return path
    elif entry is None and not re.match(r"^https://", where, re.IGNORECASE):
        return Path(where)
    filename = entry.filename if entry else Path(urllib.parse.urlparse(where).path).name
    return fetch(where, cache / "downloads" / filename, entry.sha256 if entry else None)


def load_pretrained(
    name: str, source: bool | str = True, cache: str | os.PathLike | None = None, **overrides
) -> MobileNetV1:
    """Model ``name`` with released weights, converted once into the cache; eval mode.

    ``overrides`` are ModelConfig fields and the backbone options, applied as in
    :func:`mobilenet_v1.convert.adapt`: α and the activation/padding/ε must match the weights;
    ``num_classes=1000`` from Google's 1001 drops the background logit.
    """
    from .convert import adapt, load_any
    from .convert.output import _write_dir

    cache = Path(cache) if cache else cache_dir()
    tag, entry, where = resolve(name, source)
    expected = _width_of(name)
    if expected is not None:
        overrides.setdefault("width_multiplier", expected)  # the name promises an α: the weights must have it
    if entry is None:
        model, info = load_any(fetch_source(name, source, cache))
    else:
        converted = cache / "converted" / f"{name}.{tag}"
        if not (converted / CONFIG_NAME).is_file():
            path = fetch_source(name, tag, cache)
            model, info = load_any(path, resolution=entry.resolution)
            info.preprocessing = type(info.preprocessing)(**{**info.preprocessing.__dict__, **entry.preprocessing})
            info.source.update(name=name, source=tag, url=entry.url, sha256=sha256_of(path))
            info.source["sha256_published"] = entry.sha256_from or None
            _write_dir(model, info, converted)
        model = from_pretrained(converted)
        info = model.pretrained
    return adapt(model, info, where, **overrides)


def _width_of(name: str) -> float | None:
    m = re.fullmatch(r"mobilenet_v1_(\d{3})_\d+", name)
    return int(m[1]) / 100 if m else None
