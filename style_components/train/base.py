"""Train the demo world's base model: icon name -> icon, with no style information.

    style-components train-base DATA_DIR RUN_DIR --autoencoder AE.safetensors [--steps 2400]

The autoencoder is frozen; its latents of every dataset image (all themes, all names) are
computed once. The UNet (ldm's SD1 class, tiny) and the name encoder learn v-prediction with
min-SNR-5 loss weighting (Hang et al. 2023), which converges several times faster than plain
epsilon loss; 10 % of names are dropped to "" so that classifier-free guidance works.
Writes RUN_DIR/icon_world.safetensors (fp16) and RUN_DIR/samples.png.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import files, world as world_lib
from . import config, dataset, loop


class Denoiser(nn.Module):
    """UNet + name encoder: what the base trains (and the adapter trainer keeps frozen)."""

    def __init__(self, world: world_lib.IconWorld):
        super().__init__()
        self.unet, self.text = world.unet, world.text

    def forward(self, latents, t, names):
        return self.unet(latents, t, context=self.text(names))


def diffusion_loss(model, latents: torch.Tensor, rng: np.random.Generator, noise_scheduler,
                   snr_gamma: float = config.SNR_GAMMA, **condition) -> torch.Tensor:
    """Min-SNR-weighted diffusion loss of one batch (noise and timesteps drawn from `rng`);
    `model(noisy, t, **condition)` predicts what the scheduler's `prediction_type` says
    (v for the demo world, epsilon for SD1.x). snr_gamma <= 0: the plain MSE of that prediction,
    every timestep alike (min-SNR gives v's noisiest steps ~SNR of the weight: t 900 ~1/40)."""
    b = latents.shape[0]
    noise = loop.gaussian(rng, latents)
    t = torch.from_numpy(rng.integers(0, noise_scheduler.config.num_train_timesteps, b)).to(latents.device)
    noisy = noise_scheduler.add_noise(latents, noise, t)
    alpha_bar = noise_scheduler.alphas_cumprod.to(latents.device)[t]
    snr = alpha_bar / (1 - alpha_bar)
    v = noise_scheduler.config.prediction_type == "v_prediction"
    target = noise_scheduler.get_velocity(latents, noise, t) if v else noise
    weight = torch.clamp(snr, max=snr_gamma) / (snr + 1 if v else snr) if snr_gamma > 0 else torch.ones_like(snr)
    per_item = (model(noisy, t, **condition).float() - target).pow(2).mean(dim=(1, 2, 3))
    return (weight * per_item).mean()


def weighting(snr_gamma: float) -> dict:
    """The loss weighting as a checkpoint setting; absent at the default, so that checkpoints
    from before the option still resume."""
    return {} if snr_gamma == config.SNR_GAMMA else {"snr_gamma": snr_gamma}


def weighting_title(snr_gamma: float) -> str:
    return f"min-SNR-{snr_gamma:g}" if snr_gamma > 0 else "plain"


def dataset_latents(world, data, batch: int = 256) -> torch.Tensor:
    pixels = world_lib.to_pixels(data.images)
    return torch.cat([world.encode(pixels[i:i + batch]) for i in range(0, len(pixels), batch)])


def drop(names, rng: np.random.Generator, p: float) -> list[str]:
    return [n if rng.random() >= p else "" for n in names]


def run(args: argparse.Namespace) -> dict:
    from accelerate import Accelerator
    from diffusers import DDPMScheduler

    torch.manual_seed(args.seed)
    accelerator = Accelerator(cpu=args.cpu, mixed_precision=args.mixed_precision)
    ae_world = world_lib.IconWorld.load(args.autoencoder, parts=("autoencoder",))
    data = dataset.load(args.data)
    vocab = sorted({w for n in data.names for w in world_lib.words(n)})
    width = world_lib.UNET["model_channels"] if args.width is None else args.width
    if width <= 0 or width % 32:
        raise SystemExit(f"--width {width}: the UNet's width must be a positive multiple of 32 "
                         "(ldm normalises every block with 32 groups)")
    world = world_lib.IconWorld(vocab, ae_world.latent_scale, unet_config={**world_lib.UNET, "model_channels": width},
                                autoencoder_config=ae_world.autoencoder_config)
    world.autoencoder.load_state_dict(ae_world.autoencoder.state_dict())
    world.autoencoder.requires_grad_(False).eval()
    latents = dataset_latents(world, data)
    names = np.array(data.names)
    noise_scheduler = DDPMScheduler(**world_lib.SCHEDULER)
    model = Denoiser(world)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)

    def loss_fn(step: int, model) -> torch.Tensor:
        rng = loop.batch_rng(args.seed, step, accelerator.process_index)
        idx = rng.choice(len(latents), args.batch)
        return diffusion_loss(model, latents[idx].to(accelerator.device), rng, noise_scheduler, args.snr_gamma,
                              names=drop(names[idx], rng, args.caption_dropout))

    settings = {"batch": args.batch, "lr": args.lr, "caption_dropout": args.caption_dropout,
                "unet": world.unet_config, "vocab": vocab, "seed": args.seed,
                "autoencoder": files.short_hash(args.autoencoder), **weighting(args.snr_gamma)}
    result = loop.run(accelerator, args.run_dir, model, optimizer, loss_fn, steps=args.steps, settings=settings,
                      title=f"base model ({weighting_title(args.snr_gamma)} v-loss)", save_every=args.save_every,
                      max_minutes=args.max_minutes, progress=not args.no_progress, restart=args.restart)
    if result["finished"] and accelerator.is_main_process:
        world = world.cpu().eval().requires_grad_(False)
        out = Path(args.run_dir) / "icon_world.safetensors"
        world.save(out, steps=args.steps)
        result["world"] = str(out)
        accelerator.print(f"wrote {out}")
        if args.samples:
            save_samples(world_lib.IconWorld.load(out), data, Path(args.run_dir) / "samples.png", n_names=args.samples)
            accelerator.print(f"wrote {Path(args.run_dir) / 'samples.png'}")
    return result


def save_samples(world, data, path, n_names: int = 12, per_name: int = 8, seed: int = 0) -> None:
    """A grid: each row one icon name (the most widely drawn), seeds across."""
    from PIL import Image

    from ..generate import generate, grid
    counts = Counter(data.names)
    chosen = sorted(counts, key=lambda n: (-counts[n], n))[:n_names]
    names = [n for n in chosen for _ in range(per_name)]
    images = generate(world, names, [seed + i for i in range(len(names))])
    Image.fromarray(grid(images, per_name, scale=2)).save(path)


def main(argv=None) -> int:
    from .commands import base_arguments, module_main
    return module_main(__spec__.name, __doc__, base_arguments, lambda a: print(json.dumps(run(a))), argv)


if __name__ == "__main__":
    raise SystemExit(main())
