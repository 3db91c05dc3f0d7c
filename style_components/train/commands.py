"""Command-line arguments of the training commands, kept free of heavy imports (torch, sklearn)
so that `style-components --help` stays quick. Each module's `run(args)` does the work."""
from __future__ import annotations
import argparse
import sys
from typing import Callable, Sequence

from ..layers import PRESET_NAMES
from . import config


def positive_int(text: str) -> int:
    """An argparse type: sizes and counts (0 would divide by zero or train on nothing)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a whole number of 1 or more")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a divisor or scale that must be above 0 (nan is not)."""
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{value} is not a number above 0")
    return value


def fraction(text: str) -> float:
    """An argparse type: a probability."""
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{value} is not a fraction between 0 and 1")
    return value


def module_main(module: str, doc: str, add_arguments: Callable[[argparse.ArgumentParser], None],
                run: Callable[[argparse.Namespace], object], argv: Sequence[str] | None = None) -> int:
    """`python -m style_components.train.<module>`: the same arguments as its CLI subcommand."""
    from ..errors import StyleComponentsError
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=doc.split("\n")[0])
    add_arguments(parser)
    try:
        run(parser.parse_args(argv))
    except (StyleComponentsError, OSError) as e:  # one line, as the CLI gives it
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    return 0



def dataset_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", help="output folder (manifest.jsonl, shards/, dataset.json)")
    p.add_argument("--root", default=config.ICON_ROOT, help=f"icon themes folder (default {config.ICON_ROOT})")
    p.add_argument("--size", type=positive_int, default=config.IMAGE_SIZE, help="rasterised size in px")
    p.add_argument("--min-themes", type=positive_int, default=config.MIN_THEMES,
                   help="keep names drawn by at least this many themes")
    p.add_argument("--workers", type=positive_int, default=2, help="parallel rasterisers")
    p.add_argument("--theme", action="append", metavar="LABEL=FOLDER[,FOLDER...]",
                   help="use these folders (names under --root) instead of the Debian packages of "
                        "config.THEME_PACKAGES; repeat per theme")
    p.add_argument("--images", metavar="FOLDER",
                   help="your own artists instead of icon themes: FOLDER/<artist>/*.png (any image format), "
                        "each fitted whole in the --size square")
    p.add_argument("--heldout-every", type=positive_int, default=10,
                   help="with --images: hold out every Nth image of each artist for evaluation")


def fit_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", help="dataset folder (from `style-components dataset`)")
    p.add_argument("run_dir", help="checkpoint, history, loss.png and extractor.safetensors go here")
    p.add_argument("--batch-themes", type=positive_int, default=19, help="themes per batch")
    p.add_argument("--per-theme", type=positive_int, default=4, help="images per theme per batch (x2 views)")
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--loss", choices=("supcon", "ce"), default="supcon",
                   help="supcon: supervised contrastive; ce: cosine-softmax cross-entropy over the themes "
                        "(learns faster on the icons, see MODEL_CARD.md)")
    p.add_argument("--temperature", type=positive_float, default=0.1, help="of the loss's cosine logits")
    p.add_argument("--dim", type=positive_int, default=128, help="embedding size")
    p.add_argument("--width", type=positive_int, default=16, help="channels of the first stage (x2 per stage)")
    p.add_argument("--depth", type=positive_int, default=2, help="conv layers per stage")
    p.add_argument("--hidden", type=int, default=0, help="hidden units of an MLP head (0: linear head)")
    p.add_argument("--size", type=positive_int, default=config.INPUT_SIZE,
                   help="input side in px, 64, 128 or 192 (build the dataset at that --size too)")
    p.add_argument("--low-res", type=fraction, default=0.0, metavar="P",
                   help="fraction of views shrunk to 32 px..half the side and scaled back, so the encoder "
                        "also reads thumbnails and the demo world's 32 px icons (default 0)")
    p.add_argument("--eval-every", type=int, default=250, help="held-out kNN every N steps (0: never)")
    p.add_argument("--name", default="icon-style-encoder", help="extractor display name")
    p.add_argument("--fp32", action="store_true", help="export float32 weights (default float16)")
    _loop_arguments(p, steps=3000, batch=None, lr=3e-3)


def evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", help="dataset folder")
    p.add_argument("extractor", help="extractor .safetensors")
    p.add_argument("--out", help="write the JSON report here (adapter evaluation: and a .png summary beside it)")
    adapter = p.add_argument_group("style adapter evaluation (with --adapter: generated icons, not the encoder)")
    adapter.add_argument("--adapter", help="adapter .safetensors to evaluate on held-out names")
    adapter.add_argument("--world", help="icon_world.safetensors (the base model)")
    adapter.add_argument("--space", help="style space .safetensors (the adapter's input)")
    adapter.add_argument("--names", type=positive_int, default=8, help="held-out icon names to generate")
    adapter.add_argument("--steps", type=positive_int, default=20, help="sampler steps")
    adapter.add_argument("--strength", type=float, default=1.0, help="style strength of the generated icons")
    adapter.add_argument("--preset", default="all", choices=PRESET_NAMES,
                         help="block preset of the style's per-layer weights (as in generate)")


