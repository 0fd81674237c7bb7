import gzip
from pathlib import Path

import numpy as np
import pytest

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path) as f:
        raw = f.read()
    ndim = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


@pytest.fixture(scope="session")
def fashion_mnist_test() -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST's real test images and labels (Debian's dataset-fashion-mnist, installed by .ci/run)."""
    if not FASHION_MNIST.is_dir():
        pytest.fail("Fashion-MNIST missing: apt-get install -y dataset-fashion-mnist (.ci/run does this)")
    return _read_idx(FASHION_MNIST / "t10k-images-idx3-ubyte.gz"), _read_idx(
        FASHION_MNIST / "t10k-labels-idx1-ubyte.gz"
    )


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Each test session unpacks data into its own cache, never the user's."""
    monkeypatch.setenv("MOBILENET_V1_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def pytest_collection_modifyitems(config, items):
    """Slow tests (real-data training, torchrun, SIGKILL/resume) run in CI (.ci/run sets MOBILENET_V1_SLOW=1)
    and whenever asked for with ``-m slow``; a plain ``pytest`` keeps the edit-test loop short."""
    import os

    if os.environ.get("MOBILENET_V1_SLOW") == "1" or "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="slow: set MOBILENET_V1_SLOW=1 (as .ci/run does) or pass -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
