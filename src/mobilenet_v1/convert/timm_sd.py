"""Import timm ``mobilenetv1_100`` / ``mobilenetv1_125`` state dicts (``.safetensors``, or ``.pth`` read
with ``weights_only=True`` so no pickle code runs). timm itself is not needed.

timm builds MobileNet-V1 in ``timm/models/efficientnet.py`` (``_gen_mobilenet_v1``): ``conv_stem`` +
``bn1``, then 13 ``DepthwiseSeparableConv`` blocks (``blocks.<stage>.<i>.conv_dw``/``bn1``/``conv_pw``/
``bn2``) in Table 1's order, and a ``classifier`` Linear. Its settings are not in the weights, so they
are recorded from that definition: ReLU6, PyTorch's symmetric padding (timm's default ``pad_type=''``)
and BatchNorm2d's ε = 1e-5 — i.e. our ``padding='symmetric'``, ``bn_eps=1e-5``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save

from ..checkpoint import Preprocessing
from ..files import atomic_path
from ..model import MobileNetV1
from .common import ConvBN, assemble, conv_layers, make_info

FORMAT = "timm"
_BLOCK = re.compile(r"^blocks\.(\d+)\.(\d+)\.")
_BN = ("weight", "bias", "running_mean", "running_var")
# timm's pretrained_cfg for mobilenetv1_*.ra4 weights: Inception mean/std, bicubic, crop_pct 0.875
TIMM_MEAN = TIMM_STD = (0.5, 0.5, 0.5)
TIMM_CROP = 0.875


def load_state_dict(path: str | Path, where: str | None = None) -> dict[str, torch.Tensor]:
    """A flat ``{name: tensor}`` from ``.safetensors`` or a ``.pth`` (``weights_only=True``)."""
    path = Path(path)
    where = where or str(path)
    try:
        if _is_safetensors(path):
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - torch.load/safetensors raise many types; one message for all
        raise ValueError(f"{where}: not a readable PyTorch state dict ({type(e).__name__}: {e})") from None
    for key in ("state_dict_ema", "state_dict", "model"):  # training checkpoints wrap the weights
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{where}: not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _is_safetensors(path: Path) -> bool:
    """safetensors: an 8-byte little-endian header length, then a JSON header starting with '{'."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < (1 << 32)


def is_timm_mobilenetv1(state: dict) -> bool:
    return "conv_stem.weight" in state and any(_BLOCK.match(k) for k in state)


def read_timm(state: dict[str, torch.Tensor], where: str, resolution: int = 224) -> tuple[MobileNetV1, object]:
    """Convert a timm MobileNet-V1 state dict → ``(model, Pretrained)``."""
    if not is_timm_mobilenetv1(state):
        raise ValueError(f"{where}: not a timm MobileNet state dict (no conv_stem.weight / blocks.*)")
    extra = sorted(k for k in state if k.startswith(("conv_head", "bn2.")) or ".se." in k)
    if extra:
        raise ValueError(
            f"{where}: has {extra[0]}: not timm's plain mobilenetv1_100/_125 (e.g. mobilenetv1_100h adds a head conv)"
        )
    blocks = sorted({tuple(map(int, _BLOCK.match(k).groups())) for k in state if _BLOCK.match(k)})
    prefixes = [("conv_stem", "bn1")]
    for stage, i in blocks:
        prefixes += [(f"blocks.{stage}.{i}.conv_dw", f"blocks.{stage}.{i}.bn1")]
        prefixes += [(f"blocks.{stage}.{i}.conv_pw", f"blocks.{stage}.{i}.bn2")]
    names = [layer.name for layer in conv_layers()]
    if len(prefixes) != len(names):
        raise ValueError(f"{where}: {len(blocks)} blocks; MobileNet-V1 has {(len(names) - 1) // 2} (Table 1)")
    convs = {}
    for name, (conv, bn) in zip(names, prefixes):
        try:
            convs[name] = ConvBN(_np(state[f"{conv}.weight"]), *(_np(state[f"{bn}.{k}"]) for k in _BN))
        except KeyError as e:
            raise ValueError(f"{where}: missing {e.args[0]}") from None
    head = None
    if "classifier.weight" in state:
        head = (_np(state["classifier.weight"]), _np(state["classifier.bias"]))
    model = assemble(
        convs, head, where=where, activation="relu6", padding="symmetric", bn_eps=1e-5, resolution=resolution
    )
    pre = Preprocessing(
        input_size=resolution, resize=int(resolution / TIMM_CROP), interpolation="bicubic", mean=TIMM_MEAN, std=TIMM_STD
    )
    source = {
        "format": FORMAT,
        "file": Path(where).name,
        "notes": "activation, padding and BN eps are timm's mobilenetv1 definition (not stored in the weights)",
    }
    return model, make_info(model, pre, source)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float32).cpu().numpy()


