"""Which UNet batch row takes which style, under a host's classifier-free guidance.

A host (A1111's CFG denoiser) builds, every sampling step, one stacked batch `x_in`:
for each image i, `repeats[i]` cond rows (more than one with AND prompts), then one
uncond row per image (two groups of them for an InstructPix2Pix model: uncond text with
the image, uncond text without it). It then calls the UNet once on all of it, or several times on
successive slices *in order* (batch_cond_uncond off, prompts of different lengths), and
may drop the uncond rows (negative guidance minimum sigma, skip early CFG). Tiled samplers
(the Tiled Diffusion extension's MultiDiffusion and Mixture of Diffusers) call the UNet once per
tile, or on several tiles stacked along the batch, each tile with all of the step's rows. None
of this is assumed here: `step_labels` describes the stacked batch, and `RowTracker` hands each
UNet call the next slice of it, or the whole batch's labels once per stacked copy, whatever
sizes the calls turn out to have.

Labels are style indices for `inject.StyleHandle.set_rows`: cond rows take their image's
index (one style per image of the batch), uncond rows take `NULL`.
"""

from __future__ import annotations

from typing import Callable, Sequence

from .inject import NULL


def step_labels(repeats: Sequence[int], uncond_groups: int = 1) -> list[int]:
    """Labels of a full stacked step batch: image i's index repeats[i] times, then NULL per
    image in each of the `uncond_groups` groups of uncond rows."""
    if any(r < 1 for r in repeats):
        raise ValueError(f"every image needs at least one cond row, got repeats {list(repeats)}")
    cond = [i for i, r in enumerate(repeats) for _ in range(r)]
    return cond + [NULL] * (len(repeats) * uncond_groups)


def split_calls(labels: Sequence[int], call_sizes: Sequence[int]) -> list[list[int]]:
    """Labels of each UNet call when the calls take successive slices of the batch.

    The calls may cover only a prefix (uncond rows skipped); they may not run past the end.
    """
    out, at = [], 0
    for n in call_sizes:
        if n < 0 or at + n > len(labels):
            raise ValueError(f"UNet calls of sizes {list(call_sizes)} do not fit a batch of {len(labels)} rows")
        out.append(list(labels[at:at + n]))
        at += n
    return out


def infer_repeats(n_rows: int, n_images: int, same_image: Callable[[int, int], bool] | None = None) -> list[int]:
    """Cond rows per image, from the size of the stacked batch (n_rows = cond rows + n_images).

    Without AND prompts every image has one cond row. Otherwise `same_image(row, image)` tells
    whether cond row `row` is a copy of image `image`'s latent (the host stacks copies); rows are
    grouped in image order, so a monotone walk assigns them.
    """
    n_cond = n_rows - n_images
    if n_images < 1 or n_cond < n_images:
        raise ValueError(f"a batch of {n_rows} rows cannot hold {n_images} images with their uncond rows")
    if n_cond == n_images:
        return [1] * n_images
    if same_image is None:
        raise ValueError(f"{n_cond} cond rows for {n_images} images: cannot tell which row is whose")
    repeats, image = [0] * n_images, 0
    for row in range(n_cond):
        left_rows, left_images = n_cond - row, n_images - image - 1
        # move on when this row is not the current image's, or when every later image needs a row
        if repeats[image] and (left_rows == left_images or not same_image(row, image)):
            image += 1
        if image >= n_images:
            raise ValueError("cond rows do not match the images in order")
        repeats[image] += 1
    if image != n_images - 1:
        raise ValueError("cond rows do not match the images in order")
    return repeats


class RowTracker:
    """Feeds each UNet call the labels of its slice of the current step's batch.

    `new_step(labels)` is called when the host announces a step (A1111: on_cfg_denoiser);
    `next_call(n)` on every UNet call returns the next n labels; for a call of k whole batches
    at a batch boundary (tiles), the labels k times; or None when the call does not belong to
    an announced step (no step yet, or rows that fit neither): such a call gets no style rather
    than a guessed one.
    """

    def __init__(self):
        self.labels: list[int] | None = None
        self.at = 0
        self.unknown_calls = 0

    def new_step(self, labels: Sequence[int] | Callable[[], Sequence[int]]) -> None:
        """labels, or a function giving them (or None: unknown) at the step's first UNet call,
        when every other callback that may rearrange the batch has run."""
        self.labels, self.at = labels, 0

    def next_call(self, n: int) -> list[int] | None:
        if callable(self.labels):
            labels = self.labels()  # None: the step's rows cannot be labelled
            self.labels = None if labels is None else list(labels)
        labels = self.labels
        if labels is not None and self.at + n <= len(labels):
            self.at += n
            return labels[self.at - n:self.at]
        if labels and self.at % len(labels) == 0 and n % len(labels) == 0:
            self.at = len(labels)  # whole batches, once or stacked: tiles of the step's latent
            return labels * (n // len(labels))
        self.unknown_calls += 1
        self.labels = None  # out of step: stay off until the next announced step
        return None

    def clear(self) -> None:
        self.labels, self.at = None, 0
