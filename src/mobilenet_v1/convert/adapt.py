"""Fit converted weights to what the caller asked for, or say exactly why they do not fit.

Settings that change the weights' meaning (α, activation, padding, BN ε, …) must equal the source's:
asking for ``width_multiplier=0.5`` from α = 1 weights is an error, not a silent re-initialisation.
Settings that do not (input resolution, dropout, output stride, global pooling, the backbone options) are applied.
The class count is special: Google's 1001-class head becomes the 1000-class one by dropping logit 0
("background"), ``num_classes=0`` drops the head, and any other count is refused with the way to get
a new head (``reset_classifier`` / ``train --init``).
"""

from __future__ import annotations

import copy

from ..checkpoint import Pretrained, load_state_into
from ..imagenet import NUM_CLASSES
from ..model import MobileNetV1, ModelConfig

# ModelConfig fields the weights were trained with: they must match the source
FIXED = ("width_multiplier", "variant", "in_chans", "activation", "padding", "bn_eps", "min_depth")
# ModelConfig fields free to change on the same weights
FREE = ("resolution", "dropout", "output_stride", "num_classes", "global_pool")
BACKBONE = ("features_only", "out_indices")


def adapt(model: MobileNetV1, info: Pretrained, where: str, **overrides) -> MobileNetV1:
    """``model`` rebuilt with ``overrides`` (ModelConfig fields and backbone options) applied."""
    unknown = sorted(set(overrides) - set(FIXED) - set(FREE) - set(BACKBONE))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)}; allowed: {', '.join(FIXED + FREE + BACKBONE)}")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    backbone = {k: overrides.pop(k) for k in BACKBONE if k in overrides}
    have = model.config
    for key in FIXED:
        if key in overrides and not _same(getattr(have, key), overrides[key]):
            raise ValueError(
                f"{where}: weights have {_label(key)}={getattr(have, key)!r} but {_label(key)}={overrides[key]!r} "
                "was requested"
            )
    state = model.state_dict()
    info = copy.deepcopy(info)
    want = overrides.get("num_classes", have.num_classes)
    if want != have.num_classes:
        if have.num_classes == NUM_CLASSES + 1 and want == NUM_CLASSES and info.label_offset == 1:
            # logit 0 is "background"; logits 1..1000 are the ImageNet classes in order
            state["classifier.weight"] = state["classifier.weight"][1:]
            state["classifier.bias"] = state["classifier.bias"][1:]
            info.label_offset = 0
        elif want == 0:
            state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
            info.class_names, info.label_offset = None, 0
        else:
            raise ValueError(
                f"{where}: the weights' head has {have.num_classes} classes but num_classes={want} was requested; "
                f"load it as is and call model.reset_classifier({want}) (or train --init) for a new head"
            )
    if not backbone and all(overrides.get(k, getattr(have, k)) == getattr(have, k) for k in FREE):
        model.pretrained = info
        return model.eval()
    config = ModelConfig.from_dict({**have.to_dict(), **overrides, "num_classes": want})
    info.model = config
    if "resolution" in overrides and overrides["resolution"] != info.preprocessing.input_size:
        pre = info.preprocessing
        # keep the crop fraction: a 224 crop of 256 becomes a 160 crop of 182
        resize = int(round(overrides["resolution"] * pre.resize / pre.input_size)) if pre.resize else None
        info.preprocessing = type(pre)(**{**pre.__dict__, "input_size": overrides["resolution"], "resize": resize})
    new = MobileNetV1(config=config, **backbone)
    if backbone.get("features_only"):
        state = {k: v for k, v in state.items() if k.startswith("features.")}
    load_state_into(new, state, where)
    new.pretrained = info
    return new.eval()


def _same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(a)))
    return a == b


def _label(key: str) -> str:
    return "alpha" if key == "width_multiplier" else key