def pca_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", help="dataset folder")
    p.add_argument("extractor", help="extractor .safetensors")
    p.add_argument("out", help="style-space .safetensors to write (a .json with the choice of K beside it)")
    p.add_argument("--k", type=positive_int, help="number of components (default: by --variance)")
    p.add_argument("--variance", type=fraction, default=0.9, help="fraction of variance K must reach (0.9, not 90)")
    p.add_argument("--max-k", type=positive_int, default=30, help="upper bound on K")
    p.add_argument("--name", help="display name")


def atlas_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", help="dataset folder (the icons shown)")
    p.add_argument("extractor", help="extractor .safetensors")
    p.add_argument("space", help="style-space .safetensors")
    p.add_argument("out", help="output folder")
    p.add_argument("--n", type=positive_int, default=8, help="icons at each end of a strip")
    p.add_argument("--scale", type=positive_int, default=1, help="pixel zoom of the icons")



# train-adapter's defaults: the demo world's small base, or a real SD1.x model (IP-Adapter's recipe;
# a batch of 128 512 px images would not fit a GPU)
ADAPTER_DEFAULTS = {"world": {"batch": 128, "lr": 1e-3}, "sd1": {"batch": 8, "lr": 1e-4}}


def _loop_arguments(p: argparse.ArgumentParser, steps: int, batch: int | None, lr: float | None) -> None:
    """The arguments of train/loop.run, shared by every trainer (batch, lr: None when it has its own)."""
    p.add_argument("--steps", type=positive_int, default=steps, help="total optimiser steps (the LR schedule's length)")
    if batch is not None:
        p.add_argument("--batch", type=positive_int, default=batch, help="images per step")
    if lr is not None:
        p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-every", type=positive_int, default=200, help="checkpoint every N steps")
    p.add_argument("--max-minutes", type=float, default=0, help="stop (resumably) after this many minutes")
    p.add_argument("--cpu", action="store_true", help="train on the CPU even when a GPU is there")
    p.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"),
                   help="autocast (default: accelerate's configuration, else no); train-adapter also "
                        "stores its frozen base in this dtype (half the memory)")
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def autoencoder_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", help="dataset folder (from `style-components dataset`)")
    p.add_argument("run_dir", help="checkpoint, history, loss.png and autoencoder.safetensors go here")
    p.add_argument("--kl", type=float, default=1e-6, help="weight of the KL term")
    p.add_argument("--decoder-of", metavar="WORLD", help="sharpen this icon_world.safetensors' decoder alone "
                                                         "(its UNet stays valid); writes RUN_DIR/icon_world.safetensors")
    _loop_arguments(p, steps=1500, batch=64, lr=1e-3)


def _weighting_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--snr-gamma", type=float, default=config.SNR_GAMMA,
                   help="min-SNR-gamma loss weighting; 0: plain MSE, every timestep alike (weighs the "
                        "noisiest steps, where layout and palette settle, ~40x more than min-SNR-5)")


def base_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", help="dataset folder (from `style-components dataset`)")
    p.add_argument("run_dir", help="checkpoint, history, loss.png, icon_world.safetensors, samples.png go here")
    p.add_argument("--autoencoder", required=True, help="autoencoder.safetensors from train-autoencoder")
    p.add_argument("--width", type=positive_int, help="UNet model_channels, a multiple of 32 (default 32, the CPU "
                                             "world; the shipped world, trained on a GPU, has 64)")
    p.add_argument("--caption-dropout", type=fraction, default=0.1, help="fraction of names dropped (for CFG)")
    p.add_argument("--samples", type=int, default=12, help="icon names in samples.png (0: no samples)")
    _weighting_argument(p)
    _loop_arguments(p, steps=2400, batch=128, lr=5e-4)


def adapter_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", help="dataset folder (from `style-components dataset`); with --sd-model: a folder "
                                "of images with optional .txt captions beside them")
    p.add_argument("run_dir", help="checkpoint, history, loss.png and adapter.safetensors go here")
    p.add_argument("--world", help="icon_world.safetensors from train-base (kept frozen)")
    p.add_argument("--sd-model", help="an SD1.x model as a diffusers folder (kept frozen), instead of --world")
    p.add_argument("--resolution", type=positive_int, default=512, help="with --sd-model: training image size")
    p.add_argument("--clip-skip", type=positive_int, default=1, help="with --sd-model: CLIP layer of the text condition "
                                                            "counted from the last, as A1111's setting (2 for NAI-style models)")
    p.add_argument("--extractor", required=True, help="style extractor .safetensors")
    p.add_argument("--space", required=True, help="style space .safetensors (its K is the adapter's input size)")
    p.add_argument("--tokens", type=positive_int, default=1, help="style tokens (1: the fast per-layer bias)")
    p.add_argument("--reference", choices=("self", "group"), default="self",
                   help="style input of a training image: its own components (self), or the mean of "
                        "--group-size other images of its artist: icon theme or sub-folder (group)")
    p.add_argument("--group-size", type=positive_int, default=4, help="images averaged per --reference group style")
    p.add_argument("--name", default="icon-style-adapter", help="adapter display name")
    _weighting_argument(p)
    _loop_arguments(p, steps=1200, batch=None, lr=None)
    world, sd1 = ADAPTER_DEFAULTS["world"], ADAPTER_DEFAULTS["sd1"]
    p.add_argument("--batch", type=positive_int, help=f"images per step (default {world['batch']}; --sd-model: {sd1['batch']})")
    p.add_argument("--lr", type=float, help=f"learning rate (default {world['lr']:g}; --sd-model: {sd1['lr']:g}, "
                                            "IP-Adapter's recipe)")
