"""Which format a file is, and :func:`load_any`: any supported source → ``(model, Pretrained)``.

Detection reads the first bytes rather than trusting the extension (a ``.pth`` is a zip, a ``.keras``
is a zip, Keras ``.h5`` is HDF5, a release tarball is gzip); only a frozen GraphDef has no signature
and is recognised by its ``.pb`` extension.
"""

from __future__ import annotations

import os
import tarfile
import zipfile
from pathlib import Path

from ..checkpoint import CONFIG_NAME, Pretrained, from_pretrained
from ..model import MobileNetV1
from .hf import is_hf_dir, read_hf

OURS, TF_GRAPH, TARBALL, KERAS, TIMM, HF = "mobilenet-v1", "tf-graph", "tarball", "keras", "timm", "hf"
FORMATS = (OURS, TF_GRAPH, TARBALL, KERAS, TIMM, HF)
_HDF5 = b"\x89HDF\r\n\x1a\n"


def detect_format(path: str | os.PathLike) -> str:
    """One of :data:`FORMATS`; ``ValueError`` naming the file when it is none of them."""
    path = Path(path)
    if path.is_dir():
        return _dir_format(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with open(path, "rb") as f:
        head = f.read(512)
    if head.startswith(_HDF5):
        return KERAS
    if head.startswith(b"PK\x03\x04"):
        return _zip_format(path)
    if head.startswith(b"\x1f\x8b") or head[257:262] == b"ustar":
        return TARBALL
    if path.suffix == ".pb":
        return TF_GRAPH
    # safetensors: 8-byte header length then a JSON '{'; a legacy torch.save file is a pickle (0x80).
    if head[8:9] == b"{" or head[:1] == b"\x80" or path.suffix == ".safetensors":
        return TIMM
    if path.suffix == ".tflite":
        raise ValueError(
            f"{path}: .tflite is not supported (no maintained parser package); "
            "convert the frozen .pb from the same TF-slim tarball instead"
        )
    raise ValueError(
        f"{path}: unrecognised format (expected a TF frozen graph .pb or TF-slim .tgz, Keras .h5/.weights.h5/.keras, "
        "timm .safetensors/.pth, or a converted model directory)"
    )


def _dir_format(path: Path) -> str:
    if is_hf_dir(path):
        return HF
    if (path / CONFIG_NAME).is_file():
        return OURS
    raise ValueError(f"{path}: a directory without {CONFIG_NAME} is neither a converted nor a transformers model")


def _zip_format(path: Path) -> str:
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except zipfile.BadZipFile as e:
        raise ValueError(f"{path}: a damaged zip archive ({e})") from None
    if "model.weights.h5" in names:
        return KERAS
    if any(n.endswith("data.pkl") for n in names):  # torch.save's zip format
        return TIMM
    raise ValueError(f"{path}: a zip that is neither a .keras archive nor a torch .pth")


# A graph of α = 8 (the widest a config may ask for) holds ~1.1 GB of weights; Google's releases hold 17 MB at most.
# Protocol buffers stop at 2 GiB anyway: an archive member declared larger is refused before it is inflated.
MAX_GRAPH_BYTES = 2 << 30


def _graph_from_tarball(path: Path) -> tuple[bytes, str]:
    """The frozen graph inside a TF-slim release tarball (``*_frozen.pb``), or its only ``.pb``."""
    try:
        with tarfile.open(path) as tar:
            graphs = [m for m in tar.getmembers() if m.isfile() and m.name.endswith(".pb")]
            frozen = [m for m in graphs if m.name.endswith("_frozen.pb")]
            chosen = frozen or graphs
            if len(chosen) != 1:
                found = ", ".join(m.name for m in graphs) or "none"
                raise ValueError(f"{path}: expected one frozen graph (.pb) in the archive, found {found}")
            if chosen[0].size > MAX_GRAPH_BYTES:  # the header's size, checked before anything is inflated
                raise ValueError(f"{path}: {chosen[0].name} inflates to {chosen[0].size:,} bytes, more than any "
                                 "MobileNet graph")  # fmt: skip
            data = tar.extractfile(chosen[0]).read(MAX_GRAPH_BYTES + 1)
            if len(data) > MAX_GRAPH_BYTES:
                raise ValueError(f"{path}: {chosen[0].name} inflates past {MAX_GRAPH_BYTES:,} bytes")
    except (tarfile.TarError, EOFError, OSError) as e:
        raise ValueError(f"{path}: not a readable tar archive (truncated or corrupt: {e})") from None
    return data, f"{path}:{chosen[0].name}"


def load_any(
    src: str | os.PathLike, *, resolution: int | None = None, format: str = "auto"
) -> tuple[MobileNetV1, Pretrained]:
    """Our model (eval mode) and its :class:`Pretrained` info from any supported source.

    ``resolution`` sets the recorded input size where the source does not store one (Keras
    ``.weights.h5``, timm state dicts); the network itself accepts any size.
    """
    path = Path(src)
    kind = detect_format(path) if format == "auto" else format
    if kind not in FORMATS:
        raise ValueError(f"format must be auto or one of {', '.join(FORMATS)}; got {format!r}")
    if kind == OURS:
        model = from_pretrained(path)
        return model, model.pretrained
    if kind in (TF_GRAPH, TARBALL):
        from .tf_graph import read_tf_graph

        if kind == TARBALL:
            data, where = _graph_from_tarball(path)
        else:
            data, where = path.read_bytes(), str(path)
        model, info = read_tf_graph(data, where, resolution)
    elif kind == HF:
        model, info = read_hf(path)
    elif kind == KERAS:
        from .keras_h5 import read_keras

        model, info = read_keras(path, str(path), resolution)
    else:
        from .timm_sd import load_state_dict, read_timm

        model, info = read_timm(load_state_dict(path), str(path), resolution or 224)
    model.pretrained = info
    return model, info
