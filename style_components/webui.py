"""The AUTOMATIC1111 WebUI glue, host objects duck-typed: what `scripts/style_components.py` calls.

It reads only the A1111 v1.10 surface below (tests drive it through a stand-in of it):
- `p` (StableDiffusionProcessing): sd_model.model.diffusion_model, seeds, sampler (with
  `sample`/`sample_img2img`), extra_generation_params, comment(), is_hr_pass;
  `p.style_components_xyz` (a dict our XYZ axes set);
- on_cfg_denoiser's params: x (the stacked step batch), text_uncond, denoiser (.p, .step,
  .total_steps, .sampler.sampler_extra_args["cond"].batch); p.sd_model is shared.sd_model, so a
  refiner that took over this step (sd_samplers_common.apply_refiner) shows as another UNet.

Lifecycle: `begin_job` in Script.process, `begin_pass` in process_before_every_sampling (the
hooks come off when that pass's sampler call returns or raises, interruption included),
`end_job` in postprocess; `cleanup_unet` before every job removes anything a crashed job left.
"""

from __future__ import annotations

import base64
import io
from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

from . import script_args as sargs
from .errors import StyleComponentsError
from .inject import remove_all
from .params import SEED_PER_IMAGE
from .rows import infer_repeats, step_labels
from .session import Generation, with_components, wrap_sampling

ATTR = "_style_components"          # the job's Generation, on p
ERROR_ATTR = "_style_components_error"
XYZ_ATTR = "style_components_xyz"   # XYZ plot overrides, on p
SAMPLER_METHODS = ("sample", "sample_img2img")


def unet_of(p):
    return p.sd_model.model.diffusion_model


_open: list[Generation] = []  # the job that last started: A1111 runs one at a time


def cleanup_unet(p) -> None:
    """Remove every style hook from p's UNet (one left by a job that crashed outside sampling),
    and those of the last job, wherever they are (a refiner's UNet)."""
    while _open:
        _open.pop().close()
    try:
        remove_all(unet_of(p))
    except AttributeError:
        pass


def begin_job(p, args: Sequence, registry, warn: Callable[[str], None] = print,
              load_extractor: Callable | None = None) -> Generation | None:
    """Read the script's arguments and load the model; None when disabled. (The infotext entry
    is written here, for params.txt, and kept or taken back when a pass starts: `_record`.)

    A wrong argument or a missing model does not raise here (A1111 would only log it): it is
    kept on p and raised when sampling starts, so that the API caller and the UI get the error.
    """
    cleanup_unet(p)
    setattr(p, ATTR, None)
    setattr(p, ERROR_ATTR, None)
    overrides = getattr(p, XYZ_ATTR, None)
    try:
        if not (sargs.enabled(args) or overrides):
            # off means off: a stale or half-typed control (an emptied seed box, a typo in the
            # layer weights) must not stop generations the extension takes no part in.
            # An XYZ style axis turns it on: a grid labelled with style values asks for the style
            return None
        parsed = sargs.parse(args, check=True)
        params = parsed.params
        # the model first (an axis may name it): K, which a component axis on a random style needs
        model = registry.load(str((overrides or {}).get("model", params.model)))
        if parsed.ref_images:
            # A1111 sets p.is_api for /sdapi calls: an API caller must not read the server's files
            params = _from_references(params, model, parsed, load_extractor,
                                      allow_paths=not getattr(p, "is_api", False))
        # after the references: an XYZ component axis moves the extracted style
        params = finalize(sargs.apply_overrides(params, overrides, model.k), model)
    except Exception as e:  # e.g. an uploaded file that is no image: never an unstyled image instead
        setattr(p, ERROR_ATTR, f"Style Components: {_describe(e)}")
        warn(getattr(p, ERROR_ATTR))
        return None
    gen = Generation(params, model, warn=lambda m: _tell(p, m, warn))
    setattr(p, ATTR, gen)
    _open.append(gen)
    # written now for params.txt (A1111 writes it before sampling; "Read generation parameters"
    # pastes it); `_record` takes it back if no pass takes the style
    p.extra_generation_params[sargs.INFOTEXT_KEY] = infotext_entry(params, model.k)
    return gen


def _record(p, gen: Generation) -> None:
    """The infotext names the style once any pass of the job took it (a hires or refiner model
    that does not fit leaves the passes before it styled: pasting the infotext repeats both)."""
    if gen.passes:
        p.extra_generation_params[sargs.INFOTEXT_KEY] = infotext_entry(gen.params, gen.model.k)
    else:
        p.extra_generation_params.pop(sargs.INFOTEXT_KEY, None)


def infotext_entry(params, k: int):
    """The infotext value, with the slider values a random style drew, so that "Send to txt2img"
    puts them on the sliders to adjust. Per image for seed -1: a function A1111's
    create_infotext calls with its locals (as v1.10 documents). The grid's infotext
    (use_main_prompt) is the first image's, as its Seed is: p.all_seeds[0], while all_seeds
    there holds only the last batch's seeds."""
    def text(image_seed=None):
        return replace(params, components=params.slider_values(k, image_seed)).to_infotext()
    if params.seed != SEED_PER_IMAGE:
        return text()
    return lambda p, all_seeds, index, use_main_prompt=False, **_: text(
        p.all_seeds[0] if use_main_prompt else all_seeds[index])


