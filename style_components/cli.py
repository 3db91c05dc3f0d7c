"""Command line: `python -m style_components COMMAND ...` (or `style-components COMMAND ...`).

Each command is one `_add_*` function that registers its subparser and the function to run;
heavy modules (torch, timm) are imported inside those functions, so `--help` stays quick.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Sequence

from .errors import StyleComponentsError
from .layers import PRESET_NAMES
from .train.commands import positive_int


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object, e.g. '{\"img_size\": 518}'")
    return value


# --- convert ------------------------------------------------------------------------------

def _convert_space(args: argparse.Namespace) -> None:
    from .convert import convert_space

    space = convert_space(args.src, args.dst, name=args.name, extractor=args.extractor)
    print(f"wrote {args.dst}: style space {space.name!r}, {space.k} components of {space.d}-d embeddings")


def _convert_extractor(args: argparse.Namespace) -> None:
    from .convert import convert_extractor

    meta = convert_extractor(args.src, args.dst, preprocess=args.preprocess, architecture=args.architecture,
                             model_kwargs=args.model_kwargs, name=args.name)
    print(f"wrote {args.dst}: extractor {meta['architecture']}, {meta['dim']}-d, preprocess {meta['preprocess']}")


def _add_convert(commands: argparse._SubParsersAction) -> None:
    convert = commands.add_parser(
        "convert", help="convert the original author's pickled releases to safetensors (safely)",
        description="Convert a pickled release file once, refusing anything but the model data it should hold.")
    kinds = convert.add_subparsers(dest="kind", required=True, metavar="KIND")

    space = kinds.add_parser("space", help="PCA file, a pickled (sklearn PCA, std) -> style-space file")
    space.add_argument("src", help="the original PCA pickle")
    space.add_argument("dst", help="the .safetensors file to write")
    space.add_argument("--name", help="display name (default: DST's file name)")
    space.add_argument("--extractor", default="", help="name of the extractor whose embeddings it describes")
    space.set_defaults(run=_convert_space)

    extractor = kinds.add_parser("extractor", help="whole pickled timm model -> extractor file")
    extractor.add_argument("src", help="the original model file (torch.save of the module)")
    extractor.add_argument("dst", help="the .safetensors file to write")
    extractor.add_argument("--preprocess", choices=("v0.2", "v0.3"), default="v0.3",
                           help="image preprocessing of the release (default: v0.3)")
    extractor.add_argument("--architecture", help="timm model name, when the file does not record it")
    extractor.add_argument("--model-kwargs", type=_json_object, metavar="JSON",
                           help="timm.create_model arguments, for models they cannot be derived from")
    extractor.add_argument("--name", help="display name (default: DST's file name)")
    extractor.set_defaults(run=_convert_extractor)


# --- training (style_components.train: icon-theme dataset, encoder, style space, atlas) ----

def _train_command(module: str):
    """run(args) of style_components.train.<module>, imported only when the command runs."""
    def run(args: argparse.Namespace) -> None:
        import importlib
        importlib.import_module(f"style_components.train.{module}").run(args)
    return run


def _json_command(module: str):
    """Like _train_command, printing the returned result as one JSON line (scripts parse it)."""
    def run(args: argparse.Namespace) -> None:
        import importlib
        print(json.dumps(importlib.import_module(f"style_components.train.{module}").run(args)))
    return run


def _fit(args: argparse.Namespace) -> None:
    import json as _json
    from .train.fit import train
    print(_json.dumps(train(args)))


def _add_training(commands: argparse._SubParsersAction) -> None:
    from .train import commands as train_args  # argparse only: heavy imports wait in run()

    for name, module, help_text, add, run in (
            ("dataset", "dataset", "build a style dataset from installed icon themes or your artists' folders",
             train_args.dataset_arguments, _train_command("dataset")),
            ("train", "fit", "train a style encoder with SupCon (accelerate; resumable)",
             train_args.fit_arguments, _fit),
            ("evaluate", "evaluate", "held-out kNN theme accuracy, content probe and baseline (JSON)",
             train_args.evaluate_arguments, _train_command("evaluate")),
            ("pca", "pca", "fit a style space (PCA) on an extractor's embeddings",
             train_args.pca_arguments, _train_command("pca")),
            ("atlas", "atlas", "per-component icon strips and the explained-variance plot",
             train_args.atlas_arguments, _train_command("atlas")),
            ("train-autoencoder", "autoencoder", "train the demo world's autoencoder (32 px icons <-> 8x8x4 latents)",
             train_args.autoencoder_arguments, _json_command("autoencoder")),
            ("train-base", "base", "train the demo world's base model: icon name -> icon, no style",
             train_args.base_arguments, _json_command("base")),
            ("train-adapter", "adapter", "train a style adapter on the frozen base",
             train_args.adapter_arguments, _json_command("adapter"))):
        sub = commands.add_parser(name, help=help_text,
                                  description=f"{help_text} (style_components.train.{module}; see its docstring)")
        add(sub)
        sub.set_defaults(run=run)


# --- extract ------------------------------------------------------------------------------

def _weighted_image(text: str) -> tuple[str, float]:
    """IMAGE or IMAGE:WEIGHT (a Windows drive letter's colon is not a weight)."""
    path, sep, weight = text.rpartition(":")
    if sep and path and weight.replace(".", "", 1).isdigit():
        return path, float(weight)
    return text, 1.0


def _extract(args: argparse.Namespace) -> None:
    from .extract import Extractor
    from .space import StyleSpace

    space = StyleSpace.load(args.space)
    extractor = Extractor.load(args.extractor, device=args.device)
    if extractor.dim != space.d:
        raise StyleComponentsError(f"the extractor gives {extractor.dim}-d embeddings, "
                                   f"the style space {space.name!r} describes {space.d}-d ones")
    paths, weights = zip(*args.images)
    z = space.to_components(extractor.embed(list(paths), list(weights)))
    # the import box of the UI reads this line back
    print(", ".join(f"{v:.2f}" for v in z.tolist()))


def _add_extract(commands: argparse._SubParsersAction) -> None:
    extract = commands.add_parser(
        "extract", help="reference images -> style component values",
        description="Print the style components of one or more images (their weighted mean embedding), "
                    "one line of comma-separated values to paste into the UI's import box.")
    extract.add_argument("images", nargs="+", type=_weighted_image, metavar="IMAGE[:WEIGHT]")
    extract.add_argument("--extractor", required=True, help="extractor .safetensors file")
    extract.add_argument("--space", required=True, help="style space .safetensors file")
    extract.add_argument("--device", default="cpu")
    extract.set_defaults(run=_extract)


# --- demo and generate ---------------------------------------------------------------------

def sampler_steps(text: str) -> int:
    """1 to 1000: the demo world was trained on 1000 timesteps, a sampler cannot take more."""
    value = positive_int(text)
    if value > 1000:
        raise argparse.ArgumentTypeError(f"{value}: at most 1000 (the world's training timesteps)")
    return value


def finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number")
    return value


def _image_file(text: str) -> str:
    """An output image path whose suffix Pillow can write (checked before minutes of generating)."""
    from PIL import Image
    if Path(text).suffix.lower() not in Image.registered_extensions():
        raise argparse.ArgumentTypeError(f"{text}: not an image file name Pillow can write (e.g. .png)")
    return text


def _demo(args: argparse.Namespace) -> None:
    from .demo import DEMO_DIR, run
    run(args.out, seed=args.seed, sweep_component=args.component - 1, steps=args.steps, strength=_strength(args),
        folder=args.models or DEMO_DIR)


def _add_strength(parser: argparse.ArgumentParser) -> None:
    # None = demo.STRENGTH, read when the command runs: importing torch here would slow every --help
    parser.add_argument("--strength", type=float, default=None,
                        help="style strength (default: the demo adapter's best, 1.5; see its model card)")


def _strength(args: argparse.Namespace) -> float:
    from .demo import STRENGTH
    return STRENGTH if args.strength is None else args.strength


MODELS_HELP = ("folder with icon_world.safetensors, icon_style_adapter.safetensors, "
               "icon_style_extractor.safetensors and icon_style_space.safetensors (default: models/demo)")


def _add_demo(commands: argparse._SubParsersAction) -> None:
    demo = commands.add_parser("demo", help="the shipped icon models: a grid of styled icons (the main job)",
                               description="Generate a grid with the demo models in models/demo: rows = icon "
                                           "names, columns = base, extracted theme styles, a random style, "
                                           "a sweep of one component.")
    demo.add_argument("--out", type=_image_file, default="style_components_demo.png", help="PNG to write")
    demo.add_argument("--seed", type=int, default=0, help="seed of the first row (and of the random style)")
    demo.add_argument("--component", type=positive_int, default=1, help="component swept in the last columns (1-based)")
    demo.add_argument("--steps", type=sampler_steps, default=20, help="sampler steps")
    demo.add_argument("--models", help=MODELS_HELP + "; and references/THEME/*.png, one column per theme")
    _add_strength(demo)
    demo.set_defaults(run=_demo)


STYLE_SHAPING = ("strength", "preset", "start", "end")


def _generate(args: argparse.Namespace) -> None:
    if args.ref and args.components:
        raise StyleComponentsError("give --components or --ref, not both")
    shaping = [f"--{name}" for name in STYLE_SHAPING if getattr(args, name) is not None]
    if shaping and not (args.ref or args.components):  # they would be ignored: say so, not draw the base
        raise StyleComponentsError(f"{', '.join(shaping)}: only with a style (give --components or --ref)")
    import torch
    from PIL import Image

    from .demo import DemoModels
    from .generate import generate, grid
    from .script_args import parse as parse_arguments

    models = DemoModels(args.models) if args.models else DemoModels()
    unknown = sorted({w for n in args.names for w in models.world.text.unknown_words(n)})
    if unknown:
        print(f"note: words the base model never saw: {', '.join(unknown)}", file=sys.stderr)
    styles = None
    if args.ref:
        paths, weights = zip(*args.ref)
        styles = models.space.to_components(models.extractor.embed(list(paths), list(weights)))
    elif args.components:
        styles = torch.zeros(models.space.k)
        values = parse_arguments([{"components": args.components}]).params.components
        if len(values) > models.space.k:
            raise StyleComponentsError(f"{len(values)} components given, the style space has {models.space.k}")
        styles[:len(values)] = torch.tensor(values)
    seeds = [args.seed + i for i in range(args.n) for _ in args.names]
    names = [n for _ in range(args.n) for n in args.names]
    images = generate(models.world, names, seeds, steps=args.steps, guidance=args.guidance,
                      adapter=models.adapter if styles is not None else None,
                      styles=None if styles is None else styles.expand(len(names), -1),
                      strength=_strength(args), weights=args.preset or "all",
                      start=0.0 if args.start is None else args.start, end=1.0 if args.end is None else args.end)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid(images, len(args.names), scale=args.zoom)).save(args.out)
    if styles is not None:
        print("components: " + ", ".join(f"{v:.2f}" for v in styles.tolist()))
    print(f"wrote {args.out}")


