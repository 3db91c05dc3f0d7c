"""Train a style adapter on a frozen base (the mission's "modified IP-Adapter").

    style-components train-adapter DATA_DIR RUN_DIR --world W --extractor E --space S [--steps 1200]
    style-components train-adapter IMAGES_DIR RUN_DIR --sd-model SD15_DIR --extractor E --space S  (SD1.x, see sd1.py)

Each training image is its own style reference (`--reference self`, the original method):
its extractor embedding, projected to the style space's K components, is the adapter input.
`--reference group` gives instead the mean components of `--group-size` *other* images of
the same artist (icon theme; with --sd-model, the image's sub-folder): what a user gives at
generation time, and the adapter cannot copy the image's content from its own embedding.
Only the projection and the per-layer `to_v_ip` train (1 token; `--tokens N` adds `to_k_ip`),
initialised from the UNet's own `to_v` as IP-Adapter does, and hooked in by the core's
`inject.apply(trainable=True)`: the same code that generates is the code that trains.
Condition dropout: 5 % style (null style), 5 % name (""), 5 % both. Only names outside the
held-out families train.
Writes RUN_DIR/adapter.safetensors (fp16, the core's adapter format).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import files, inject, world as world_lib
from ..adapter import Adapter
from ..layers import find_attn2
from . import dataset, loop, sd1
from .base import Denoiser, dataset_latents, diffusion_loss, weighting, weighting_title

DROP_STYLE, DROP_TEXT, DROP_BOTH = 0.05, 0.05, 0.05


class StyledDenoiser(nn.Module):
    """Frozen base + trainable adapter hooked into it; forward(latents, t, names, styles, rows)."""

    def __init__(self, base: nn.Module, adapter: Adapter):
        super().__init__()
        self.adapter = adapter
        self.base = base.requires_grad_(False)
        self.handle = inject.apply(base.unet, adapter, adapter.null_input(), trainable=True)

    def forward(self, latents, t, names, styles, rows):
        self.handle.set_styles(styles)
        self.handle.set_rows(rows)
        return self.base(latents, t, names)


def new_adapter(unet: nn.Module, d_in: int, tokens: int = 1, name: str = "") -> Adapter:
    """An adapter for `unet` whose to_v_ip (and to_k_ip) start as the layer's to_v (to_k)."""
    layers = sorted(find_attn2(unet), key=lambda layer: layer.key)
    cross = layers[0].module.to_v.weight.shape[1]
    adapter = Adapter(d_in, cross, [layer.module.to_v.weight.shape[0] for layer in layers],
                      tokens=tokens, with_keys=tokens > 1, name=name)
    with torch.no_grad():
        for layer in layers:
            values = adapter.layer(layer.key)
            values.to_v_ip.weight.copy_(layer.module.to_v.weight)
            if values.to_k_ip is not None:
                values.to_k_ip.weight.copy_(layer.module.to_k.weight)
    return adapter


def style_inputs(images, extractor, space, batch: int = 64) -> torch.Tensor:
    """[N, K] components of every training image (its own style), on the CPU."""
    return space.to_components(extractor.embed_each(list(images), batch)).float()