def finalize(params, model):
    """The parameters as used: K components written out, the model's name and hash, checked."""
    k = model.k
    comps = tuple(params.components) + (0.0,) * max(0, k - len(params.components))
    if len(comps) > k and any(comps[k:]):
        raise StyleComponentsError(f"{len(params.components)} component values given, model "
                                   f"{model.info.name!r} has {k}")
    params = replace(params, model=model.info.name, model_hash=model.info.hash, components=comps[:k])
    problems = params.validate(layers=model.adapter.n_layers)
    if problems:
        raise StyleComponentsError("; ".join(problems))
    return params


def begin_pass(p, x=None) -> bool:
    """Hook the UNet for the sampling pass that is about to start (first pass, hires pass).

    A1111 only logs what a script hook raises; an error is raised from the sampler instead, so
    that the generation stops with the message rather than making an unstyled image."""
    styled, error = _try_pass(p, x)
    if error:
        def fail():
            raise StyleComponentsError(error)
        wrap_sampling(p.sampler, SAMPLER_METHODS, fail, lambda: None)
    return styled


def _try_pass(p, x) -> tuple[bool, str | None]:
    """Begin the job's pass: (styled, None), or (False, the error to stop the generation with)."""
    error = getattr(p, ERROR_ATTR, None)
    gen: Generation | None = getattr(p, ATTR, None)
    if not error and gen is not None:
        try:
            return _start_pass(p, gen, x), None
        except Exception as e:
            gen.end_pass()
            error = f"Style Components: {_describe(e)}"
    return False, error


def _start_pass(p, gen: Generation, x) -> bool:
    seeds = list(getattr(p, "seeds", None) or [])
    n = x.shape[0] if x is not None else len(seeds)
    seeds = (seeds + [None] * n)[:n]
    styled = gen.start_pass(unet_of(p), seeds)
    _record(p, gen)
    # also unstyled: a refiner of another model may take over within the pass
    wrap_sampling(p.sampler, SAMPLER_METHODS, None, gen.end_pass, on_return=gen.check_pass)
    return styled


def _describe(e: Exception) -> str:
    return str(e) if isinstance(e, StyleComponentsError) else f"{type(e).__name__}: {e}"


def on_cfg_denoiser(params, opts=None) -> None:
    """script_callbacks.on_cfg_denoiser: announce the step and its batch layout (opts: shared.opts)."""
    denoiser = getattr(params, "denoiser", None)
    p = getattr(denoiser, "p", None)
    gen: Generation | None = getattr(p, ATTR, None)
    if (gen is None or gen.unet is None) and not _begin_unannounced_pass(p, gen):
        return
    unet = unet_of(p)
    if unet is not gen.unet:  # the refiner took over from this step on
        gen.follow(unet)
        _record(p, gen)
    if gen.handle is None:
        return
    # read at the step's first UNet call: callbacks after this one may still rearrange the rows
    gen.step(lambda: _labels_or_none(params, opts), getattr(denoiser, "step", 0),
             getattr(denoiser, "total_steps", None))


def _begin_unannounced_pass(p, gen: Generation | None) -> bool:
    """A sampler that skipped process_before_every_sampling (A1111's own "img2img alternative
    test" samples with a sampler of its own): its first denoiser call begins the pass, so its
    image gets the style its infotext names. True when the pass is hooked.

    The job's error, if any, is raised from the UNet call the step is about to make: A1111 only
    logs what a callback raises. (Once a pass ends, no denoiser call comes before the next one.)"""
    _, error = _try_pass(p, None)
    if not error:
        return gen is not None
    setattr(p, ERROR_ATTR, None)  # raised once

    def fail(*_):
        hook.remove()
        raise StyleComponentsError(error)
    hook = unet_of(p).register_forward_pre_hook(fail)
    return False


def _labels_or_none(params, opts):
    try:
        return labels_of(params, opts)
    except ValueError:  # a layout no rule explains: the step runs unstyled and is reported
        return None


def labels_of(params, opts=None) -> list[int]:
    """Style row labels of the step's UNet rows: the stacked batch on_cfg_denoiser reports (cond
    rows per image, then uncond), less the uncond rows CFGDenoiser.forward will skip."""
    import torch
    x = params.x
    n_rows, n_images = x.shape[0], _rows(params.text_uncond)
    edit = is_edit_step(params.denoiser)
    groups = 2 if edit else 1
    repeats = None
    try:
        batch = params.denoiser.sampler.sampler_extra_args["cond"].batch
        repeats = [len(b) for b in batch]
        if len(repeats) != n_images or sum(repeats) + groups * n_images != n_rows:
            repeats = None
    except (AttributeError, KeyError, TypeError):
        pass
    if repeats is None:
        repeats = infer_repeats(n_rows - (groups - 1) * n_images, n_images,
                                lambda r, i: torch.equal(x[r], x[n_rows - n_images + i]))
    labels = step_labels(repeats, groups)
    n_cond = n_rows - groups * n_images
    # each cond row is a copy of its image's latent (the first uncond group is x itself, in image
    # order); another extension may have reordered them (Regional Prompter's latent mode does)
    same = (x[:n_cond, None] == x[None, n_cond:n_cond + n_images]).flatten(2).all(-1).tolist()
    if not all(same[r][i] for r, i in enumerate(labels[:n_cond])):
        owners = [row.index(True) if any(row) else None for row in same]
        if None not in owners:
            labels = owners + labels[n_cond:]
    # said here, not left to the calls covering a prefix: tiled calls repeat whole batches
    return labels[:-n_images] if opts is not None and skips_uncond(params, opts, edit) else labels


