"""The MobileNet-V1 ``nn.Module``, built layer by layer from :func:`mobilenet_v1.spec.resolve`."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from . import spec
from .config import ModelConfig
from .layers import ConvBNAct

# config.GLOBAL_POOLS, as modules ("": none)
GLOBAL_POOLS = {"avg": lambda: nn.AdaptiveAvgPool2d(1), "max": lambda: nn.AdaptiveMaxPool2d(1), "": nn.Identity}
# When a model carries no recorded preprocessing (``model.pretrained``): ImageNet's statistics, a 87.5% centre crop
IMAGENET_MEAN, IMAGENET_STD, CROP_PCT = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 0.875


class FeatureInfo(list):
    """The maps a backbone returns, as timm describes them: a list of ``{"module", "num_chs", "reduction"}`` with
    timm's accessors, so that code written for ``timm.create_model(..., features_only=True)`` reads it."""

    def channels(self, idx: int | None = None):
        return self._get("num_chs", idx)

    def reduction(self, idx: int | None = None):
        return self._get("reduction", idx)

    def module_name(self, idx: int | None = None):
        return self._get("module", idx)

    def _get(self, key: str, idx: int | None):
        return [f[key] for f in self] if idx is None else self[idx][key]


class MobileNetV1(nn.Module):
    """MobileNet-V1 (Howard et al. 2017, Table 1) with width multiplier α and a backbone API.

    Module names are TF-slim's end points (``features.Conv2d_0``, ``features.Conv2d_1_depthwise``,
    ``features.Conv2d_1_pointwise``, …) so converters map weights one to one. The classifier is
    ``classifier`` (TF-slim ``Logits/Conv2d_1c_1x1``).

    ``features_only=True`` returns the maps at strides 2, 4, 8, 16, 32 (``out_indices`` picks).
    """

    def __init__(
        self,
        width_multiplier: float = 1.0,
        num_classes: int = 1000,
        in_chans: int = 3,
        variant: str = "standard",
        dropout: float = 0.0,
        activation: str = "relu",
        padding: str = "symmetric",
        bn_eps: float = 1e-5,
        output_stride: int = 32,
        min_depth: int = spec.DEFAULT_MIN_DEPTH,
        resolution: int = 224,
        global_pool: str = "avg",
        features_only: bool = False,
        out_indices: Sequence[int] = (0, 1, 2, 3, 4),
        config: ModelConfig | None = None,
    ):
        super().__init__()
        if config is None:
            config = ModelConfig(
                width_multiplier,
                resolution,
                variant,
                num_classes,
                in_chans,
                dropout,
                activation,
                padding,
                bn_eps,
                output_stride,
                min_depth,
                global_pool,
            )
        self.config = config
        layers = config.layers()
        convs = [layer for layer in layers if layer.op not in (spec.OP_POOL, spec.OP_FC)]
        self.features = nn.Sequential(
            OrderedDict(
                (
                    layer.name,
                    ConvBNAct(
                        layer.in_channels,
                        layer.out_channels,
                        layer.kernel,
                        layer.stride,
                        layer.dilation,
                        layer.groups,
                        config.padding,
                        config.activation,
                        config.bn_eps,
                    ),
                )
                for layer in convs
            )
        )
        self.num_features = convs[-1].out_channels
        self.num_classes = config.num_classes
        self.features_only = features_only
        self._taps = spec.feature_layers(layers)
        out_indices = tuple(out_indices)
        if not out_indices or any(not 0 <= i < len(self._taps) for i in out_indices):
            raise ValueError(f"out_indices must be a non-empty subset of 0..{len(self._taps) - 1}; got {out_indices}")
        self.feature_info = FeatureInfo(
            {"module": f"features.{tap.name}", "num_chs": tap.out_channels, "reduction": tap.reduction}
            for tap in (self._taps[i] for i in out_indices)
        )
        self._tap_names = {self._taps[i].name for i in out_indices}
        self.grad_checkpointing = False
        if not features_only:
            self.global_pool = GLOBAL_POOLS[config.global_pool]()
            self.dropout = nn.Dropout(config.dropout)
            self.classifier = nn.Linear(self.num_features, config.num_classes) if config.num_classes else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.config.in_chans:
            raise ValueError(f"expected input of shape (N, {self.config.in_chans}, H, W), got {tuple(x.shape)}")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """The last feature map, or (``features_only``) the list of maps at the selected strides."""
        self._check_input(x)
        if not self.features_only:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                for block in self.features:  # recompute each block's activations in the backward, not store them
                    x = checkpoint(block, x, use_reentrant=False)
                return x
            return self.features(x)
        maps = []
        for name, module in self.features.named_children():
            x = module(x)
            if name in self._tap_names:
                maps.append(x)
                if len(maps) == len(self._tap_names):
                    break
        return maps

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool, dropout and classify the last feature map; ``pre_logits``: stop before the classifier."""
        x = self.global_pool(x)
        if self.config.global_pool:
            x = torch.flatten(x, 1)
        x = self.dropout(x)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor):
        x = self.forward_features(x)
        return x if self.features_only else self.forward_head(x)

    def forward_intermediates(
        self, x: torch.Tensor, indices: int | Sequence[int] | None = None, norm: bool = False,
        stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:  # fmt: skip
        """timm's ``forward_intermediates``: the maps at strides 2, 4, 8, 16, 32 (``indices``: these positions,
        or the last ``n``; all by default) and, unless ``intermediates_only``, the last feature map.
        ``norm`` has no effect (MobileNet-V1 ends in no norm layer); ``stop_early`` stops at the last one asked."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        self._check_input(x)
        n = len(self._taps)
        if isinstance(indices, int):
            wanted = list(range(n - indices, n))
        else:
            wanted = list(range(n) if indices is None else indices)
        if any(not -n <= i < n for i in wanted):
            raise ValueError(f"indices must be within 0..{n - 1}; got {indices!r}")
        wanted = sorted(i % n for i in wanted)
        names = {self._taps[i].name: i for i in wanted}
        last = self._taps[wanted[-1]].name if wanted else None
        intermediates = []
        for name, block in self.features.named_children():
            x = block(x)
            if name in names:
                intermediates.append(x)
            if (stop_early or intermediates_only) and name == last:
                break
        return intermediates if intermediates_only else (x, intermediates)

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the head (fine-tuning on a different class count); ``global_pool``: "avg", "max", or "" (no
        pooling: the forward returns the last feature map; with ``num_classes=0``), as timm's."""
        pool = self.config.global_pool if global_pool is None else global_pool
        self.config = ModelConfig.from_dict({**self.config.to_dict(), "num_classes": num_classes, "global_pool": pool})
        self.num_classes = num_classes
        self.global_pool = GLOBAL_POOLS[pool]()
        self.classifier = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        if num_classes:
            nn.init.normal_(self.classifier.weight, 0.0, 0.01)
            nn.init.zeros_(self.classifier.bias)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward instead of storing them (less memory, more time)."""
        self.grad_checkpointing = enable

    @property
    def pretrained_cfg(self) -> dict:
        """timm's description of the model's input, so ``timm.data.resolve_model_data_config(model)`` and
        ``timm.data.create_transform`` reproduce its preprocessing: the recorded one (``model.pretrained``, set by
        ``from_pretrained`` and the converters), else ImageNet's statistics and a 87.5% centre crop."""
        c = self.config
        pre = getattr(getattr(self, "pretrained", None), "preprocessing", None)
        size = pre.input_size if pre else c.resolution
        crop = (pre.crop_fraction or (size / pre.resize if pre.resize else 1.0)) if pre else CROP_PCT
        return {
            "architecture": "mobilenet_v1",
            "num_classes": c.num_classes,
            "input_size": (c.in_chans, size, size),
            "pool_size": tuple(self._taps[-1].output_hw),
            "crop_pct": crop,
            "crop_mode": "center",
            "interpolation": pre.interpolation.removeprefix("tf1_") if pre else "bilinear",
            "mean": tuple(pre.mean) if pre else IMAGENET_MEAN,
            "std": tuple(pre.std) if pre else IMAGENET_STD,
            "first_conv": "features.Conv2d_0.conv",
            "classifier": "classifier",
        }

    @property
    def default_cfg(self) -> dict:  # timm's older name for pretrained_cfg
        return self.pretrained_cfg
