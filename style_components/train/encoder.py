"""The style encoder: a small timm-registered backbone, its input rule, style-keeping augmentations.

Why this recipe (icon-theme style is palette, outline, shading and highlights):
- `style_statnet` (style_components/stylenet.py): a plain 4-stage CNN whose embedding is a linear map of the
  per-channel mean and std of its input and of every stage, i.e. colour and texture statistics
  at four scales. On the icon data it starts higher and learns faster than a narrow timm
  ResNet-18 with avg+max pooling (measured: held-out 1-NN 0.39 -> 0.45 in 80 steps, against
  0.30 -> 0.37 for the ResNet); SupCon is applied to the embedding itself, so its cosine
  geometry is the style geometry the PCA then describes;
- augmentations that change content and framing but no colour: random zoom/shift (a zoomed,
  shifted view on the background colour) and horizontal flips; no hue/colour jitter, no blur
  (outlines are style);
- 64 px inputs by default (the rasters as they are). 128 px (`train --size 128` on a 128 px
  dataset) learns faster per step -- held-out 1-NN 0.50 / 0.52 / 0.55 at steps 100 / 200 / 300
  against 0.45 / 0.46 / 0.47 at 64 px from the same rasters -- but costs ~4x the CPU time a step.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .. import extract, stylenet
from ..errors import UsageError
from . import config

ARCHITECTURE = stylenet.ARCHITECTURE


def model_kwargs(dim: int = 128, width: int = 16, depth: int = 2, hidden: int = 0) -> dict:
    """JSON-able timm.create_model kwargs of the encoder (stored in the extractor file)."""
    kwargs = {"widths": [width, 2 * width, 4 * width, 8 * width], "blocks": depth, "num_classes": dim}
    if hidden:
        kwargs["hidden"] = hidden      # omitted when 0: files of the linear-head encoder stay as they were
    return kwargs


def build(architecture: str = ARCHITECTURE, kwargs: dict | None = None) -> torch.nn.Module:
    import timm
    return timm.create_model(architecture, pretrained=False, **(kwargs or model_kwargs()))



def load(path) -> tuple[torch.nn.Module, int]:
    """An icon extractor file -> (its float32 model, the input side its `iconN` rule names)."""
    from ..extract import ICON_RULES, Extractor

    extractor = Extractor.load(path)
    if extractor.preprocess not in ICON_RULES:
        raise UsageError(f"{path}: preprocessing {extractor.preprocess!r} is not an icon encoder's "
                         f"({', '.join(ICON_RULES)})")
    return extractor.model.float(), ICON_RULES[extractor.preprocess]


def to_input(images_u8: torch.Tensor | np.ndarray, size: int = config.INPUT_SIZE) -> torch.Tensor:
    """uint8 [N, S, S, 3] rasters -> normalised float [N, 3, size, size] (square already: bicubic, as extract.fit_icon)."""
    x = torch.as_tensor(np.asarray(images_u8) if not torch.is_tensor(images_u8) else images_u8)
    x = x.permute(0, 3, 1, 2).float().div(255)
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False,
                          antialias=x.shape[-1] > size).clamp(0, 1)
    m, s = mean_std()
    return (x - m) / s


def mean_std(device=None, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """The input normalisation's per-channel mean and std, shaped [1, 3, 1, 1]."""
    as_channels = lambda v: torch.tensor(v, device=device, dtype=dtype).view(1, 3, 1, 1)  # noqa: E731
    return as_channels(extract.IMAGENET_MEAN), as_channels(extract.IMAGENET_STD)


def background_value() -> torch.Tensor:
    m, s = mean_std()
    return (torch.tensor(config.BACKGROUND, dtype=torch.float32).view(1, 3, 1, 1) / 255 - m) / s


