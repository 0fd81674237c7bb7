"""Import a frozen TensorFlow GraphDef (``.pb``) of TF-slim ``MobilenetV1``, without TensorFlow.

The protobuf schema comes from ``tensorboard`` (``tensorboard.compat.proto.graph_pb2``), a maintained
package that ships TensorFlow's ``GraphDef``/``NodeDef``/``TensorProto`` messages and needs only
``protobuf``; tensors are decoded here with NumPy.

A frozen graph stores every variable as a ``Const`` node named after TF-slim's scopes
(``MobilenetV1/Conv2d_3_pointwise/weights``, ``.../BatchNorm/moving_variance``); weights are found by
those names, so batch norm may be fused (``FusedBatchNorm*``, ε in its ``epsilon`` attribute) or
unfused (``batchnorm/add/y`` holds ε). What the names cannot say is read from the ops: ReLU vs ReLU6,
'SAME' padding and the strides (checked against Table 1), the input placeholder's size.

Anything else in the graph with weights (e.g. a retrained head on top of the logits) is reported in
``Pretrained.source["dropped"]`` and not converted: our model's output is the MobileNet's logits.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import Path

import numpy as np

from ..model import MobileNetV1
from .common import ConvBN, assemble, conv_layers, depthwise_to_torch, hwio_to_torch, make_info, tf_preprocessing

FORMAT = "tf-graph"
DEFAULT_EPS = 1e-3  # TF-slim's batch_norm_epsilon for MobilenetV1
# A TF-slim variable: .../Conv2d_<i>[_depthwise|_pointwise]/<weights | BatchNorm/<param>>
_VAR = re.compile(
    r"^(?P<scope>.*?)(?P<layer>Conv2d_\d+(?:_depthwise|_pointwise)?)/"
    r"(?P<param>weights|depthwise_weights|BatchNorm/(?:gamma|beta|moving_mean|moving_variance))$"
)
_LOGITS = re.compile(r"^(?P<scope>.*?)Logits/Conv2d_1c_1x1/(?P<param>weights|biases)$")
_ACT = re.compile(r"(?:^|/)Conv2d_\d+(?:_depthwise|_pointwise)?/Relu6?$")
_EPS_CONST = re.compile(r"(?:^|/)Conv2d_\d+(?:_depthwise|_pointwise)?/BatchNorm/batchnorm(?:_\d+)?/add/y$")
_CONV_OPS = ("Conv2D", "DepthwiseConv2dNative")

# TensorFlow DataType enum values → NumPy (types.proto)
_DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 9: np.int64, 19: np.float16}
# The largest weight of the widest network read here (α = 8: a 1×1 convolution of 8192 × 8192) is 2**26 values; a
# constant declared larger is refused before it is allocated (a crafted 10⁶ × 10⁶ one would exhaust memory).
MAX_CONSTANT = 1 << 26
_VAL_FIELDS = {1: "float_val", 2: "double_val", 3: "int_val", 9: "int64_val", 19: "half_val"}


def parse_graph(data: bytes, where: str):
    """Bytes → ``GraphDef``; a truncated or corrupt file becomes one clear ``ValueError``."""
    try:
        from google.protobuf.message import DecodeError
        from tensorboard.compat.proto import graph_pb2
    except ImportError as e:
        raise ValueError(
            f"{where}: reading TensorFlow graphs needs tensorboard's protobuf schema "
            f"(pip install 'mobilenet-v1[convert]'): {e}"
        ) from None

    graph = graph_pb2.GraphDef()
    try:
        graph.ParseFromString(data)
    except DecodeError as e:
        raise ValueError(f"{where}: not a readable TensorFlow GraphDef (truncated or corrupt: {e})") from None
    if not graph.node:
        raise ValueError(f"{where}: not a TensorFlow GraphDef (no nodes)")
    return graph


def tensor_to_numpy(tensor) -> np.ndarray:
    """Decode a ``TensorProto`` (packed ``tensor_content`` or the typed ``*_val`` fields)."""
    if tensor.dtype not in _DTYPES:
        raise ValueError(f"unsupported tensor dtype enum {tensor.dtype}")
    dtype = np.dtype(_DTYPES[tensor.dtype]).newbyteorder("<")
    shape = [d.size for d in tensor.tensor_shape.dim]
    if any(d < 0 for d in shape):
        raise ValueError(f"a constant of shape {shape}: negative dimension")
    count = math.prod(shape)  # exact (Python ints): a declared shape is checked before anything is allocated
    if count > MAX_CONSTANT:
        raise ValueError(f"a constant of shape {shape} ({count:,} values) is larger than any MobileNet weight")
    if tensor.tensor_content:
        if len(tensor.tensor_content) != count * dtype.itemsize:
            raise ValueError(f"a constant of shape {shape} holds {len(tensor.tensor_content)} bytes, not "
                             f"{count * dtype.itemsize}")  # fmt: skip
        return np.frombuffer(tensor.tensor_content, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))
    values = list(getattr(tensor, _VAL_FIELDS[tensor.dtype]))
    if tensor.dtype == 19:  # half_val holds the float16 bit patterns as int32
        arr = np.array(values, dtype=np.uint16).view(np.float16)
    else:
        arr = np.array(values, dtype=dtype.newbyteorder("="))
    if arr.size == count:
        return arr.reshape(shape)
    # TF stores a constant fill as its last value only: repeat it to the full shape.
    filled = np.full(count, arr[-1] if arr.size else 0, dtype=arr.dtype)
    filled[: arr.size] = arr
    return filled.reshape(shape)


def read_tf_graph(data: bytes, where: str, resolution: int | None = None) -> tuple[MobileNetV1, object]:
    """Convert a frozen TF-slim MobilenetV1 graph; returns ``(model, Pretrained)``."""
    try:
        return _read_tf_graph(data, where, resolution)
    except ValueError as e:  # every message names the file
        raise e if str(e).startswith(where) else ValueError(f"{where}: {e}") from None


def _read_tf_graph(data: bytes, where: str, resolution: int | None) -> tuple[MobileNetV1, object]:
    graph = parse_graph(data, where)
    nodes = {n.name: n for n in graph.node}
    consts = {n.name: n for n in graph.node if n.op == "Const"}

    params: dict[str, dict[str, np.ndarray]] = {}
    scopes, used = Counter(), set()
    for name, node in consts.items():
        m = _VAR.match(name)
        if m:
            params.setdefault(m["layer"], {})[m["param"].split("/")[-1]] = tensor_to_numpy(node.attr["value"].tensor)
            scopes[m["scope"]] += 1
            used.add(name)
    if "Conv2d_0" not in params:
        raise ValueError(f"{where}: not a TF-slim MobilenetV1 graph (no '.../Conv2d_0/weights' constant)")
    scope = scopes.most_common(1)[0][0]

    convs = {}
    for layer in conv_layers():
        p = params.get(layer.name)
        if p is None:
            continue
        kernel = p.get("depthwise_weights" if layer.op == "depthwise" else "weights")
        if kernel is None or "moving_mean" not in p or "moving_variance" not in p:
            raise ValueError(
                f"{where}: {layer.name} has no weights or batch-norm statistics "
                "(graphs with batch norm folded into the convolutions are not supported)"
            )
        weight = depthwise_to_torch(kernel) if layer.op == "depthwise" else hwio_to_torch(kernel)
        ones, zeros = np.ones(weight.shape[0], np.float32), np.zeros(weight.shape[0], np.float32)
        # scale=False / center=False batch norms have no gamma / beta variable: they are 1 / 0.
        convs[layer.name] = ConvBN(
            weight, p.get("gamma", ones), p.get("beta", zeros), p["moving_mean"], p["moving_variance"]
        )

    head = None
    logits = {}
    for name, node in consts.items():
        m = _LOGITS.match(name)
        if m:
            logits[m["param"]] = tensor_to_numpy(node.attr["value"].tensor)
            used.add(name)
    if "weights" in logits:
        w = logits["weights"]  # (1, 1, C, K): a 1×1 conv over the pooled features
        bias = logits.get("biases", np.zeros(w.shape[-1], np.float32))
        head = (np.ascontiguousarray(w.reshape(w.shape[-2], w.shape[-1]).T), bias)

    _check_convs(nodes, consts, where)
    activation = _activation(graph, where)
    eps = _epsilon(graph, consts, where)
    resolution = resolution or _input_size(graph) or 224
    model = assemble(
        convs,
        head,
        where=where,
        activation=activation,
        padding="tf_same",
        bn_eps=eps or DEFAULT_EPS,
        resolution=resolution,
    )
    dropped = _dropped(consts, used, scope)
    source = {"format": FORMAT, "file": Path(where).name, "scope": scope.rstrip("/") or None, "dropped": dropped}
    if eps is None:
        source["notes"] = f"no batch-norm epsilon found in the graph; assumed TF-slim's {DEFAULT_EPS}"
    return model, make_info(model, tf_preprocessing(model.config.resolution), source)


def _follow(nodes: dict, name: str) -> str:
    """The node an input refers to, through ``Identity`` (the ``/read`` of a frozen variable)."""
    name = name.lstrip("^").split(":")[0]
    seen = 0
    while name in nodes and nodes[name].op == "Identity" and seen < 16:
        name, seen = nodes[name].input[0].split(":")[0], seen + 1
    return name


def _check_convs(nodes: dict, consts: dict, where: str) -> None:
    """Every MobileNet convolution must be 'SAME'-padded, undilated, with Table 1's stride."""
    strides = {layer.name: layer.stride for layer in conv_layers()}
    for node in nodes.values():
        if node.op not in _CONV_OPS or len(node.input) < 2:
            continue
        m = _VAR.match(_follow(nodes, node.input[1]))
        if not m or m["layer"] not in strides:
            continue
        layer = m["layer"]
        padding = node.attr["padding"].s.decode()
        stride = list(node.attr["strides"].list.i)
        dilations = list(node.attr["dilations"].list.i) or [1, 1, 1, 1]
        if padding != "SAME":
            raise ValueError(f"{where}: {layer} uses {padding!r} padding; TF-slim MobilenetV1 uses 'SAME'")
        if node.attr["data_format"].s not in (b"", b"NHWC"):
            raise ValueError(f"{where}: {layer} is {node.attr['data_format'].s.decode()}; only NHWC graphs are read")
        if stride[1:3] != [strides[layer]] * 2 or any(d != 1 for d in dilations):
            raise ValueError(
                f"{where}: {layer} has strides {stride[1:3]} and dilations {dilations[1:3]}; "
                f"Table 1 has stride {strides[layer]} and no dilation (output_stride graphs are not supported)"
            )


