"""Generate TensorFlow reference outputs for Google's MobileNet_v1_1.0_224.

The graph is the frozen TF-slim ``MobilenetV1`` (ImageNet weights, 1001-class
logits intact) shipped in the ``nudity==0.2.3`` sdist as
``nudity/files/retrained_graph.pb``, with a small 2-class retrained head on
top.  See ``tools/GRAPH_NOTES.md`` for the graph's node names and ops.

The output, ``tests/data/tf_reference.npz``, lets the PyTorch converter be
tested against TensorFlow without TensorFlow being installed at test time.

How to run (TensorFlow lives only in a separate virtualenv, never in the
project's Python)::

    python3 -m venv tfenv
    tfenv/bin/pip install tensorflow-cpu numpy scikit-image scikit-learn pillow
    pip download --no-deps nudity==0.2.3 -d nudity
    tfenv/bin/python tools/make_tf_reference.py \
        --graph nudity/nudity-0.2.3.tar.gz \
        [--labels imagenet_labels.txt] [--out tests/data/tf_reference.npz]

``--graph`` may also point at the ``nudity-0.2.3.tar.gz`` sdist itself.
``--labels`` (optional) is a text file with the 1000 ImageNet class names, one
per line, in the standard order; it only affects what is printed.

Preprocessing (that of the nudity package, ``nudity/__init__.py``, which is
TF-for-poets' ``label_image.py``): decode to uint8 RGB, cast to float32,
``tf.image.resize_bilinear(img, [224, 224])`` on the *whole* image (no crop,
aspect ratio not kept; TF1 defaults ``align_corners=False``, and
``half_pixel_centers`` did not exist yet, i.e. False), then
``(x - 128) / 128``.  The graph itself contains no preprocessing: its
``input`` placeholder takes float32 NHWC [1, 224, 224, 3] already scaled.

Storage choice (keeps the file well under 4 MB while staying *exact*):
the float32 resize output is rounded to integers (``np.rint``, values stay in
0..255) before scaling, so that

    input = (resized_u8.astype(float32) - 128) / 128        # exact in float32

has only 256 distinct values and compresses well.  All reference outputs
(``logits``, ``probs``, ``top5``, ``head_*``, ``pooled``, ``act0_*``) are
computed by TensorFlow from exactly the stored ``input``, so a converter test
needs only ``input`` and needs no resize.  For the resize itself, one image
(chelsea, image 0) is stored raw (``resize_src``, uint8) with TF's unrounded
float32 output (``resize_out``).  ``e2e_logits`` are TF's logits for the
unrounded pipeline (original image -> float resize -> scale -> graph), for an
end-to-end test that re-creates the originals from skimage / sklearn.

Keys of the .npz (arrays are NHWC, as in TF; all float arrays float32):
    image_names          (N,) str      skimage.data / sklearn sample image names
    input_u8             (N,224,224,3) uint8 image; graph input ``input:0`` = (input_u8 - 128) / 128
    logits               (N,1001)      ``MobilenetV1/Logits/SpatialSqueeze:0``
    probs                (N,1001)      softmax(logits)  (1001-way, float64 -> float32)
    top5                 (N,5) int64   argsort(-logits)[:5], 1001-class indexing
                                       (0 = background, k -> ImageNet class k-1)
    pooled               (N,1024)      ``MobilenetV1/Logits/AvgPool_1a/AvgPool:0`` squeezed
    head_logits          (N,2)         ``final_training_ops/Wx_plus_b/add:0``
    head_probs           (N,2)         ``final_result:0`` (softmax of head_logits)
    e2e_logits           (N,1001)      logits for the unrounded float resize input
    act0_conv2d_0        (1,112,112,8) ``MobilenetV1/MobilenetV1/Conv2d_0/Relu6``, image 0, channels 0..7
    act0_conv2d_13_pointwise (1,7,7,1024)   ``.../Conv2d_13_pointwise/Relu6``, image 0, all channels
    resize_src           (300,451,3) uint8   chelsea, original
    resize_out           (224,224,3)  TF1 resize_bilinear(float32(resize_src), [224,224],
                                       align_corners=False, half_pixel_centers=False)
    meta                 () str        JSON: node names, preprocessing, versions, sha256
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import tarfile

# Use TF's plain Eigen kernels (not oneDNN) for a canonical reference; this
# must be set before TensorFlow is imported.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

tf.get_logger().setLevel("ERROR")  # silence the resize_bilinear deprecation notice

SIZE = 224
INPUT_MEAN = 128.0
INPUT_STD = 128.0

INPUT = "input:0"
LOGITS = "MobilenetV1/Logits/SpatialSqueeze:0"
POOLED = "MobilenetV1/Logits/AvgPool_1a/AvgPool:0"
HEAD_LOGITS = "final_training_ops/Wx_plus_b/add:0"
HEAD_PROBS = "final_result:0"
# (npz key, tensor name, number of leading channels kept; None = all)
ACTIVATIONS = [
    ("act0_conv2d_0", "MobilenetV1/MobilenetV1/Conv2d_0/Relu6:0", 8),
    ("act0_conv2d_13_pointwise", "MobilenetV1/MobilenetV1/Conv2d_13_pointwise/Relu6:0", None),
]
SDIST_MEMBER = "nudity-0.2.3/nudity/files/retrained_graph.pb"


def load_images() -> list[tuple[str, np.ndarray]]:
    """The real photos used, as uint8 RGB HWC arrays (chelsea first)."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    images = [(name, getattr(skimage.data, name)()) for name in ("chelsea", "coffee", "astronaut", "rocket")]
    samples = load_sample_images()
    for path, img in zip(samples.filenames, samples.images):
        images.append((os.path.splitext(os.path.basename(path))[0], img))
    for name, img in images:
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3, (name, img.shape)
    return images


