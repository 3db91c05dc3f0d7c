"""`style_statnet`: a small CNN whose embedding is built from feature *statistics*, registered with timm.

What carries an icon theme's style is palette, outline, shading and highlights, i.e. the
statistics of low- and mid-level features, not what is drawn (as in neural style transfer,
where style = per-channel feature means/stds). So the network pools the per-channel mean and
standard deviation of its input and of every stage (four stages, stride 2 from the second on,
64 px -> 8 px), concatenates them and maps them (after a BatchNorm) to the embedding: linearly,
or with `hidden > 0` through a one-hidden-layer MLP, so that statistics can combine (a palette
*and* an outline weight) before the cosine geometry is formed.

It is registered in timm's model registry under `style_statnet` when this module is imported
(`Extractor.load` does it before asking timm), so extractor files name it as their
`architecture` and it is rebuilt with `timm.create_model` like any timm backbone.
"""

from __future__ import annotations

import torch
from torch import nn

ARCHITECTURE = "style_statnet"
# Convolutions run channels-last: on a CPU (oneDNN) a training step at 192 px is 1.4x faster
# (benchmarks/encoder_step.py). Only the speed changes, not the function.
MEMORY_FORMAT = torch.channels_last


def _conv(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _stats(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, 2C]: per-channel spatial mean and standard deviation."""
    flat = x.flatten(2).float()
    mean = flat.mean(-1)
    std = (flat.var(-1, unbiased=False) + 1e-5).sqrt()
    return torch.cat([mean, std], 1).to(x.dtype)


class StyleStatNet(nn.Module):
    def __init__(self, num_classes: int = 128, widths=(16, 32, 64, 128), blocks: int = 2, in_chans: int = 3,
                 hidden: int = 0, **_ignored):
        super().__init__()
        self.num_classes = int(num_classes)
        stages, cin = [], in_chans
        for i, w in enumerate(widths):
            layers = [_conv(cin, w, 1 if i == 0 else 2)] + [_conv(w, w, 1) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*layers))
            cin = w
        self.stages = nn.ModuleList(stages)
        self.num_features = 2 * (in_chans + sum(widths))
        self.norm = nn.BatchNorm1d(self.num_features)
        if not self.num_classes:
            self.head = nn.Identity()
        elif hidden:
            self.head = nn.Sequential(nn.Linear(self.num_features, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                                      nn.Linear(hidden, self.num_classes))
        else:
            self.head = nn.Linear(self.num_features, self.num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=MEMORY_FORMAT)
        feats = [_stats(x)]
        for stage in self.stages:
            x = stage(x)
            feats.append(_stats(x))
        return self.norm(torch.cat(feats, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


def style_statnet(pretrained: bool = False, **kwargs) -> StyleStatNet:
    if pretrained:
        raise ValueError("style_statnet has no pretrained weights")
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(key, None)
    return StyleStatNet(**kwargs)


def register() -> None:
    import timm
    from timm.models import register_model

    if not timm.is_model(ARCHITECTURE):
        register_model(style_statnet)


register()
