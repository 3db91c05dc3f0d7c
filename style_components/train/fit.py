"""Train the style encoder with SupCon (theme = label) under `accelerate`, with checkpoints and resume.

    style-components train DATA_DIR RUN_DIR [--steps N] [--batch-themes P --per-theme K] ...

RUN_DIR receives `checkpoint.pt` (model, optimiser, scheduler, step, RNG; written every
--save-every steps and at the end, or when --max-minutes runs out), `history.json` (loss per
step, held-out kNN top-1 every --eval-every steps), `loss.png` and the exported extractor
`extractor.safetensors` (core format, Extractor.load reads it). Running the same command
again resumes from the checkpoint; training only ever sees the non-held-out name families.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from . import config, dataset, encoder, loop
from .supcon import supcon_loss


class BalancedBatches(torch.utils.data.Sampler):
    """Endless-ish batches of `per_theme` images from each of `themes_per_batch` random themes."""

    def __init__(self, labels: np.ndarray, themes_per_batch: int, per_theme: int, steps: int, seed: int):
        self.by_theme = [np.flatnonzero(labels == t) for t in np.unique(labels)]
        self.p = min(themes_per_batch, len(self.by_theme))
        self.k, self.steps, self.seed = per_theme, steps, seed
        self.epoch = 0

    def __len__(self):
        return self.steps

    def __iter__(self):
        rng = np.random.default_rng(self.seed + 7919 * self.epoch)
        self.epoch += 1
        for _ in range(self.steps):
            themes = rng.choice(len(self.by_theme), self.p, replace=False)
            yield np.concatenate([rng.choice(self.by_theme[t], self.k, replace=len(self.by_theme[t]) < self.k)
                                  for t in themes]).tolist()


class _Images(torch.utils.data.Dataset):
    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = torch.from_numpy(images), torch.from_numpy(labels)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]


def knn_top1(train_emb, train_y, query_emb, query_y) -> float:
    """1-NN (cosine) accuracy of queries against a gallery."""
    sims = query_emb @ train_emb.T
    return float((torch.as_tensor(train_y)[sims.argmax(1)] == torch.as_tensor(query_y)).float().mean())


def export(model, path, kwargs: dict, name: str, fp16: bool = True) -> None:
    from ..extract import Extractor

    if fp16:
        # safetensors keeps the dtype; Extractor.load casts to the dtype it is asked for
        clone = encoder.build(encoder.ARCHITECTURE, kwargs)
        clone.load_state_dict({k: v.detach().cpu() for k, v in model.state_dict().items()})
        model = clone.half()
    Extractor.save(model, path, encoder.ARCHITECTURE, kwargs, config.PREPROCESS_NAME, name=name)


def train(args: argparse.Namespace) -> dict:
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    accelerator = Accelerator(cpu=args.cpu)
    set_seed(args.seed)
    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    data = dataset.load(args.data)
    train_part, held = data.subset(~data.heldout), data.subset(data.heldout)
    if len(train_part.labels) == 0:
        raise ValueError("no training images (every name family is held out)")

    kwargs = encoder.model_kwargs(dim=args.dim, width=args.width, depth=args.depth)
    model = encoder.build(encoder.ARCHITECTURE, kwargs)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    schedule = loop.cosine_with_warmup(optimizer, args.steps)
    sampler = BalancedBatches(train_part.labels, args.batch_themes, args.per_theme, args.steps, args.seed)
    loader = torch.utils.data.DataLoader(_Images(train_part.images, train_part.labels), batch_sampler=sampler)

    step, history = 0, {"step": [], "loss": [], "eval_step": [], "eval_top1": [], "seconds": 0.0,
                        "images_seen": 0}
    ckpt = run_dir / "checkpoint.pt"
    if ckpt.exists() and not args.restart:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        if state["kwargs"] != kwargs or state["steps"] != args.steps:
            raise ValueError(f"{ckpt} was made with other settings ({state['kwargs']}, {state['steps']} steps); "
                             f"use --restart to start over")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        step = int(state["step"])
        torch.set_rng_state(state["rng"])
        history = json.loads((run_dir / "history.json").read_text())
        accelerator.print(f"resumed from {ckpt} at step {step}")
    sampler.epoch = step  # a resumed run draws new batches, deterministically
    sampler.steps = args.steps - step

    model, optimizer, loader, schedule = accelerator.prepare(model, optimizer, loader, schedule)
    unwrapped = accelerator.unwrap_model(model)

    def evaluate() -> float:
        g = encoder.embed(unwrapped, train_part.images)
        q = encoder.embed(unwrapped, held.images)
        return knn_top1(g, train_part.labels, q, held.labels)

    def save() -> None:
        if accelerator.is_main_process:
            torch.save({"model": unwrapped.state_dict(), "optimizer": optimizer.state_dict(),
                        "schedule": schedule.state_dict(), "step": step, "rng": torch.get_rng_state(),
                        "kwargs": kwargs, "steps": args.steps}, ckpt)
            (run_dir / "history.json").write_text(json.dumps(history))

    start = time.time() - history["seconds"]
    t0 = time.time()
    stopped = False
    bar = tqdm(total=args.steps, initial=step, desc="train", disable=not accelerator.is_local_main_process
               or args.no_progress, dynamic_ncols=True)
    model.train()
    for images, labels in loader:
        x = encoder.to_input(images.cpu()).to(accelerator.device)
        views = torch.stack([encoder.augment(x), encoder.augment(x)], 1)       # [B, 2, 3, S, S]
        b = views.shape[0]
        emb = model(views.flatten(0, 1)).view(b, 2, -1)
        emb = accelerator.gather(emb) if accelerator.num_processes > 1 else emb
        labels = accelerator.gather(labels) if accelerator.num_processes > 1 else labels
        loss = supcon_loss(emb, labels, args.temperature)
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        optimizer.step()
        schedule.step()
        step += 1
        history["step"].append(step)
        history["loss"].append(loss.item())
        history["images_seen"] += int(b) * accelerator.num_processes
        history["seconds"] = time.time() - start
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", img_s=f"{history['images_seen'] / max(1e-6, history['seconds']):.0f}")
        if args.eval_every and (step % args.eval_every == 0 or step == args.steps) and accelerator.is_main_process:
            top1 = evaluate()
            history["eval_step"].append(step)
            history["eval_top1"].append(top1)
            accelerator.print(f"\nstep {step}: held-out 1-NN top-1 {top1:.3f} ({history['seconds'] / 60:.1f} min)")
        if step % args.save_every == 0:
            save()
        if args.max_minutes and time.time() - t0 > 60 * args.max_minutes and step < args.steps:
            stopped = True
            break
    bar.close()
    save()
    loop.plot_loss(history, run_dir / "loss.png", "style encoder training (SupCon)", log_scale=False)
    result = {"step": step, "steps": args.steps, "finished": step >= args.steps, "minutes": history["seconds"] / 60,
              "run_dir": str(run_dir)}
    if stopped:
        accelerator.print(f"stopped after --max-minutes at step {step}/{args.steps}: run again to resume")
    if step >= args.steps and accelerator.is_main_process:
        export(unwrapped, run_dir / "extractor.safetensors", kwargs, args.name, fp16=not args.fp32)
        result["extractor"] = str(run_dir / "extractor.safetensors")
        accelerator.print(f"wrote {run_dir / 'extractor.safetensors'}")
    return result


def main(argv=None) -> int:
    from .commands import fit_arguments, module_main
    return module_main(__spec__.name, __doc__, fit_arguments, lambda args: print(json.dumps(train(args))), argv)


if __name__ == "__main__":
    raise SystemExit(main())
