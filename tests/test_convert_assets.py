"""Google's real MobileNet_v1_1.0_224 graph, fetched with pip when absent (CI has PyPI), and its check.

The PyPI sdist ``nudity==0.2.3`` ships ``nudity/files/retrained_graph.pb``: TF-slim's frozen
MobilenetV1 with Google's ImageNet weights and 1001-class logits, plus a 2-class head on top
(tools/GRAPH_NOTES.md). It is cached under ``$MOBILENET_V1_TEST_ASSETS`` or
``~/.cache/mobilenet-v1/test-assets``; tests that need it are never skipped: no graph, no pass.
Other test modules import :func:`google_graph` / :func:`google_sdist` from here.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
from functools import lru_cache
from pathlib import Path

import numpy as np

SDIST = "nudity-0.2.3.tar.gz"
MEMBER = "nudity-0.2.3/nudity/files/retrained_graph.pb"
GRAPH_SHA256 = "3b90af536f810f5f75e9f6d431bc2e8a3c4fc2ff4f693aa0dd4ae429816f8735"  # tools/GRAPH_NOTES.md
REFERENCE = Path(__file__).parent / "data" / "tf_reference.npz"


def assets_dir() -> Path:
    return Path(os.environ.get("MOBILENET_V1_TEST_ASSETS") or Path.home() / ".cache" / "mobilenet-v1" / "test-assets")


@lru_cache(maxsize=1)
def google_sdist() -> Path:
    """The ``nudity`` sdist (a tarball holding one frozen graph), downloaded once with pip."""
    path = assets_dir() / SDIST
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "nudity==0.2.3"]
        result = subprocess.run([*cmd, "-d", str(path.parent)], capture_output=True, text=True)
        if result.returncode != 0 or not path.is_file():
            raise RuntimeError(f"could not fetch the test graph with {' '.join(cmd)}: {result.stderr[-500:]}")
    return path


@lru_cache(maxsize=1)
def google_graph() -> Path:
    """``retrained_graph.pb`` extracted from the sdist (and checked against its known SHA-256)."""
    path = assets_dir() / "retrained_graph.pb"
    if not path.is_file():
        with tarfile.open(google_sdist()) as tar:
            data = tar.extractfile(MEMBER).read()
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    return path


@lru_cache(maxsize=1)
def reference() -> dict[str, np.ndarray]:
    with np.load(REFERENCE) as z:
        ref = {k: z[k] for k in z.files}
    # stored as the uint8 image; (u8 − 128)/128 is exact in float32 (tools/make_tf_reference.py)
    ref["input"] = (ref.pop("input_u8").astype(np.float32) - 128) / 128
    return ref


def test_google_graph_is_the_documented_file():
    assert hashlib.sha256(google_graph().read_bytes()).hexdigest() == GRAPH_SHA256
