"""Train the demo world's autoencoder: 32 px icons <-> 8x8x4 latents (L1 + MSE, a touch of KL).

    style-components train-autoencoder DATA_DIR RUN_DIR [--steps 1500] [--batch 64]
    style-components train-autoencoder DATA_DIR RUN_DIR --decoder-of WORLD [--steps 1000]

Writes RUN_DIR/autoencoder.safetensors: an icon-world file holding the autoencoder, the
vocabulary of the dataset's icon names and the latent scale (1 / std of the latents) that
the base model is then trained with (`style-components train-base`).

--decoder-of sharpens a trained world's decoder alone: its encoder and latent scale stay
frozen, so the latents its UNet (and any adapter) learnt are unchanged and nothing downstream
needs retraining. Writes RUN_DIR/icon_world.safetensors: that world with the new decoder.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from .. import files, world
from . import dataset, loop


def run(args: argparse.Namespace) -> dict:
    from accelerate import Accelerator

    torch.manual_seed(args.seed)
    accelerator = Accelerator(cpu=args.cpu, mixed_precision=args.mixed_precision)
    data = dataset.load(args.data)
    pixels = world.to_pixels(data.images)
    if args.decoder_of:
        model = world.IconWorld.load(args.decoder_of)
        model.autoencoder.decoder.requires_grad_(True)
        model.autoencoder.post_quant_conv.requires_grad_(True)
    else:
        model = world.IconWorld(sorted({w for n in data.names for w in world.words(n)}))
    ae = model.autoencoder
    optimizer = torch.optim.AdamW([p for p in ae.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.0)

    def loss_fn(step: int, ae) -> torch.Tensor:
        rng = loop.batch_rng(args.seed, step, accelerator.process_index)
        x = pixels[torch.from_numpy(rng.choice(len(pixels), args.batch))].to(accelerator.device)
        with torch.set_grad_enabled(not args.decoder_of):
            posterior = ae.encode(x).latent_dist
        recon = ae.decode(posterior.mean + posterior.std * loop.gaussian(rng, posterior.mean)).sample
        return (recon - x).abs().mean() + 0.5 * (recon - x).pow(2).mean() + args.kl * posterior.kl().mean()

    settings = {"batch": args.batch, "lr": args.lr, "kl": args.kl, "config": model.autoencoder_config, "seed": args.seed}
    if args.decoder_of:  # (absent otherwise: checkpoints from before the option still resume)
        settings["decoder_of"] = files.short_hash(args.decoder_of)
    result = loop.run(accelerator, args.run_dir, ae, optimizer, loss_fn, steps=args.steps, settings=settings,
                      title="autoencoder", save_every=args.save_every, max_minutes=args.max_minutes,
                      progress=not args.no_progress, restart=args.restart)
    if result["finished"] and accelerator.is_main_process:
        ae = accelerator.unwrap_model(ae).cpu().eval()
        with torch.no_grad():
            latents = torch.cat([ae.encode(pixels[i:i + 256]).latent_dist.mode() for i in range(0, len(pixels), 256)])
            recon = torch.cat([ae.decode(latents[i:i + 256]).sample for i in range(0, len(latents), 256)])
        if not args.decoder_of:  # a sharpened decoder keeps the scale its UNet was trained with
            model.latent_scale = float(1.0 / latents.std())
        result["reconstruction_l1"] = round(float((recon.clamp(-1, 1) - pixels).abs().mean()), 4)
        result["latent_scale"] = round(model.latent_scale, 4)
        if args.decoder_of:
            out = Path(args.run_dir) / "icon_world.safetensors"
            model.save(out, **{**model.meta, "reconstruction_l1": result["reconstruction_l1"]})
        else:
            out = Path(args.run_dir) / "autoencoder.safetensors"
            model.save(out, parts=("autoencoder", "text"), half=False, reconstruction_l1=result["reconstruction_l1"])
        result["autoencoder"] = str(out)
        accelerator.print(f"wrote {out} (reconstruction L1 {result['reconstruction_l1']} on [-1, 1] pixels)")
    return result


def main(argv=None) -> int:
    from .commands import autoencoder_arguments, module_main
    return module_main(__spec__.name, __doc__, autoencoder_arguments, lambda a: print(json.dumps(run(a))), argv)


if __name__ == "__main__":
    raise SystemExit(main())