def read_graph_bytes(path: str) -> bytes:
    """Read the frozen GraphDef from a .pb file or from the nudity sdist."""
    if path.endswith((".tar.gz", ".tgz")):
        with tarfile.open(path) as tar:
            return tar.extractfile(SDIST_MEMBER).read()
    with open(path, "rb") as f:
        return f.read()


def tf1_resize_bilinear(img_u8: np.ndarray) -> np.ndarray:
    """TF1 ``resize_bilinear`` of float32(img) to 224x224 (align_corners=False,
    half_pixel_centers=False), as the nudity package does.  Returns float32 HWC."""
    x = tf.constant(img_u8.astype(np.float32)[None])
    y = tf.compat.v1.image.resize_bilinear(x, [SIZE, SIZE], align_corners=False, half_pixel_centers=False)
    return y.numpy()[0]


def numpy_legacy_resize_bilinear(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """NumPy restatement of TF's legacy bilinear kernel, used as a self-check
    and as a spec for our own resize: scale = in/out (float32);
    src = dst * scale; lo = floor(src); hi = min(lo + 1, in - 1);
    frac = src - lo; lerp along x first, then along y, in float32."""
    img = img.astype(np.float32)

    def weights(in_size, out_size):
        scale = np.float32(in_size) / np.float32(out_size)
        src = np.arange(out_size, dtype=np.float32) * scale
        lo = np.floor(src).astype(np.int64)
        hi = np.minimum(lo + 1, in_size - 1)
        return lo, hi, (src - lo.astype(np.float32)).astype(np.float32)

    y0, y1, fy = weights(img.shape[0], out_h)
    x0, x1, fx = weights(img.shape[1], out_w)
    fx = fx[None, :, None]
    top = img[y0][:, x0] + (img[y0][:, x1] - img[y0][:, x0]) * fx
    bot = img[y1][:, x0] + (img[y1][:, x1] - img[y1][:, x0]) * fx
    return (top + (bot - top) * fy[:, None, None]).astype(np.float32)


def scale(x: np.ndarray) -> np.ndarray:
    return ((x.astype(np.float32) - np.float32(INPUT_MEAN)) / np.float32(INPUT_STD)).astype(np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return (z / z.sum(axis=-1, keepdims=True)).astype(np.float32)


def label_of(k: int, labels: list[str] | None) -> str:
    if k == 0:
        return "background"
    return labels[k - 1] if labels else f"imagenet#{k - 1}"


def main(argv: list[str] | None = None) -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--graph", required=True, help="retrained_graph.pb or the nudity sdist")
    ap.add_argument("--out", default=os.path.normpath(os.path.join(here, "..", "tests", "data", "tf_reference.npz")))
    ap.add_argument("--labels", default=None, help="optional file with the 1000 ImageNet class names")
    args = ap.parse_args(argv)

    labels = None
    if args.labels:
        with open(args.labels) as f:
            labels = [line.strip() for line in f if line.strip()]
        assert len(labels) == 1000, len(labels)

    graph_bytes = read_graph_bytes(args.graph)
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(graph_bytes)
    graph = tf.Graph()
    with graph.as_default():
        tf.import_graph_def(graph_def, name="")

    # --- preprocessing -------------------------------------------------------
    images = load_images()
    names = [n for n, _ in images]
    resized_float = np.stack([tf1_resize_bilinear(img) for _, img in images])  # (N,224,224,3) float32
    max_np_diff = max(
        float(np.abs(numpy_legacy_resize_bilinear(img, SIZE, SIZE) - r).max())
        for (_, img), r in zip(images, resized_float)
    )
    resized_u8 = np.clip(np.rint(resized_float), 0, 255).astype(np.uint8)
    inputs = scale(resized_u8)  # exact: (integer - 128) / 128
    e2e_inputs = scale(resized_float)  # the nudity package's exact (unrounded) input

    # --- run the graph (placeholder is fixed at batch 1: one image per run) ---
    fetch = {"logits": LOGITS, "pooled": POOLED, "head_logits": HEAD_LOGITS, "head_probs": HEAD_PROBS}
    act_fetch = {key: name for key, name, _ in ACTIVATIONS}
    out: dict[str, list[np.ndarray]] = {k: [] for k in fetch}
    e2e_logits = []
    with tf.compat.v1.Session(graph=graph) as sess:
        for i in range(len(images)):
            fetches = dict(fetch, **act_fetch) if i == 0 else fetch
            res = sess.run(fetches, {INPUT: inputs[i : i + 1]})
            if i == 0:
                acts = {key: res[key][..., :keep] if keep else res[key] for key, _, keep in ACTIVATIONS}
            for k in fetch:
                out[k].append(res[k].reshape(res[k].shape[0], -1))
            e2e_logits.append(sess.run(LOGITS, {INPUT: e2e_inputs[i : i + 1]}))
    logits = np.concatenate(out["logits"]).astype(np.float32)
    e2e_logits = np.stack([np.squeeze(e) for e in e2e_logits]).astype(np.float32)
    top5 = np.argsort(-logits, axis=1, kind="stable")[:, :5].astype(np.int64)

    meta = {
        "source": "nudity==0.2.3 sdist, nudity/files/retrained_graph.pb",
        "graph_sha256": hashlib.sha256(graph_bytes).hexdigest(),
        "nodes": {
            "input": INPUT,
            "logits": LOGITS,
            "pooled": POOLED,
            "head_logits": HEAD_LOGITS,
            "head_probs": HEAD_PROBS,
            **act_fetch,
        },
        "layout": "NHWC",
        "class_indexing": "1001 classes; 0 = background, k -> ImageNet class k-1",
        "preprocessing": "input = (rint(tf1_resize_bilinear(float32(img), 224x224, align_corners=False, "
        "half_pixel_centers=False)) - 128) / 128; whole image, no crop",
        "e2e_preprocessing": "same without rint (the nudity package's exact pipeline)",
        "bn": "unfused: y = x * (gamma * rsqrt(var + 0.001)) + (beta - mean * gamma * rsqrt(var + 0.001))",
        "tensorflow": tf.__version__,
        "numpy": np.__version__,
        "tf_enable_onednn_opts": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
        "max_abs_diff_numpy_vs_tf_resize": max_np_diff,
    }
    data = {
        "image_names": np.array(names),
        # The graph input is (u8 − 128)/128 of an integer image: store the uint8 image (a quarter of the
        # bytes); tests/test_convert_assets.reference() rebuilds the exact float32 input.
        "input_u8": (inputs * 128 + 128).round().astype(np.uint8),
        "logits": logits,
        "probs": softmax(logits),
        "top5": top5,
        "pooled": np.concatenate(out["pooled"]).astype(np.float32),
        "head_logits": np.concatenate(out["head_logits"]).astype(np.float32),
        "head_probs": np.concatenate(out["head_probs"]).astype(np.float32),
        "e2e_logits": e2e_logits,
        **{k: v.astype(np.float32) for k, v in acts.items()},
        "resize_src": images[0][1],
        "resize_out": resized_float[0],
        "meta": np.array(json.dumps(meta, sort_keys=True)),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    buf = io.BytesIO()
    np.savez_compressed(buf, **data)
    with open(args.out, "wb") as f:
        f.write(buf.getvalue())

    # --- report -----------------------------------------------------------------
    print(f"tensorflow {tf.__version__}, graph sha256 {meta['graph_sha256']}")
    print(f"max |numpy legacy resize - TF resize| = {max_np_diff:.3g}")
    print(f"max |logits - e2e_logits| (effect of rounding the resize) = {np.abs(logits - e2e_logits).max():.4f}")
    for i, name in enumerate(names):
        p = data["probs"][i]
        tops = ", ".join(f"{k} {label_of(int(k), labels)} ({p[k]:.3f})" for k in top5[i])
        e2e_top = np.argsort(-e2e_logits[i])[:5]
        same = "same" if np.array_equal(e2e_top, top5[i]) else f"DIFFERS {e2e_top.tolist()}"
        head = ", ".join(f"{v:.4f}" for v in data["head_probs"][i])
        print(f"{name:10s} top5: {tops}; head_probs [{head}]; e2e top5 {same}")
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1e6:.2f} MB)")
    for k, v in data.items():
        print(f"  {k:26s} {str(v.shape):18s} {v.dtype}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
