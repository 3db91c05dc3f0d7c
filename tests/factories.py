"""Small adapters and style spaces with random weights, built the way real files are."""

from __future__ import annotations

import torch

from style_components.adapter import Adapter
from style_components.layers import find_attn2


def adapter_for(unet, d_in: int = 30, tokens: int = 1, hidden: int | None = 60, with_keys: bool | None = None,
                seed: int = 0) -> Adapter:
    """An adapter whose layer shapes fit `unet`, with non-trivial random weights everywhere."""
    layers = sorted(find_attn2(unet), key=lambda l: l.key)
    cross = layers[0].module.to_v.weight.shape[1]
    torch.manual_seed(seed)
    adapter = Adapter(d_in, cross, [l.module.to_v.weight.shape[0] for l in layers], tokens=tokens, hidden=hidden,
                      with_keys=tokens > 1 if with_keys is None else with_keys, name="test-adapter")
    with torch.no_grad():  # LayerNorm starts at identity; make it matter
        adapter.image_proj.norm.weight.normal_(1.0, 0.2)
        adapter.image_proj.norm.bias.normal_(0.0, 0.2)
    return adapter.eval().requires_grad_(False)
