"""The MobileNet-V1 ``nn.Module``, built layer by layer from :func:`mobilenet_v1.spec.resolve`."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from . import spec
from .config import ModelConfig
from .layers import ConvBNAct

GLOBAL_POOLS = {"avg": nn.AdaptiveAvgPool2d, "max": nn.AdaptiveMaxPool2d}  # config.GLOBAL_POOLS, as modules


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
        taps = spec.feature_layers(layers)
        out_indices = tuple(out_indices)
        if not out_indices or any(not 0 <= i < len(taps) for i in out_indices):
            raise ValueError(f"out_indices must be a non-empty subset of 0..{len(taps) - 1}; got {out_indices}")
        self.feature_info = [
            {"module": f"features.{taps[i].name}", "num_chs": taps[i].out_channels, "reduction": taps[i].feature_stride}
            for i in out_indices
        ]
        self._tap_names = {taps[i].name for i in out_indices}
        if not features_only:
            self.global_pool = GLOBAL_POOLS[config.global_pool](1)
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
        x = self.dropout(torch.flatten(self.global_pool(x), 1))
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor):
        x = self.forward_features(x)
        return x if self.features_only else self.forward_head(x)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head (fine-tuning on a different class count)."""
        self.config = ModelConfig.from_dict({**self.config.to_dict(), "num_classes": num_classes})
        self.num_classes = num_classes
        self.classifier = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        if num_classes:
            nn.init.normal_(self.classifier.weight, 0.0, 0.01)
            nn.init.zeros_(self.classifier.bias)
