"""Sampling the demo world, with or without a style: the core's features on a real model.

`generate(world, names, seeds, ...)` runs classifier-free guidance with a diffusers
scheduler; given an adapter and one style input per image it hooks the style in with
`inject.apply` exactly as the A1111 extension does (cond rows: the image's style, uncond
rows: the null style) and steps `set_progress` so start/end act on the schedule.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from . import inject, world as world_lib
from .errors import UsageError


def scheduler(kind: str = "dpm"):
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler
    if kind == "dpm":
        return DPMSolverMultistepScheduler(**world_lib.SCHEDULER)
    if kind == "ddim":  # DDIM clips x0 to [-1, 1] by default: right for pixels, wrong for unit-variance latents
        return DDIMScheduler(**world_lib.SCHEDULER, clip_sample=False)
    raise UsageError(f"unknown sampler {kind!r}: dpm or ddim")


def initial_noise(seeds: Sequence[int], shape: tuple[int, ...]) -> torch.Tensor:
    """One noise tensor per seed: an image depends on its own seed, not on its batch."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])


@torch.no_grad()
def generate(world, names: Sequence[str], seeds: Sequence[int], *, steps: int = 20, guidance: float = 4.0,
             adapter=None, styles: torch.Tensor | None = None, strength: float = 1.0, weights="all",
             start: float = 0.0, end: float = 1.0, sampler: str = "dpm") -> np.ndarray:
    """Icons for `names` (one per seed) -> uint8 [N, 32, 32, 3].

    styles: [N, adapter.d_in] style inputs (components) per image, used when `adapter` is given.
    """
    names, seeds = list(names), list(seeds)
    if len(names) != len(seeds):
        raise UsageError(f"{len(names)} names for {len(seeds)} seeds")
    n = len(names)
    size = world.unet_config["image_size"]
    latents = initial_noise(seeds, (world.unet_config["in_channels"], size, size))
    context = world.text(names + [""] * n)  # cond rows, then uncond rows (empty name)
    sched = scheduler(sampler)
    sched.set_timesteps(steps)
    latents = latents * sched.init_noise_sigma
    handle = None
    if adapter is not None and styles is not None:  # strength 0 installs no hook (inject)
        styles = torch.as_tensor(styles, dtype=torch.float32).reshape(n, -1)
        handle = inject.apply(world.unet, adapter, styles, strength=strength, weights=weights, start=start,
                              end=end, rows=inject.cfg_rows(n))
    try:
        for i, t in enumerate(sched.timesteps):
            if handle is not None:
                handle.set_progress(i / len(sched.timesteps))
            x = sched.scale_model_input(torch.cat([latents, latents]), t)
            out = world.unet(x, torch.full((2 * n,), int(t)), context=context)
            cond, uncond = out.chunk(2)
            latents = sched.step(uncond + guidance * (cond - uncond), t, latents).prev_sample
    finally:
        if handle is not None:
            handle.remove()
    return world_lib.to_uint8(world.decode(latents))


def grid(images: np.ndarray, columns: int, scale: int = 1, pad: int = 2, background=255) -> np.ndarray:
    """uint8 [N, H, W, 3] -> one uint8 image, row-major, `pad` px between cells."""
    n, h, w, _ = images.shape
    if scale > 1:
        images = images.repeat(scale, 1).repeat(scale, 2)
        h, w = h * scale, w * scale
    rows = -(-n // columns)
    out = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, 3), background, np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, columns)
        out[pad + r * (h + pad):pad + r * (h + pad) + h, pad + c * (w + pad):pad + c * (w + pad) + w] = im
    return out
