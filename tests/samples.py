"""Real images for the tests and benchmarks, from installed packages, without a network.

- Fashion-MNIST's IDX files from Debian's ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``);
- photographs bundled with scikit-image (``skimage.data``), scikit-learn (``load_sample_images``) and
  matplotlib (``grace_hopper.jpg``);
- 219 photographs of animals and objects from Debian's ``gcompris-qt-data`` (``debian_photos.py``: fetched
  once with ``apt-get download``, SHA-256-checked).
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

FASHION_MNIST_DIR = Path(os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
# skimage.data's colour photographs (its other images are grayscale, binary or synthetic).
SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "hubble_deep_field", "immunohistochemistry", "rocket", "retina")


def fashion_mnist(split: str = "test", root: str | os.PathLike = FASHION_MNIST_DIR) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 N×28×28, labels int64 N) of the ``train`` or ``test`` split (torchvision's reader)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test'; got {split!r}")
    from mobilenet_v1.data import fashion_mnist as dataset  # noqa: PLC0415

    ds = dataset(root, train=split == "train")
    return ds.data.numpy(), ds.targets.numpy().astype(np.int64)


def photos() -> list[np.ndarray]:
    """The colour photographs bundled with scikit-image, scikit-learn and matplotlib, as H×W×3 uint8 arrays."""
    import matplotlib.cbook  # noqa: PLC0415
    from skimage import data  # noqa: PLC0415 - optional (dev extra)
    from sklearn.datasets import load_sample_images  # noqa: PLC0415

    out = [getattr(data, name)() for name in SKIMAGE_PHOTOS]
    out += list(load_sample_images().images)
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        out.append(np.asarray(Image.open(f).convert("RGB")))
    return [np.ascontiguousarray(p[..., :3]).astype(np.uint8) for p in out]


def gcompris_photos() -> list[Image.Image]:
    """The 219 photographs of ``debian_photos`` (animals, household objects, tools, fish, monuments...), RGB."""
    from debian_photos import load  # noqa: PLC0415

    return [Image.open(io.BytesIO(data)).convert("RGB") for _, data in load()]


def _chosen(which: Sequence[int] | None) -> list[np.ndarray]:
    base = photos()
    return base if which is None else [base[i] for i in which]


def photo_views(size: int = 256, which: Sequence[int] | None = None) -> list[Image.Image]:
    """A fixed evaluation set: 10 deterministic views of each bundled photo (whole, centre crops at 87.5% and
    75%, the four 80% corner crops, and mirror images of the first three) — 100 object-centred images,
    disjoint from the random crops :func:`photo_crops` calibrates on. ``which``: only these photos (indices
    into :func:`photos`), e.g. to hold some out of calibration and fine-tuning altogether."""
    views = []
    for arr in _chosen(which):
        im = Image.fromarray(arr)
        w, h = im.size
        boxes = []
        for frac in (1.0, 0.875, 0.75):
            cw, ch = int(w * frac), int(h * frac)
            boxes.append(((w - cw) // 2, (h - ch) // 2, (w - cw) // 2 + cw, (h - ch) // 2 + ch))
        cw, ch = int(w * 0.8), int(h * 0.8)
        boxes += [(0, 0, cw, ch), (w - cw, 0, w, ch), (0, h - ch, cw, h), (w - cw, h - ch, w, h)]
        crops = [im.crop(b).resize((size, size), Image.BILINEAR) for b in boxes]
        views += crops + [c.transpose(Image.FLIP_LEFT_RIGHT) for c in crops[:3]]
    return views


def photo_crops(n: int, size: int = 224, seed: int = 0, which: Sequence[int] | None = None) -> list[Image.Image]:
    """``n`` random square crops (25–100% of the shorter side, random flips) of the bundled photos (``which``:
    only these).

    A few hundred distinct views of ~10 real photographs: enough to calibrate activation ranges, which
    depend on natural-image statistics, not on the class mix.
    """
    rng = np.random.default_rng(seed)
    base = _chosen(which)
    crops = []
    for i in range(n):
        img = base[i % len(base)]
        h, w = img.shape[:2]
        side = int(min(h, w) * rng.uniform(0.25, 1.0))
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        crop = Image.fromarray(img[y : y + side, x : x + side]).resize((size, size), Image.BILINEAR)
        crops.append(crop.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else crop)
    return crops


def write_images(images, out_dir: str | os.PathLike, prefix: str = "img") -> list[Path]:
    """Save PIL images or uint8 arrays as PNGs (a calibration directory for ``export --calibration``)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, im in enumerate(images):
        im = im if isinstance(im, Image.Image) else Image.fromarray(np.asarray(im))
        path = out_dir / f"{prefix}_{i:05d}.png"
        im.save(path)
        paths.append(path)
    return paths
