"""Import timm ``mobilenetv1_100`` / ``mobilenetv1_125`` state dicts (``.safetensors``, or ``.pth`` read
with ``weights_only=True`` so no pickle code runs). timm itself is not needed.

timm builds MobileNet-V1 in ``timm/models/efficientnet.py`` (``_gen_mobilenet_v1``): ``conv_stem`` +
``bn1``, then 13 ``DepthwiseSeparableConv`` blocks (``blocks.<stage>.<i>.conv_dw``/``bn1``/``conv_pw``/
``bn2``) in Table 1's order, and a ``classifier`` Linear. Its settings are not in the weights, so they
are recorded from that definition: ReLU6, PyTorch's symmetric padding (timm's default ``pad_type=''``)
and BatchNorm2d's ε = 1e-5 — i.e. our ``padding='symmetric'``, ``bn_eps=1e-5``.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import Preprocessing
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