def _activation(graph, where: str) -> str:
    ops = Counter(n.op for n in graph.node if _ACT.search(n.name) and n.op in ("Relu", "Relu6"))
    if not ops:
        raise ValueError(f"{where}: no ReLU/ReLU6 after the MobilenetV1 convolutions; not a TF-slim MobilenetV1")
    if len(ops) > 1:
        raise ValueError(f"{where}: mixes ReLU and ReLU6 ({dict(ops)}); MobileNet-V1 uses one activation")
    return "relu6" if "Relu6" in ops else "relu"


def _epsilon(graph, consts: dict, where: str) -> float | None:
    # Stored as float32: print it back at float32 precision so 1e-3 is recorded as 0.001, not 0.0010000000475.
    values = {float(str(np.float32(n.attr["epsilon"].f))) for n in graph.node if n.op.startswith("FusedBatchNorm")}
    values |= {
        float(str(np.float32(tensor_to_numpy(n.attr["value"].tensor))))
        for k, n in consts.items()
        if _EPS_CONST.search(k)
    }
    if len(values) > 1:
        raise ValueError(f"{where}: batch norms use different epsilons {sorted(values)}; one model has one")
    return values.pop() if values else None


def _input_size(graph) -> int | None:
    """Height of the NHWC image placeholder when it is square and static (TF-slim: ``input``)."""
    for n in graph.node:
        if n.op == "Placeholder":
            dims = [d.size for d in n.attr["shape"].shape.dim]
            if len(dims) == 4 and dims[1] == dims[2] and dims[1] > 0:
                return dims[1]
    return None


def _dropped(consts: dict, used: set, scope: str) -> list[str]:
    """Weights outside the MobileNet (more than one value, not in its scope): reported, not converted."""
    out = []
    for name, node in consts.items():
        if name in used or (scope and name.startswith(scope)) or name.startswith("MobilenetV1/"):
            continue
        dims = [d.size for d in node.attr["value"].tensor.tensor_shape.dim]
        if dims and int(np.prod(dims)) > 1:
            out.append(f"{name} {'x'.join(map(str, dims))}")
    return sorted(out)
