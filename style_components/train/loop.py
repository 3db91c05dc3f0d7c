"""One resumable training loop under `accelerate` for every trainer (encoder, autoencoder, base, adapter).

A trainer gives a model, its optimiser and `loss_fn(step, model) -> loss`; batches (and their
augmentations) are drawn from a generator seeded by the step, so a resumed run continues
exactly. RUN_DIR receives `checkpoint.pt` (every `save_every` steps, at the end, or when
`max_minutes` run out), `history.json` (loss per step; `evaluate(model)` every `eval_every`
steps when given) and `loss.png`. Running the same command again resumes.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .. import files
from ..errors import UsageError


# glibc's mallopt parameters and their defaults (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
TRIM_THRESHOLD_DEFAULT, MMAP_MAX_DEFAULT = 128 * 1024, 65536
KEEP_FREED_MEMORY = "STYLE_COMPONENTS_KEEP_FREED_MEMORY"   # "0" leaves glibc's defaults alone


@contextmanager
def freed_memory_kept(active: bool = True):
    """While training on a CPU, glibc keeps freed memory for the next step instead of handing it
    back to the kernel.

    Every step allocates activations of hundreds of MB (the encoder at 192 px: 150 MB a layer);
    glibc serves blocks over 32 MB with mmap and unmaps them when freed, so each step
    page-faults all of them in again, and a third of the CPU went to the kernel. Kept in the heap,
    a 192 px encoder step is 1.9x faster (benchmarks/encoder_step.py); the price is resident memory
    at the step's peak plus fragmentation (3.4 -> 6.5 GB at 192 px, README). The defaults come back
    afterwards: a host process that trains in-process keeps its own allocator behaviour. Elsewhere
    than glibc (macOS, musl) this does nothing, nor with STYLE_COMPONENTS_KEEP_FREED_MEMORY=0 (for
    a machine short of memory: slower steps at the lower peak)."""
    libc = _glibc() if active and os.environ.get(KEEP_FREED_MEMORY, "1") != "0" else None
    if libc is not None:
        libc.mallopt(M_MMAP_MAX, 0)               # large blocks from the heap, reused
        libc.mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1)  # and the heap not trimmed after each step
    try:
        yield libc is not None
    finally:
        if libc is not None:
            libc.mallopt(M_MMAP_MAX, MMAP_MAX_DEFAULT)
            libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_DEFAULT)


def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version   # glibc's own symbol: musl has no mallopt parameters to speak of
    except (OSError, AttributeError):
        return None
    return libc


def cosine_with_warmup(optimizer, steps: int, warmup_fraction: float = 0.05):
    warmup = max(1, int(warmup_fraction * steps))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))


def plot_loss(history: dict, path, title: str, eval_label: str = "held-out metric") -> None:
    """Loss per step and its running mean (log scale); the `eval` values on a second axis when recorded."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    steps, losses = history["step"], history["loss"]
    ax.plot(steps, losses, lw=0.6, alpha=0.4, label="loss")
    if len(losses) >= 20:
        w = max(5, len(losses) // 50)
        ax.plot(steps[w - 1:], np.convolve(losses, np.ones(w) / w, mode="valid"), lw=1.5, label=f"mean of {w}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    if history.get("eval_step"):
        ax2 = ax.twinx()
        ax2.plot(history["eval_step"], history["eval"], "o-", color="C3", label=eval_label)
        ax2.set_ylabel(eval_label)
        ax2.set_ylim(0, 1)
        ax2.legend(loc="center right")
    ax.legend(loc="upper right")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(accelerator, run_dir, model: torch.nn.Module, optimizer, loss_fn: Callable[[int, torch.nn.Module], torch.Tensor],
        *, steps: int, settings: dict, title: str, save_every: int = 200, max_minutes: float = 0,
        progress: bool = True, restart: bool = False, evaluate: Callable[[torch.nn.Module], float] | None = None,
        eval_every: int = 0, eval_label: str = "held-out metric") -> dict:
    """Train `model` to `steps`; returns {"step", "steps", "finished", "minutes", "run_dir"}.

    settings: what must not change across a resume (sizes, learning rate). `steps` may: a run
    can be lengthened or cut short, the learning-rate schedule follows the new length.
    evaluate: called on the unwrapped model (main process) every `eval_every` steps and at the
    last step; its values go to history["eval"] and the loss plot.
    """
    from tqdm.auto import tqdm

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    schedule = cosine_with_warmup(optimizer, steps)
    ckpt = run_dir / "checkpoint.pt"
    step, history = 0, {"step": [], "loss": [], "seconds": 0.0}
    frozen = {name for name, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad}
    if ckpt.exists() and not restart:
        try:
            state = torch.load(ckpt, map_location="cpu", weights_only=True)
        except Exception as e:  # written before saves were atomic, or another file
            raise UsageError(f"{ckpt} cannot be read ({type(e).__name__}); use --restart to start over") from None
        changed = _changed(state["settings"], json.loads(json.dumps(settings)))
        if changed:
            raise UsageError(f"{ckpt} was made with other settings ({changed}); give the same ones, "
                             "or --restart to start over")
        missing, unexpected = model.load_state_dict(state["model"], strict=False)
        if unexpected or set(missing) - frozen:
            raise UsageError(f"{ckpt} does not fit this model (missing {sorted(set(missing) - frozen)[:5]}, "
                             f"unexpected {unexpected[:5]}); use --restart to start over")
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        step = int(state["step"])
        # the history saved with the weights (history.json, older runs' only copy, may be a save behind)
        history = state.get("history") or json.loads((run_dir / "history.json").read_text())
        accelerator.print(f"resumed from {ckpt} at step {step}")
    # The schedule stays outside `prepare`: accelerate would step it once per process per step,
    # and a run on N GPUs would reach the end of its cosine after 1/N of its steps.
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(model)

    def save() -> None:
        if accelerator.is_main_process:
            # the frozen parts (a whole SD1 model under a small adapter) come from the command line
            trained = {k: v for k, v in unwrapped.state_dict().items() if k not in frozen}
            # replaced whole or not at all: a run killed while saving keeps its previous checkpoint
            with files.replaced(ckpt) as tmp:
                torch.save({"model": trained, "optimizer": optimizer.state_dict(),
                            "schedule": schedule.state_dict(), "step": step, "history": history,
                            "settings": json.loads(json.dumps(settings))}, tmp)
            with files.replaced(run_dir / "history.json") as tmp:
                tmp.write_text(json.dumps(history))

    t0, before = time.time(), history["seconds"]
    bar = tqdm(total=steps, initial=step, desc=title, dynamic_ncols=True,
               disable=not (progress and accelerator.is_local_main_process))
    model.train()
    with freed_memory_kept(accelerator.device.type == "cpu"):
        while step < steps:
            loss = loss_fn(step, model)
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            optimizer.step()
            if not accelerator.optimizer_step_was_skipped:  # fp16's loss scaler skips steps that overflow
                schedule.step()
            step += 1
            history["step"].append(step)
            history["loss"].append(float(loss.item()))
            history["seconds"] = before + time.time() - t0
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}")
            if evaluate and eval_every and (step % eval_every == 0 or step == steps) and accelerator.is_main_process:
                value = float(evaluate(unwrapped))
                model.train()
                history.setdefault("eval_step", []).append(step)
                history.setdefault("eval", []).append(value)
                accelerator.print(f"\nstep {step}: {eval_label} {value:.3f} ({history['seconds'] / 60:.1f} min)")
            if step % save_every == 0:
                save()
            if max_minutes and step < steps and _agreed(accelerator, time.time() - t0 > 60 * max_minutes):
                accelerator.print(f"\nstopped after --max-minutes at step {step}/{steps}: run again to resume")
                break
    bar.close()
    save()
    if accelerator.is_main_process:
        plot_loss(history, run_dir / "loss.png", title, eval_label)
    model.eval()
    return {"step": step, "steps": steps, "finished": step >= steps, "minutes": round(history["seconds"] / 60, 2),
            "run_dir": str(run_dir)}


def _changed(old: dict, new: dict) -> str:
    """The settings a resume would change, as 'key old -> new; ...' (empty when none)."""
    keys = sorted(set(old) | set(new))
    return "; ".join(f"{k} {json.dumps(old.get(k))} -> {json.dumps(new.get(k))}" for k in keys if old.get(k) != new.get(k))


def _agreed(accelerator, flag: bool) -> bool:
    """The main process's flag on every process: each process reading its own clock could stop
    one a step before the others, which would then wait for it forever in their next all-reduce."""
    if accelerator.num_processes == 1:
        return flag
    from accelerate.utils import broadcast
    return bool(broadcast(torch.tensor([float(flag)], device=accelerator.device), from_process=0).item())


def batch_rng(seed: int, step: int, process: int = 0) -> np.random.Generator:
    """The batch generator of one step: resumes draw the same batches they would have."""
    return np.random.default_rng([seed, step, process])


def gaussian(rng: np.random.Generator, like: torch.Tensor) -> torch.Tensor:
    """N(0, 1) noise shaped like `like`, from the step's generator (torch's global one, seeded once
    at the start, would draw other noise after a resume)."""
    return torch.from_numpy(rng.standard_normal(tuple(like.shape), dtype=np.float32)).to(like.device, like.dtype)