def augment(x: torch.Tensor, generator: torch.Generator | None = None, scale=(0.7, 1.25),
            shift: float = 0.15, flip: float = 0.5) -> torch.Tensor:
    """Random zoom (scale >1 = zoom in, crops content), shift and horizontal flip; colours untouched.

    Pixels brought in from outside the image are the dataset's background colour.
    """
    n = x.shape[0]
    dev = x.device
    r = lambda: torch.rand(n, generator=generator).to(dev)  # noqa: E731
    log_s = math.log(scale[0]) + r() * (math.log(scale[1]) - math.log(scale[0]))
    s = torch.exp(log_s)
    sign = torch.where(r() < flip, -1.0, 1.0).to(dev)
    tx, ty = (r() * 2 - 1) * shift, (r() * 2 - 1) * shift
    theta = torch.zeros(n, 2, 3, device=dev)
    theta[:, 0, 0] = sign / s
    theta[:, 1, 1] = 1 / s
    theta[:, 0, 2] = tx
    theta[:, 1, 2] = ty
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    bg = background_value().to(dev, x.dtype)
    out = F.grid_sample(x - bg, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out + bg


def low_res(x: torch.Tensor, generator: torch.Generator | None = None, p: float = 0.5,
            smallest: int = 32) -> torch.Tensor:
    """A fraction p of the views area-averaged to a random side in [smallest, S/2] and scaled back
    as `to_input` scales a small icon (bicubic, clamped): the same style seen as a thumbnail or at
    the demo world's 32 px, so that one encoder reads full-size references and small icons alike."""
    n, side = x.shape[0], x.shape[-1]
    pick = torch.rand(n, generator=generator) < p
    sides = torch.randint(smallest, max(smallest, side // 2) + 1, (n,), generator=generator)
    if not pick.any():
        return x
    m, s = mean_std(x.device, x.dtype)
    out = x.clone()
    for small in sides[pick].unique().tolist():      # one resize per side, not per image
        rows = torch.nonzero(pick & (sides == small)).flatten().to(x.device)
        shrunk = F.interpolate(x[rows], size=(small, small), mode="area")
        grown = F.interpolate(shrunk, size=(side, side), mode="bicubic", align_corners=False)
        out[rows] = torch.maximum(torch.minimum(grown, (1 - m) / s), -m / s)   # to_input's clamp to [0, 1]
    return out


# --- embedding ----------------------------------------------------------------------------

TTA_VIEWS: tuple[tuple[float, bool], ...] = ((1.0, False), (1.0, True), (1.15, False), (1.15, True))


def _view(x: torch.Tensor, zoom: float, flip: bool) -> torch.Tensor:
    if zoom == 1.0 and not flip:
        return x
    n = x.shape[0]
    theta = torch.zeros(n, 2, 3, device=x.device)
    theta[:, 0, 0] = (-1.0 if flip else 1.0) / zoom
    theta[:, 1, 1] = 1 / zoom
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    bg = background_value().to(x.device, x.dtype)
    return F.grid_sample(x - bg, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + bg


@torch.no_grad()
def embed(model: torch.nn.Module, images_u8, batch: int = 256, tta: bool = False,
          size: int = config.INPUT_SIZE, normalize: bool = True) -> torch.Tensor:
    """uint8 [N, S, S, 3] -> [N, D] embeddings (L2-normalised unless normalize=False).

    With tta, the mean of the normalised embeddings of TTA_VIEWS (zooms x flips).
    """
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    outs = []
    views: Sequence[tuple[float, bool]] = TTA_VIEWS if tta else ((1.0, False),)
    for start in range(0, len(images_u8), batch):
        x = to_input(images_u8[start:start + batch], size).to(dev)
        acc = 0
        for zoom, flip in views:
            e = model(_view(x, zoom, flip)).float()
            acc = acc + (F.normalize(e, dim=-1) if (normalize or tta) else e)
        outs.append((acc / len(views)).cpu())
    model.train(was_training)
    out = torch.cat(outs)
    return F.normalize(out, dim=-1) if normalize else out