# timm's mobilenetv1 arch_def: stages of 1, 2, 2, 6 and 2 depthwise-separable blocks (Table 1's 13, grouped by the
# stride-2 block that opens each stage); timm names them blocks.<stage>.<i>
TIMM_STAGES = (1, 2, 2, 6, 2)
TIMM_ARCHS = {1.0: "mobilenetv1_100", 1.25: "mobilenetv1_125"}  # the widths timm builds (its channel rounding
# equals int(α·N) at these, not at others)


def timm_incompatibilities(model: MobileNetV1) -> list[str]:
    """Why ``timm.create_model(arch, pad_type=..., bn_eps=..., act_layer=...)`` cannot hold this model exactly."""
    c = model.config
    problems = []
    if c.width_multiplier not in TIMM_ARCHS:
        problems.append(f"alpha {c.width_multiplier:g} (timm builds MobileNet-V1 at {', '.join(map(str, TIMM_ARCHS))})")
    if c.variant != "standard":
        problems.append(f"variant {c.variant!r}")
    if c.padding == "keras":
        problems.append("padding 'keras' (timm pads symmetrically or like TF 'SAME': pad_type='' or 'same')")
    if c.in_chans != 3:
        problems.append(f"in_chans {c.in_chans} (timm's ImageNet layout)")
    return problems


def timm_state_dict(model: MobileNetV1) -> dict[str, torch.Tensor]:
    """Our weights under timm's names (``conv_stem``, ``bn1``, ``blocks.<s>.<i>.conv_dw``/``bn1``/``conv_pw``/``bn2``,
    ``classifier``); ``ValueError`` for what timm cannot express (:func:`timm_incompatibilities`)."""
    problems = timm_incompatibilities(model)
    if problems:
        raise ValueError(f"cannot export to timm's MobileNet-V1: {'; '.join(problems)}")
    state = model.state_dict()
    targets = [("conv_stem", "bn1")]
    for stage, count in enumerate(TIMM_STAGES):
        for i in range(count):
            targets += [(f"blocks.{stage}.{i}.conv_dw", f"blocks.{stage}.{i}.bn1")]
            targets += [(f"blocks.{stage}.{i}.conv_pw", f"blocks.{stage}.{i}.bn2")]
    out = {}
    for layer, (conv, bn) in zip(conv_layers(model.config.width_multiplier, model.config.min_depth), targets):
        out[f"{conv}.weight"] = state[f"features.{layer.name}.conv.weight"]
        for k in (*_BN, "num_batches_tracked"):
            out[f"{bn}.{k}"] = state[f"features.{layer.name}.bn.{k}"]
    if model.config.num_classes:
        out["classifier.weight"], out["classifier.bias"] = state["classifier.weight"], state["classifier.bias"]
    return {k: v.detach().contiguous().cpu() for k, v in out.items()}


def timm_create_args(model: MobileNetV1) -> dict:
    """What ``timm.create_model`` needs to build the same network: its name and keyword arguments."""
    c = model.config
    kwargs = {"num_classes": c.num_classes, "pad_type": "same" if c.padding == "tf_same" else "", "bn_eps": c.bn_eps,
              "act_layer": c.activation, "global_pool": c.global_pool}  # fmt: skip
    if c.output_stride != 32:
        kwargs["output_stride"] = c.output_stride
    return {"model_name": TIMM_ARCHS[c.width_multiplier], **kwargs}


def write_timm(model: MobileNetV1, out: str | Path) -> Path:
    """timm's layout as ``.safetensors`` (atomically), with the ``create_model`` arguments in its metadata."""
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ValueError(f"{out}: a timm export is a .safetensors file")
    tensors = timm_state_dict(model)  # refuses first what timm cannot build
    data = save(tensors, metadata={"format": "pt", "timm_create_model": json.dumps(timm_create_args(model))})
    with atomic_path(out) as tmp:
        tmp.write_bytes(data)
    return out