def group_references(labels: np.ndarray, size: int):
    """A picker: (rows, rng) -> for each row, up to `size` other images with its label (itself when alone).

    The per-label pools are indexed once, so a batch costs its own size, not the dataset's.
    """
    order = np.argsort(labels, kind="stable")
    keys, starts = np.unique(labels[order], return_index=True)
    pools = dict(zip(keys.tolist(), np.split(order, starts[1:])))

    def pick(idx: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
        picks = []
        for i in idx:
            pool = pools[int(labels[i])]
            pool = pool[pool != i] if len(pool) > 1 else pool
            picks.append(rng.choice(pool, min(size, len(pool)), replace=False))
        return picks
    return pick


def condition_dropout(names, rows, rng: np.random.Generator):
    """Drop style (row -> NULL), name (-> ""), or both, 5 % each.

    One uniform draw per row: [0, S) style only, [S, S+B) both, [S+B, S+B+T) name only.
    """
    names, rows = list(names), list(rows)
    for i, u in enumerate(rng.random(len(names))):
        if u < DROP_STYLE + DROP_BOTH:
            rows[i] = inject.NULL
        if DROP_STYLE <= u < DROP_STYLE + DROP_BOTH + DROP_TEXT:
            names[i] = ""
    return names, rows


def names_the_base_knows(names, text: world_lib.NameEncoder) -> tuple[np.ndarray, int]:
    """Names with a word outside the base's vocabulary become "" (its unconditional case, which
    caption dropout trained) rather than the UNKNOWN token, which the base never saw; and their count."""
    known = np.array([name if not text.unknown_words(name) else "" for name in names], dtype=object)
    return known, sum(1 for name, k in zip(names, known) if name and not k)


def icon_world_data(args):
    """The demo world: frozen base, and batches from precomputed latents of the icon dataset."""
    from diffusers import DDPMScheduler

    world = world_lib.IconWorld.load(args.world)
    data = dataset.load(args.data)
    data = data.subset(~data.heldout)  # held-out name families stay unseen, for `evaluate --adapter`
    latents = dataset_latents(world, data)

    def batch(idx, rng):
        return latents[idx]
    names, unknown = names_the_base_knows(data.names, world.text)
    if unknown:
        print(f"{unknown} of {len(names)} training icons have names with words the base never learnt: "
              "they train with the empty name")
    return Denoiser(world), DDPMScheduler(**world_lib.SCHEDULER), list(data.images), names, data.labels, batch


def sd1_data(args):
    """An SD1.x diffusers folder and a captioned image folder (sub-folders: artists); latents encoded per batch."""
    base = sd1.SD1Denoiser(args.sd_model, args.clip_skip)
    paths, captions = sd1.captioned_images(args.data)

    def batch(idx, rng):
        return base.encode(torch.stack([sd1.load_pixels(paths[i], args.resolution) for i in idx]), rng)
    return base, base.noise_scheduler, paths, np.array(captions, dtype=object), sd1.artist_labels(paths, args.data), batch


def run(args: argparse.Namespace) -> dict:
    from accelerate import Accelerator

    from ..extract import Extractor
    from ..space import StyleSpace

    if bool(args.world) == bool(args.sd_model):
        raise SystemExit("train-adapter needs --world (the demo world) or --sd-model (SD1.x), not both")
    from .commands import ADAPTER_DEFAULTS

    defaults = ADAPTER_DEFAULTS["sd1" if args.sd_model else "world"]
    args.batch = defaults["batch"] if args.batch is None else args.batch
    args.lr = defaults["lr"] if args.lr is None else args.lr
    torch.manual_seed(args.seed)
    accelerator = Accelerator(cpu=args.cpu, mixed_precision=args.mixed_precision)
    extractor, space = Extractor.load(args.extractor, accelerator.device), StyleSpace.load(args.space)
    base, noise_scheduler, images, captions, labels, latents_of = (sd1_data if args.sd_model else icon_world_data)(args)
    styles = style_inputs(images, extractor, space)
    extractor.to("cpu")  # its memory goes back to the UNet
    half = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision)
    if half is not None:  # frozen weights stored in the autocast dtype, as IP-Adapter's recipe does
        base.to(half)
    adapter = new_adapter(base.unet, space.k, args.tokens, name=args.name)
    model = StyledDenoiser(base, adapter)
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=args.lr, weight_decay=0.01)

    references = group_references(labels, args.group_size)

    def loss_fn(step: int, model) -> torch.Tensor:
        rng = loop.batch_rng(args.seed, step, accelerator.process_index)
        idx = rng.choice(len(images), args.batch)
        batch_names, rows = condition_dropout(captions[idx], range(len(idx)), rng)
        if args.reference == "group":
            batch_styles = torch.stack([styles[g].mean(0) for g in references(idx, rng)])
        else:
            batch_styles = styles[idx]
        return diffusion_loss(model, latents_of(idx, rng).to(accelerator.device), rng, noise_scheduler, args.snr_gamma,
                              names=batch_names, styles=batch_styles, rows=rows)

    # the files by content: a run resumes from another folder, and not on other models
    base_id = files.short_hash(args.world) if args.world else sd1.model_identity(args.sd_model)
    settings = {"batch": args.batch, "lr": args.lr, "tokens": args.tokens, "k": space.k, "base": base_id,
                "space": files.short_hash(args.space), "extractor": files.short_hash(args.extractor),
                "seed": args.seed, **weighting(args.snr_gamma)}
    if args.reference == "group":  # (absent for self: checkpoints from before the option still resume)
        settings["reference"] = f"group of {args.group_size}"
    if args.sd_model:  # what else a resume must not change
        settings.update(resolution=args.resolution, clip_skip=args.clip_skip)
    result = loop.run(accelerator, args.run_dir, model, optimizer, loss_fn, steps=args.steps, settings=settings,
                      title=f"style adapter ({weighting_title(args.snr_gamma)} loss)", save_every=args.save_every,
                      max_minutes=args.max_minutes, progress=not args.no_progress, restart=args.restart)
    model.handle.remove()
    if result["finished"] and accelerator.is_main_process:
        out = Path(args.run_dir) / "adapter.safetensors"
        adapter = accelerator.unwrap_model(model).adapter.cpu()
        base_name = "sd1" if args.sd_model else world_lib.FORMAT  # models.scan hides icon-world adapters
        adapter.half().save(out, space=space.name, steps=result["step"], base=base_name)
        result["adapter"] = str(out)
        accelerator.print(f"wrote {out}")
    return result


def main(argv=None) -> int:
    from .commands import adapter_arguments, module_main
    return module_main(__spec__.name, __doc__, adapter_arguments, lambda a: print(json.dumps(run(a))), argv)


if __name__ == "__main__":
    raise SystemExit(main())
