"""TensorFlow reference outputs of Google's MobileNet_v1_1.0_224 graph at input sizes that are not 224.

TF-slim pads every convolution with TensorFlow's 'SAME'; at 224 every map is even and 'SAME' is the same as
padding (0, 1) at each stride-2 layer. These sizes are not multiples of 32 and reach odd maps (200: 25×25;
213: an odd input), where the two differ: a converter that gets 'SAME' wrong passes at 224 and fails here.
The graph's fixed [1, 224, 224, 3] input is replaced by a placeholder of each size (``input_map``); its 7×7
average pool still fits, since both sizes end on a 7×7 map.

Run it as ``tools/make_tf_reference.py`` says (TensorFlow in its own virtualenv)::

    tfenv/bin/python tools/make_tf_sizes_reference.py --graph nudity/nudity-0.2.3.tar.gz

Keys of ``tests/data/tf_reference_sizes.npz``, for each size S (NHWC, float32 unless said):
    s{S}_input_u8     (1,S,S,3) uint8   chelsea, TF1 resize_bilinear to S×S, rounded; input = (u8 − 128) / 128
    s{S}_logits       (1,1001)          ``MobilenetV1/Logits/SpatialSqueeze:0``
    s{S}_stem         (1,⌈S/2⌉,⌈S/2⌉,8) ``Conv2d_0/Relu6``, channels 0..7
    s{S}_features     (1,7,7,1024)      ``Conv2d_13_pointwise/Relu6``
    meta              () str            JSON: sizes, node names, versions, graph sha256
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # TF's Eigen kernels: the canonical reference
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from make_tf_reference import INPUT, LOGITS, load_images, read_graph_bytes, scale  # noqa: E402

SIZES = (200, 213)
STEM = "MobilenetV1/MobilenetV1/Conv2d_0/Relu6:0"
FEATURES = "MobilenetV1/MobilenetV1/Conv2d_13_pointwise/Relu6:0"


def main(argv: list[str] | None = None) -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--graph", required=True, help="retrained_graph.pb or the nudity sdist")
    ap.add_argument("--out", default=os.path.join(here, "..", "tests", "data", "tf_reference_sizes.npz"))
    args = ap.parse_args(argv)
    graph_bytes = read_graph_bytes(args.graph)
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(graph_bytes)
    chelsea = dict(load_images())["chelsea"]
    data = {}
    for size in SIZES:
        graph = tf.Graph()
        with graph.as_default():
            x = tf.compat.v1.placeholder(tf.float32, (1, size, size, 3), name="sized_input")
            tf.import_graph_def(graph_def, input_map={INPUT: x}, name="")
            resized = tf.compat.v1.image.resize_bilinear(chelsea.astype(np.float32)[None], [size, size],
                                                         align_corners=False, half_pixel_centers=False)
        with tf.compat.v1.Session(graph=graph) as sess:
            u8 = np.clip(np.rint(sess.run(resized)), 0, 255).astype(np.uint8)
            logits, stem, features = sess.run([LOGITS, STEM, FEATURES], {x: scale(u8)})
        data |= {f"s{size}_input_u8": u8, f"s{size}_logits": logits.reshape(1, -1).astype(np.float32),
                 f"s{size}_stem": stem[..., :8].astype(np.float32), f"s{size}_features": features.astype(np.float32)}
        print(f"{size}: stem {stem.shape}, features {features.shape}, top-1 {int(logits.argmax())}")
    meta = {"sizes": SIZES, "graph_sha256": hashlib.sha256(graph_bytes).hexdigest(), "tensorflow": tf.__version__,
            "numpy": np.__version__, "nodes": {"logits": LOGITS, "stem": STEM, "features": FEATURES},
            "tf_enable_onednn_opts": os.environ.get("TF_ENABLE_ONEDNN_OPTS")}
    buf = io.BytesIO()
    np.savez_compressed(buf, **data, meta=np.array(json.dumps(meta, sort_keys=True)))
    with open(args.out, "wb") as f:
        f.write(buf.getvalue())
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
