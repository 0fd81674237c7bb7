"""Images → model inputs, for int8 calibration and accuracy checks, using the model's recorded preprocessing.

Decoding and transforms come from the training package's ``preprocess`` module when it is present, so
export, eval and predict see identical tensors; a minimal PIL-only equivalent stands in otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ..checkpoint import Preprocessing

try:  # the training engineer's decoder + transforms (preferred: one definition of preprocessing)
    from ..preprocess import IMAGE_SUFFIXES, image_to_tensor
except ImportError:  # pragma: no cover - exercised only when preprocess.py is absent
    IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")
    image_to_tensor = None

_PIL_FILTERS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}


def list_images(directory: str | os.PathLike) -> list[Path]:
    """Image files under ``directory`` (recursively, sorted); a clear error if there are none."""
    directory = Path(directory)
    if not directory.exists():
        raise FileNotFoundError(f"{directory}: no such directory")
    if not directory.is_dir():
        raise ValueError(f"{directory}: not a directory (expected a directory of images)")
    found = sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise ValueError(f"{directory}: no images found (looked for {', '.join(IMAGE_SUFFIXES)})")
    return found


def model_calibration(model, calibration) -> tuple[Preprocessing, list]:
    """The model's own preprocessing (its weights' source's, else a plain resize to its input size) and the
    calibration sources: a directory's images, or the given images or paths as they are."""
    info = getattr(model, "pretrained", None)
    pre = info.preprocessing if info is not None else Preprocessing(input_size=model.config.resolution)
    sources = list_images(calibration) if isinstance(calibration, (str, os.PathLike)) else list(calibration)
    return pre, sources


def _fallback_tensor(image: Image.Image, pre: Preprocessing) -> np.ndarray:
    """PIL-only eval transform: resize (shorter side, then centre crop) or straight to size; normalise."""
    image = image.convert("L" if pre.grayscale else "RGB")
    size, flt = pre.input_size, _PIL_FILTERS.get(pre.interpolation, Image.BILINEAR)
    if pre.resize:
        w, h = image.size
        scale = pre.resize / min(w, h)
        image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))), flt)
        w, h = image.size
        left, top = (w - size) // 2, (h - size) // 2
        image = image.crop((left, top, left + size, top + size))
    else:
        image = image.resize((size, size), flt)
    arr = np.asarray(image, dtype=np.float32) / 255.0
    arr = arr[..., None] if arr.ndim == 2 else arr
    arr = (arr - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
    return arr.transpose(2, 0, 1)


def image_array(source: str | os.PathLike | Image.Image, pre: Preprocessing) -> np.ndarray:
    """One image (a path or a PIL image) → a (C, H, W) float32 array for the model."""
    if isinstance(source, Image.Image):
        if image_to_tensor is None:
            return _fallback_tensor(source, pre)
        from ..preprocess import eval_transform  # noqa: PLC0415 - present whenever image_to_tensor is

        return eval_transform(pre)(source.convert("L" if pre.grayscale else "RGB")).numpy()
    if image_to_tensor is not None:
        return image_to_tensor(source, pre).numpy()
    try:
        with Image.open(source) as im:
            return _fallback_tensor(im, pre)
    except OSError as e:
        raise ValueError(f"{source}: not a readable image ({e})") from None


def batches(
    sources: Sequence[str | os.PathLike | Image.Image], pre: Preprocessing, batch_size: int = 16
) -> Iterator[np.ndarray]:
    """(N, C, H, W) float32 batches of the given images."""
    for i in range(0, len(sources), batch_size):
        yield np.stack([image_array(s, pre) for s in sources[i : i + batch_size]])


def calibration_reader(
    sources: Sequence[str | os.PathLike | Image.Image] | str | os.PathLike,
    pre: Preprocessing,
    input_name: str = "input",
    limit: int | None = 300,
    batch_size: int = 16,
):
    """An ONNX Runtime ``CalibrationDataReader`` over a directory (or list) of images.

    ``limit`` caps the count: a few hundred images pin activation ranges; more only costs time.
    """
    from onnxruntime.quantization import CalibrationDataReader  # noqa: PLC0415 - optional (deploy extra)

    if isinstance(sources, (str, os.PathLike)):
        sources = list_images(sources)
    sources = list(sources)[:limit] if limit else list(sources)
    if not sources:
        raise ValueError("no calibration images given")

    class _Reader(CalibrationDataReader):
        def __init__(self):
            self.count = len(sources)
            self._it = iter(batches(sources, pre, batch_size))

        def get_next(self):
            batch = next(self._it, None)
            return None if batch is None else {input_name: batch}

    return _Reader()


def synthetic_images(n: int, size: int, seed: int = 0) -> list[Image.Image]:
    """``n`` smooth random RGB images: calibration for a *timing* of the int8 path, whose speed does not depend on
    the scales calibration picks. For accuracy, calibrate on real images (``--calibration DIR``)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    return [Image.fromarray(c).resize((size, size), Image.BILINEAR) for c in coarse]
