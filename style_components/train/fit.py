"""Train the style encoder (theme = label; SupCon, or `--loss ce`) under `accelerate`, with checkpoints and resume.

    style-components train DATA_DIR RUN_DIR [--steps N] [--batch-themes P --per-theme K] ...

The loop is `loop.run` (checkpoint.pt, history.json with the held-out 1-NN top-1 every
--eval-every steps, loss.png; running the same command again resumes); batches are balanced
over themes and drawn, with their augmentations, from the step's seed. At the last step the
extractor is exported as `extractor.safetensors` (core format, Extractor.load reads it).
Training only ever sees the non-held-out name families.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from ..errors import UsageError
from . import config, dataset, encoder, loop
from .classify import WithThemeHead, cosine_ce_loss, encoder_of
from .supcon import supcon_loss


def balanced_batch(rng: np.random.Generator, by_theme: list[np.ndarray], themes: int, per_theme: int) -> np.ndarray:
    """Indices of `per_theme` images from each of `themes` random themes (SupCon needs positives)."""
    chosen = rng.choice(len(by_theme), min(themes, len(by_theme)), replace=False)
    return np.concatenate([rng.choice(by_theme[t], per_theme, replace=len(by_theme[t]) < per_theme) for t in chosen])


def knn_top1(train_emb, train_y, query_emb, query_y) -> float:
    """1-NN (cosine) accuracy of queries against a gallery."""
    sims = query_emb @ train_emb.T
    return float((torch.as_tensor(train_y)[sims.argmax(1)] == torch.as_tensor(query_y)).float().mean())


def export(model, path, kwargs: dict, name: str, fp16: bool = True, size: int = config.INPUT_SIZE) -> None:
    from ..extract import Extractor

    if fp16:
        # safetensors keeps the dtype; Extractor.load casts to the dtype it is asked for
        clone = encoder.build(encoder.ARCHITECTURE, kwargs)
        clone.load_state_dict({k: v.detach().cpu() for k, v in model.state_dict().items()})
        model = clone.half()
    Extractor.save(model, path, encoder.ARCHITECTURE, kwargs, config.preprocess_name(size), name=name)


def gather_keeping_grad(accelerator, x: torch.Tensor) -> torch.Tensor:
    """Every process's x, concatenated, with this process's own part still carrying its gradient
    (all_gather is not differentiable: the loss on the gathered batch would have no grad_fn).
    Each process's gradient then flows through its own part, as in SimCLR/SupCon's multi-GPU code."""
    gathered = accelerator.gather(x.detach())
    n, r = x.shape[0], accelerator.process_index
    return torch.cat([gathered[: r * n], x, gathered[(r + 1) * n:]])


def train(args: argparse.Namespace) -> dict:
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from ..extract import ICON_SIDES

    if args.size not in ICON_SIDES:
        raise UsageError(f"--size {args.size}: an icon encoder takes {', '.join(map(str, ICON_SIDES))} px")
    accelerator = Accelerator(cpu=args.cpu, mixed_precision=args.mixed_precision)
    set_seed(args.seed)
    data = dataset.load(args.data)
    train_part, held = data.subset(~data.heldout), data.subset(data.heldout)
    if len(train_part.labels) == 0:
        raise UsageError("no training images (every name family is held out)")
    by_theme = [np.flatnonzero(train_part.labels == t) for t in np.unique(train_part.labels)]
    labels = torch.from_numpy(train_part.labels)

    kwargs = encoder.model_kwargs(dim=args.dim, width=args.width, depth=args.depth, hidden=args.hidden)
    model = encoder.build(encoder.ARCHITECTURE, kwargs)
    if args.loss == "ce":   # one learned direction per theme beside the encoder; not exported
        model = WithThemeHead(model, len(data.themes), args.dim)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)

    def view(x: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        x = encoder.augment(x, rng)
        return encoder.low_res(x, rng, args.low_res) if args.low_res else x

    def loss_fn(step: int, model) -> torch.Tensor:
        rng = loop.batch_rng(args.seed, step, accelerator.process_index)
        idx = balanced_batch(rng, by_theme, args.batch_themes, args.per_theme)
        views_rng = torch.Generator().manual_seed(int(rng.integers(2 ** 62)))
        x = encoder.to_input(train_part.images[idx], args.size).to(accelerator.device)
        views = torch.stack([view(x, views_rng), view(x, views_rng)], 1)  # [B, 2, 3, S, S]
        emb = model(views.flatten(0, 1)).view(len(idx), 2, -1)
        y = labels[idx].to(accelerator.device)
        if args.loss == "ce":                   # per-sample: each process's own batch is enough
            return cosine_ce_loss(emb, accelerator.unwrap_model(model).directions, y, args.temperature)
        if accelerator.num_processes > 1:       # SupCon contrasts the whole global batch
            emb, y = gather_keeping_grad(accelerator, emb), accelerator.gather(y)
        return supcon_loss(emb, y, args.temperature)

    def held_out_top1(model) -> float:
        model = encoder_of(model)
        return knn_top1(encoder.embed(model, train_part.images, size=args.size), train_part.labels,
                        encoder.embed(model, held.images, size=args.size), held.labels)

    settings = {"model": kwargs, "lr": args.lr, "weight_decay": args.weight_decay, "temperature": args.temperature,
                "batch_themes": args.batch_themes, "per_theme": args.per_theme, "seed": args.seed}
    if args.size != config.INPUT_SIZE:  # only then: checkpoints of 64 px runs resume as before
        settings["size"] = args.size
    if args.loss != "supcon":           # likewise
        settings["loss"] = args.loss
    if args.low_res:
        settings["low_res"] = args.low_res
    result = loop.run(accelerator, args.run_dir, model, optimizer, loss_fn, steps=args.steps, settings=settings,
                      title=f"style encoder ({'SupCon' if args.loss == 'supcon' else 'cosine-softmax CE'})",
                      save_every=args.save_every, max_minutes=args.max_minutes,
                      progress=not args.no_progress, restart=args.restart, evaluate=held_out_top1,
                      eval_every=args.eval_every, eval_label="held-out 1-NN top-1")
    if result["finished"] and accelerator.is_main_process:
        path = Path(args.run_dir) / "extractor.safetensors"
        trained = accelerator.unwrap_model(model)
        export(encoder_of(trained), path, kwargs, args.name, fp16=not args.fp32, size=args.size)
        result["extractor"] = str(path)
        accelerator.print(f"wrote {path}")
    return result


def main(argv=None) -> int:
    from .commands import fit_arguments, module_main
    return module_main(__spec__.name, __doc__, fit_arguments, lambda args: print(json.dumps(train(args))), argv)


if __name__ == "__main__":
    raise SystemExit(main())