def skips_uncond(params, opts, edit: bool) -> bool:
    """CFGDenoiser.forward's own test for dropping the last n_images rows (Skip Early CFG,
    Negative Guidance minimum sigma), made with the step's values after the callback."""
    denoiser = params.denoiser
    step, total = getattr(denoiser, "step", 0), getattr(denoiser, "total_steps", None) or 1
    if opts.skip_early_cond != 0 and step / total <= opts.skip_early_cond:
        return True
    extra_args = getattr(getattr(denoiser, "sampler", None), "sampler_extra_args", None) or {}
    s_min = extra_args.get("s_min_uncond") or 0.0
    return bool((step % 2 or opts.s_min_uncond_all) and s_min > 0 and params.sigma[0] < s_min and not edit)


def is_edit_step(denoiser) -> bool:
    """CFGDenoiser.forward's own test for InstructPix2Pix batches (two groups of uncond rows);
    p.sd_model is shared.sd_model."""
    scale = getattr(denoiser, "image_cfg_scale", None)
    model = getattr(getattr(denoiser, "p", None), "sd_model", None)
    return getattr(model, "cond_stage_key", None) == "edit" and scale is not None and scale != 1.0


def end_job(p) -> None:
    cleanup_unet(p)  # closes the job's Generation (begin_job listed it in _open) and any hook left


def _rows(t) -> int:
    if isinstance(t, dict):
        t = t.get("crossattn", next(iter(t.values())))
    return t.shape[0]


def _tell(p, message: str, warn: Callable[[str], None]) -> None:
    warn(message)
    comment = getattr(p, "comment", None)
    if callable(comment):
        comment(message)


# -- reference images ---------------------------------------------------------------------

def decode_image(source, allow_paths: bool = True):
    """PIL image from a PIL image, a path, a gradio file dict, or base64 (with or without a data: prefix).

    allow_paths=False (API requests) refuses file paths: a client names no file on the server.
    """
    from PIL import Image
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, dict):  # gradio File / Image values
        source = source.get("name") or source.get("path") or source.get("image") or source.get("data")
    elif not isinstance(source, (str, bytes, Path)) and isinstance(getattr(source, "name", None), str):
        source = source.name  # gradio 3 File: a tempfile wrapper
    if isinstance(source, (str, Path)) and len(str(source)) < 4096 and Path(str(source)).is_file():
        if not allow_paths:
            raise StyleComponentsError("ref_images: the API takes base64-encoded images, not file paths")
        try:
            return Image.open(source)
        except Exception as e:
            raise StyleComponentsError(f"ref_images: {Path(str(source)).name} is not a readable image ({e})") from None
    if isinstance(source, str):
        data = source.split(",", 1)[1] if source.startswith("data:") else source
        data = "".join(data.split())  # line-wrapped (GNU base64, 76 a line), as A1111's own decoder takes
        try:
            return Image.open(io.BytesIO(base64.b64decode(data, validate=True)))
        except Exception:
            raise StyleComponentsError("ref_images: an entry is neither a file nor a base64-encoded image") from None
    raise StyleComponentsError(f"ref_images: cannot read an image from {type(source).__name__}")


def reference_note(files) -> str:
    """The infotext's note on reference images given as files: their names, else their count."""
    names = [Path(str(f.get("orig_name") or f.get("name") if isinstance(f, dict) else getattr(f, "name", f))).name
             for f in files or ()]
    return " + ".join(names) if names and all(names) else _count_note(len(names))


def _count_note(n: int) -> str:
    return f"{n} reference image{'s' if n != 1 else ''}"


def _from_references(params, model, parsed, load_extractor, allow_paths: bool = True):
    images = [decode_image(s, allow_paths) for s in parsed.ref_images]  # a path is refused first
    if model.space is None or model.info.extractor is None:
        raise StyleComponentsError(f"model {model.info.name!r} has no extractor/style space to read reference images")
    if load_extractor is None:
        from .extract import Extractor
        load_extractor = Extractor.load
    extractor = load_extractor(model.info.extractor)
    embedding = extractor.embed(images, list(parsed.ref_weights) or None)
    components = model.space.to_components(embedding.reshape(-1)).tolist()
    return replace(with_components(params, components), refs=params.refs or _count_note(len(images)))
