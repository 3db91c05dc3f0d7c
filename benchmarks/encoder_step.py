"""What a style-encoder training step costs on this machine, by memory format and precision.

Times the shipped recipe's step -- `style_statnet` at width 16, 19 themes x 4 images x 2 views,
cosine-softmax cross-entropy, backward, AdamW -- and an extraction forward of 64 images: with
the convolutions in the contiguous (NCHW) layout they had until 2026-12-03; channels-last (what
the model does now); inside the training loop's `freed_memory_kept` (glibc keeps large freed
blocks for the next step instead of unmapping them); and that under bf16 autocast (`train
--mixed-precision bf16`). Prints the median times and their ratios to the first row.

    python benchmarks/encoder_step.py                 # 192 px, both cores
    python benchmarks/encoder_step.py --size 128 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from style_components import stylenet
from style_components.train import encoder, loop
from style_components.train.classify import WithThemeHead, cosine_ce_loss

SETTINGS = {  # name: (memory format, freed memory kept, bf16 autocast)
    "contiguous": (torch.contiguous_format, False, False),
    "channels-last": (torch.channels_last, False, False),
    "+ memory kept": (torch.channels_last, True, False),
    "+ bf16": (torch.channels_last, True, True),
}


def median_seconds(fn, repeats: int) -> float:
    fn()  # untimed: the first call picks oneDNN's kernels
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=192, help="input side in px")
    ap.add_argument("--repeats", type=int, default=3, help="steps per setting (median taken)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    views = torch.randn(19 * 4, 2, 3, args.size, args.size)
    labels = torch.arange(19).repeat_interleave(4)
    images = torch.randn(64, 3, args.size, args.size)
    print(f"style encoder (width 16), {args.size} px, {args.threads} thread(s), median of {args.repeats}")
    base = {}
    for name, (memory_format, kept, bf16) in SETTINGS.items():
        stylenet.MEMORY_FORMAT = memory_format
        model = WithThemeHead(encoder.build(), 19, 128)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

        def step():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                emb = model(views.flatten(0, 1)).view(len(labels), 2, -1)
                loss = cosine_ce_loss(emb, model.directions, labels, 0.1)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        def extract():
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                model.encoder(images)

        for what, fn in (("training step", step), ("extract 64", extract)):
            with loop.freed_memory_kept(kept):
                seconds = median_seconds(fn, args.repeats)
            base.setdefault(what, seconds)
            print(f"  {name:<14} {what:<13} {seconds:8.3f} s   speed-up {base[what] / seconds:5.2f}x")
    stylenet.MEMORY_FORMAT = torch.channels_last


if __name__ == "__main__":
    main()
