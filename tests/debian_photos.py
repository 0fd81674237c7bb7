"""219 real photographs of animals and everyday objects from a pinned Debian package, fetched with apt.

Debian's ``gcompris-qt-data`` 3.1-2 (GCompris, the educational suite; 44 MB) ships the photographs its
activities show inside Qt resource bundles (``.rcc``): wildlife, farm and world animals, household objects,
tools, fish, windmills and dams, monuments — close to ImageNet's classes, unlike the textures and micrographs
among the photos bundled with scikit-image. :func:`load` downloads the ``.deb`` once with ``apt-get
download`` (the machine's own Debian sources; run ``apt-get update`` first on a fresh machine), checks its
SHA-256, reads the bundles straight out of the package (no ``dpkg`` install, no Qt) and checks every photo's
SHA-256 against ``tests/data/gcompris_photos.tsv`` — the list was chosen by eye for being photographs (drawings,
renders and near-duplicates left out) before any model saw them.
"""

from __future__ import annotations

import hashlib
import io
import lzma
import os
import struct
import subprocess
import tarfile
import tempfile
import zlib
from functools import lru_cache
from pathlib import Path

from mobilenet_v1.files import cache_dir, sha256_of

PACKAGE = "gcompris-qt-data"
VERSION = "3.1-2"
DEB = f"{PACKAGE}_{VERSION}_all.deb"
DEB_SHA256 = "e9cf06ab2105529068df73085784e835d2ff03f870d2a8091f09125d40abac9f"
RCC_DIR = "./usr/share/gcompris-qt/rcc/"


def manifest() -> list[tuple[str, str, str]]:
    """(bundle, resource path, SHA-256) of each photo, in the set's fixed order."""
    text = (Path(__file__).parent / "data" / "gcompris_photos.tsv").read_text()
    rows = [line.split("\t") for line in text.splitlines() if line and not line.startswith("#")]
    return [(bundle, path, sha) for bundle, path, sha in rows]


def fetch_deb(directory: str | os.PathLike | None = None) -> Path:
    """The pinned ``.deb``, downloaded once with ``apt-get download`` into ``directory`` and SHA-256-checked."""
    directory = Path(directory or cache_dir())
    path = directory / DEB
    if path.is_file():
        if sha256_of(path) != DEB_SHA256:
            raise RuntimeError(f"{path}: SHA-256 differs from {PACKAGE} {VERSION}'s; delete it to fetch it again")
        return path
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        try:
            result = subprocess.run(["apt-get", "download", f"{PACKAGE}={VERSION}"], cwd=tmp, capture_output=True,
                                    text=True)  # fmt: skip
        except FileNotFoundError as exc:
            raise RuntimeError(f"apt-get not found: {PACKAGE} {VERSION} comes from Debian's archive") from exc
        got = Path(tmp) / DEB
        if result.returncode != 0 or not got.is_file():
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"apt-get download {PACKAGE}={VERSION} failed ({last}); run apt-get update first?")
        if sha256_of(got) != DEB_SHA256:
            raise RuntimeError(f"apt-get download {PACKAGE}={VERSION}: SHA-256 differs from the pinned one")
        got.replace(path)
    return path


def deb_members(deb: Path, names: set[str]) -> dict[str, bytes]:
    """The named files of a ``.deb`` (an ``ar`` archive around ``data.tar.xz``), read in memory."""
    raw = deb.read_bytes()
    if raw[:8] != b"!<arch>\n":
        raise ValueError(f"{deb}: not a Debian package (no ar header)")
    pos, data = 8, None
    while pos + 60 <= len(raw):
        name, size = raw[pos : pos + 16].decode().strip().rstrip("/"), int(raw[pos + 48 : pos + 58])
        if name.startswith("data.tar"):
            data = raw[pos + 60 : pos + 60 + size]
            if name.endswith(".xz"):
                data = lzma.decompress(data)
            elif not name.endswith(".tar"):
                raise ValueError(f"{deb}: {name} is not compressed with xz")
            break
        pos += 60 + size + size % 2
    if data is None:
        raise ValueError(f"{deb}: no data.tar member")
    out = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar:
            if member.name in names:
                out[member.name] = tar.extractfile(member).read()
    if missing := names - out.keys():
        raise ValueError(f"{deb}: missing {sorted(missing)}")
    return out


def rcc_files(blob: bytes) -> dict[str, bytes]:
    """Every file in a Qt resource bundle (``rcc`` format 1-3), by its ``:/...`` path.

    Layout: ``qres``, version, then offsets of the tree, data and name tables; tree entries are a name
    offset, flags (2: directory, 1: zlib, 4: zstd) and either a child range or a data offset.
    """
    if blob[:4] != b"qres":
        raise ValueError("not a Qt resource bundle (no 'qres' magic)")
    version, tree, data, names = struct.unpack(">IIII", blob[4:20])
    entry = 14 if version == 1 else 22

    def name(offset: int) -> str:
        (length,) = struct.unpack(">H", blob[names + offset : names + offset + 2])
        return blob[names + offset + 6 : names + offset + 6 + 2 * length].decode("utf-16-be")

    out: dict[str, bytes] = {}
    stack = [(0, ":")]
    while stack:
        index, prefix = stack.pop()
        at = tree + index * entry
        name_offset, flags = struct.unpack(">IH", blob[at : at + 6])
        path = f"{prefix}/{name(name_offset)}" if index else prefix
        if flags & 2:
            count, first = struct.unpack(">II", blob[at + 6 : at + 14])
            stack += [(child, path) for child in range(first, first + count)]
            continue
        (offset,) = struct.unpack(">I", blob[at + 10 : at + 14])
        (size,) = struct.unpack(">I", blob[data + offset : data + offset + 4])
        payload = blob[data + offset + 4 : data + offset + 4 + size]
        if flags & 4:
            raise ValueError(f"{path}: zstd-compressed resource (not supported)")
        out[path] = zlib.decompress(payload[4:]) if flags & 1 else payload
    return out


@lru_cache(maxsize=1)
def load(directory: str | None = None) -> tuple[tuple[str, bytes], ...]:
    """(name, encoded WebP bytes) of each photo, in the manifest's order; every SHA-256 checked."""
    rows = manifest()
    bundles = deb_members(fetch_deb(directory), {RCC_DIR + b for b, _, _ in rows})
    files = {b: rcc_files(blob) for b, blob in ((k[len(RCC_DIR) :], v) for k, v in bundles.items())}
    out = []
    for bundle, path, sha in rows:
        data = files[bundle].get(path)
        if data is None or hashlib.sha256(data).hexdigest() != sha:
            raise RuntimeError(f"{DEB}: {bundle} {path} is {'missing' if data is None else 'not the pinned file'}")
        out.append((path.rsplit("/", 1)[-1], data))
    return tuple(out)
