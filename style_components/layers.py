"""Where the style goes: a UNet's cross-attention (attn2) layers, named host-independently.

Works on ldm/sgm `UNetModel` (A1111's SD1 and SDXL) and diffusers' `UNet2DConditionModel`.
Every layer gets a block path in diffusers' terms ("down.2.1" = down level 2, attention 1;
"mid"; "up.1.0"), its place in call order (down, mid, up: the order weights are given in)
and its IP-Adapter key (down, up, mid: the order IP-Adapter files number layers in).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import IncompatibleModelError, UsageError

_DIFFUSERS = re.compile(r"(down|up)_blocks\.(\d+)\.attentions\.(\d+)\.transformer_blocks\.(\d+)\.attn2$")
_DIFFUSERS_MID = re.compile(r"mid_block\.attentions\.(\d+)\.transformer_blocks\.(\d+)\.attn2$")
_LDM = re.compile(r"(input|output)_blocks\.(\d+)\.\d+\.transformer_blocks\.(\d+)\.attn2$")
_LDM_MID = re.compile(r"middle_block\.\d+\.transformer_blocks\.(\d+)\.attn2$")
if TYPE_CHECKING:  # torch is not imported here: params.py reads PRESET_NAMES without loading it
    from torch import nn

_CALL_ORDER = {"down": 0, "mid": 1, "up": 2}
_KEY_ORDER = {"down": 0, "up": 1, "mid": 2}

# Named per-layer weight presets, as sets of block paths (a path selects itself and everything under it).
PRESETS: dict[str, dict[str, tuple[str, ...]]] = {
    # InstantStyle: up_blocks.1 carries style in SD1.5 (up_blocks.0.attentions.1 in SDXL).
    "style": {"sd1": ("up.1",), "sdxl": ("up.0.1",)},
    # Model-merge lore: the highest-resolution blocks carry texture and detail.
    "texture": {"sd1": ("down.0", "up.3"), "sdxl": ("down.1", "up.1")},
    # InstantStyle's layout block plus the middle: composition and semantics.
    "composition": {"sd1": ("down.2", "mid"), "sdxl": ("down.2.1", "mid")},
}
PRESET_NAMES = ("all", *PRESETS)


@dataclass(frozen=True)
class Attn2:
    module: nn.Module
    name: str    # path in the UNet
    block: str   # "down.<level>.<attention>", "mid" or "up.<level>.<attention>"
    depth: int   # transformer block index within the attention
    order: int   # position in call order
    key: int     # IP-Adapter key: 1, 3, 5, ...

    @property
    def kind(self) -> str:
        return self.block.split(".")[0]


def find_attn2(unet: nn.Module) -> list[Attn2]:
    """The UNet's attn2 layers in call order; raises if it has none we recognise."""
    found = []
    levels = _ldm_levels(unet)
    for name, module in unet.named_modules():
        if levels is None and (m := _LDM.search(name)):
            # ldm blocks are numbered from the UNetModel: a wrapper around it hides their levels
            inner = name[:m.start()].rstrip(".")
            raise IncompatibleModelError(
                f"{type(unet).__name__} is not the UNet itself: pass the UNetModel inside it (.{inner}, e.g. "
                "A1111's sd_model.model.diffusion_model)" if inner else
                f"{type(unet).__name__} has ldm blocks but no num_res_blocks to number them by")
        place = _place(name, levels)
        if place is not None:
            found.append((place, name, module))
    if not found:
        raise IncompatibleModelError(f"no cross-attention layers found in {type(unet).__name__}")
    by_key = sorted(found, key=lambda f: (_KEY_ORDER[f[0][0]], f[0][1:]))
    key = {id(f[2]): 2 * i + 1 for i, f in enumerate(by_key)}
    by_call = sorted(found, key=lambda f: (_CALL_ORDER[f[0][0]], f[0][1:]))
    return [Attn2(module, name, _block_path(place), place[3], i, key[id(module)])
            for i, (place, name, module) in enumerate(by_call)]


def arch(layers: list[Attn2]) -> str:
    from .adapter import ARCHS
    return ARCHS.get(len(layers), f"{len(layers)}-layer")


def preset_weights(preset: str, layers: list[Attn2]) -> list[float]:
    """Per-layer weights (call order) of a named preset: 1 on its blocks, 0 elsewhere."""
    if preset == "all":
        return [1.0] * len(layers)
    if preset not in PRESETS:
        raise UsageError(f"unknown block preset {preset!r}; choose one of {', '.join(PRESET_NAMES)}")
    blocks = PRESETS[preset].get(arch(layers))
    if blocks is None:
        raise IncompatibleModelError(f"preset {preset!r} is defined for SD1 and SDXL, not a {arch(layers)} UNet")
    return [1.0 if any(layer.block == b or layer.block.startswith(b + ".") for b in blocks) else 0.0
            for layer in layers]


def _block_path(place: tuple) -> str:
    kind, level, attention, _ = place
    return "mid" if kind == "mid" else f"{kind}.{level}.{attention}"


def _place(name: str, levels) -> tuple[str, int, int, int] | None:
    """(kind, level, attention, depth) of an attn2 module name, or None for any other module."""
    if m := _DIFFUSERS.search(name):
        return (m[1], int(m[2]), int(m[3]), int(m[4]))
    if m := _DIFFUSERS_MID.search(name):
        return ("mid", 0, int(m[1]), int(m[2]))
    if (m := _LDM.search(name)) and levels is not None:
        kind = "down" if m[1] == "input" else "up"
        level, attention = levels[kind][int(m[2])]
        return (kind, level, attention, int(m[3]))
    if m := _LDM_MID.search(name):
        return ("mid", 0, 0, int(m[1]))
    return None


def _ldm_levels(unet: nn.Module):
    """ldm numbers blocks flat (input_blocks.0..11); map each index to (level, position in level).

    Input block 0 is conv_in; each level then has num_res_blocks blocks plus a downsample
    (except the last level). Output levels run from the lowest resolution, num_res_blocks + 1 each.
    """
    n = getattr(unet, "num_res_blocks", None)
    if n is None or not hasattr(unet, "input_blocks"):
        return None
    n = list(n) if not isinstance(n, int) else [n] * (len(unet.input_blocks) // (n + 1))
    down, up, i = {}, {}, 1
    for level, count in enumerate(n):
        for pos in range(count + (level < len(n) - 1)):
            down[i] = (level, pos)
            i += 1
    j = 0
    for up_level, count in enumerate(reversed(n)):
        for pos in range(count + 1):
            up[j] = (up_level, pos)
            j += 1
    return {"down": down, "up": up}
