"""TensorFlow 1's ``resize_bilinear``, for feeding Google's graphs exactly what they were fed.

TF1's default (``align_corners=False``, no ``half_pixel_centers``) maps output pixel ``d`` to source
``d · in/out`` — not to the pixel centre ``(d + ½) · in/out − ½`` that PIL, torchvision and TF2 use —
and never antialiases. Resizing with those instead moves the logits of the TF-for-poets graphs by
~0.1; this restatement matches TensorFlow bit for bit (``tools/make_tf_reference.py`` checks it).
"""

from __future__ import annotations

import numpy as np
import torch


def _taps(in_size: int, out_size: int):
    scale = np.float32(in_size) / np.float32(out_size)  # TF computes the scale in float32
    src = np.arange(out_size, dtype=np.float32) * scale
    lo = np.floor(src).astype(np.int64)
    hi = np.minimum(lo + 1, in_size - 1)
    return lo, hi, (src - lo.astype(np.float32)).astype(np.float32)


def tf1_resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """``tf.compat.v1.image.resize_bilinear(image, [height, width])`` of an HWC array, as float32."""
    img = np.asarray(image, dtype=np.float32)
    y0, y1, fy = _taps(img.shape[0], height)
    x0, x1, fx = _taps(img.shape[1], width)
    fx = fx[None, :, None]
    # interpolate along x first, then y, in float32: the order TF uses (it changes the last bit)
    top = img[y0][:, x0] + (img[y0][:, x1] - img[y0][:, x0]) * fx
    bottom = img[y1][:, x0] + (img[y1][:, x1] - img[y1][:, x0]) * fx
    return (top + (bottom - top) * fy[:, None, None]).astype(np.float32)


def tf_graph_input(image: np.ndarray, size: int = 224, mean: float = 128.0, std: float = 128.0) -> torch.Tensor:
    """A uint8 RGB HWC image → the ``(1, 3, size, size)`` input of a TF-for-poets / TF-slim graph:
    whole image resized (no crop, aspect not kept) with TF1 bilinear, then ``(x − mean) / std``
    (TF-for-poets ``label_image.py``: 128/128; TF-slim's own eval uses 127.5/127.5 after a crop)."""
    resized = tf1_resize_bilinear(image, size, size)
    x = (resized - np.float32(mean)) / np.float32(std)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]
