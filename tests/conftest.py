from pathlib import Path

import numpy as np
import pytest

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="session")
def fashion_mnist_test() -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST's real test images and labels (Debian's dataset-fashion-mnist, installed by .ci/run)."""
    if not FASHION_MNIST.is_dir():
        pytest.fail("Fashion-MNIST missing: apt-get install -y dataset-fashion-mnist (.ci/run does this)")
    from samples import fashion_mnist

    return fashion_mnist("test", FASHION_MNIST)


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Each test session unpacks data into its own cache, never the user's."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MOBILENET_V1_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        yield


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