def _add_generate(commands: argparse._SubParsersAction) -> None:
    gen = commands.add_parser("generate", help="icons from the demo models, with a style from sliders or images",
                              description="Generate icons (columns = names, rows = seeds) with the demo world; "
                                          "the style comes from component values or reference images.")
    gen.add_argument("names", nargs="+", help="icon names, e.g. folder user-trash")
    gen.add_argument("--components", help="slider values, comma separated (missing ones are 0)")
    gen.add_argument("--ref", nargs="+", type=_weighted_image, metavar="IMAGE[:WEIGHT]",
                     help="reference images whose style is extracted")
    _add_strength(gen)
    # None = unset (all, 0, 1): given without a style they are an error, not silently ignored
    gen.add_argument("--preset", choices=PRESET_NAMES, help="block preset of the per-layer weights (default all)")
    gen.add_argument("--start", type=float, help="style on from this fraction of the steps (default 0)")
    gen.add_argument("--end", type=float, help="style off from this fraction of the steps (default 1)")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--n", type=positive_int, default=4, help="images per name")
    gen.add_argument("--steps", type=sampler_steps, default=20)
    gen.add_argument("--guidance", type=finite_float, default=4.0, help="classifier-free guidance scale")
    gen.add_argument("--zoom", type=positive_int, default=2, help="pixel zoom of the output")
    gen.add_argument("--models", help=MODELS_HELP)
    gen.add_argument("--out", type=_image_file, default="style_components_generate.png")
    gen.set_defaults(run=_generate)


# --- entry point --------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="style-components", description="Style Components tools.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_convert(commands)
    _add_extract(commands)
    _add_training(commands)
    _add_demo(commands)
    _add_generate(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a user-fixable error prints one line and returns 2 (argparse's code for bad usage)."""
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (StyleComponentsError, OSError) as e:
        print(f"style-components: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: no traceback (files are written whole or not at all)
        print("style-components: interrupted", file=sys.stderr)
        return 130
    return 0
