"""The WebUI script's arguments: one layout for the UI, the API and the infotext.

Positional form (what the UI's controls send, in this order, and what the API's
`alwayson_scripts["Style Components"]["args"]` list may hold):

    enabled, model, multiplier, strength, random, seed, blocks, block_weights,
    start, end, ref_images, ref_weights, refs, c1, c2, ..., c{MAX_COMPONENTS}

Dict form (API): `"args": [{"components": [0.5, -1], "strength": 0.8}]`: a single dict as
the first argument, keys from ARG_NAMES plus `components` (a list); missing keys take their
defaults, except `enabled`: a dict turns the extension on unless it says `"enabled": false`.
Unknown keys or values of the wrong type raise ArgumentError naming the argument, so that an
API caller is never silently ignored.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

from .models import name_of
from .params import BLOCK_PRESETS, SEED_PER_IMAGE, StyleParams, format_number, is_number_text
from .session import ArgumentError

# sliders in the UI: as many as the original author's Forge extension has (its SDXL style space
# holds 100 components); a model with more takes the rest from reference images or a random draw
MAX_COMPONENTS = 200
INFOTEXT_KEY = "Style components"

# (name, default, kind) in positional order, before the components
ARGS: tuple[tuple[str, Any, str], ...] = (
    ("enabled", False, "bool"),
    ("model", "", "str"),
    ("multiplier", 1.0, "number"),
    ("strength", 1.0, "number"),
    ("random", False, "bool"),
    ("seed", -1, "int"),
    ("blocks", "all", "str"),
    ("block_weights", "", "numbers"),
    ("start", 0.0, "number"),
    ("end", 1.0, "number"),
    ("ref_images", None, "images"),
    ("ref_weights", "", "numbers"),
    ("refs", "", "str"),
)
ARG_NAMES = tuple(a[0] for a in ARGS)
COMPONENT_NAMES = tuple(f"c{i + 1}" for i in range(MAX_COMPONENTS))
ALL_NAMES = ARG_NAMES + COMPONENT_NAMES
N_ARGS = len(ALL_NAMES)
DEFAULTS = {name: default for name, default, _ in ARGS} | {c: 0.0 for c in COMPONENT_NAMES}
_KIND = {name: kind for name, _, kind in ARGS} | {c: "number" for c in COMPONENT_NAMES}


@dataclass(frozen=True)
class ScriptArgs:
    enabled: bool
    params: StyleParams
    ref_images: tuple = ()
    ref_weights: tuple[float, ...] = ()
    problems: tuple[str, ...] = field(default=())


def defaults() -> list:
    return [DEFAULTS[n] for n in ALL_NAMES]


def enabled(args: Sequence) -> bool:
    """Whether the arguments switch the extension on (the switch alone is checked)."""
    args = list(args)
    if args and isinstance(args[0], Mapping):
        return _check("enabled", args[0].get("enabled", True))
    return _check("enabled", dict(zip(ALL_NAMES, args)).get("enabled", DEFAULTS["enabled"]))


def parse(args: Sequence, check: bool = False) -> ScriptArgs:
    """The script's arguments, positional or as one dict, checked; raises ArgumentError.
    The settings' ranges are checked when they switch the extension on, or with check."""
    args = list(args)
    if args and isinstance(args[0], Mapping):
        # (A1111 fills the positions after it with the UI's defaults, never with a dict)
        if any(isinstance(a, Mapping) for a in args[1:]):
            raise ArgumentError("Style Components takes one dict of arguments; more were given")
        values = _from_dict(args[0])
    else:
        if len(args) > N_ARGS:
            raise ArgumentError(f"Style Components takes at most {N_ARGS} arguments, {len(args)} given")
        values = dict(zip(ALL_NAMES, defaults()))
        for name, value in zip(ALL_NAMES, args):
            values[name] = value
    if values["random"] is False and values["seed"] is None:
        values["seed"] = DEFAULTS["seed"]  # an emptied seed box is not read while Random is off
    v = {name: _check(name, values[name]) for name in ALL_NAMES}
    components = _without_trailing_zeros([v[c] for c in COMPONENT_NAMES])
    if v["blocks"] not in BLOCK_PRESETS:
        raise ArgumentError(f"blocks: {v['blocks']!r} is not one of {', '.join(BLOCK_PRESETS)}")
    params = StyleParams(model=v["model"], components=components, multiplier=v["multiplier"],
                         strength=v["strength"], blocks=v["blocks"],
                         block_weights=v["block_weights"] if v["blocks"] == "custom" else (),
                         start=v["start"], end=v["end"], seed=v["seed"] if v["random"] else None,
                         refs=v["refs"])
    images = tuple(v["ref_images"] or ())
    weights = v["ref_weights"]
    if images and weights and len(weights) != len(images):
        raise ArgumentError(f"ref_weights: {len(weights)} weights for {len(images)} reference images")
    if v["enabled"] or check:
        problems = params.validate()
        if problems:
            raise ArgumentError("; ".join(problems))
    return ScriptArgs(v["enabled"], params, images, weights)


def _from_dict(d: Mapping) -> dict:
    known = set(ALL_NAMES) | {"components"}
    unknown = sorted(str(k) for k in d if k not in known)
    if unknown:
        raise ArgumentError(f"unknown argument {unknown[0]!r}; known: {', '.join(ARG_NAMES)}, components")
    values = dict(zip(ALL_NAMES, defaults()), enabled=True)
    if "components" in d:
        comps = d["components"]
        if isinstance(comps, str):
            comps = _check("components", comps, "numbers")
        if not isinstance(comps, (list, tuple)):
            raise ArgumentError(f"components: expected a list of numbers, got {comps!r}")
        if len(comps) > MAX_COMPONENTS:
            raise ArgumentError(f"components: at most {MAX_COMPONENTS} values, {len(comps)} given")
        for i, c in enumerate(comps):
            if isinstance(c, str) or _finite(c) is None:
                raise ArgumentError(f"components: value {i + 1} is {_show(c)}, not a finite number")
        given = [c for c in COMPONENT_NAMES if c in d]
        if given:
            raise ArgumentError(f"components and {given[0]} both given: use one or the other")
        values.update(zip(COMPONENT_NAMES, comps))
    values.update({k: val for k, val in d.items() if k != "components"})
    if "seed" in d and "random" not in d:
        values["random"] = True  # a seed alone asks for a random style
    return values


def numbers(name: str, value) -> tuple[float, ...]:
    """Finite numbers from a list or from text ('a b c', 'a, b, c'); raises ArgumentError naming `name`."""
    return _check(name, value, "numbers")


def _check(name: str, value, kind: str | None = None):
    kind = kind or _KIND[name]
    if kind == "bool":
        if isinstance(value, bool):
            return value
        raise ArgumentError(f"{name}: expected true or false, got {value!r}")
    if kind == "str":
        if value is None:
            return ""
        if isinstance(value, str):
            return value
        raise ArgumentError(f"{name}: expected a string, got {value!r}")
    if kind == "number":
        x = _finite(value) if not isinstance(value, str) else None
        if x is None:
            raise ArgumentError(f"{name}: expected a finite number, got {_show(value)}")
        return x
    if kind == "int":
        x = _finite(value) if not isinstance(value, str) else None
        if x is None or not x.is_integer():
            raise ArgumentError(f"{name}: expected a whole number, got {_show(value)}")
        return int(value)
    if kind == "numbers":
        if value is None or value == "":
            return ()
        if isinstance(value, str):
            words = value.replace(",", " ").split()
        elif isinstance(value, (list, tuple)):
            words = list(value)
        else:
            raise ArgumentError(f"{name}: expected numbers (a list or 'a b c'), got {value!r}")
        out = []
        for w in words:
            x = _finite(w)
            if x is None:
                raise ArgumentError(f"{name}: {_show(w)} is not a finite number")
            out.append(x)
        return tuple(out)
    if kind == "images":
        if value is None:
            return ()
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            value = [value]
        return tuple(value)
    raise AssertionError(kind)


def _finite(value) -> float | None:
    """A finite float from a number (not a bool) or number text as the infotext writes it; else None."""
    if isinstance(value, str):
        return _finite(float(value)) if is_number_text(value) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        x = float(value)
    except OverflowError:  # an int of hundreds of digits
        return None
    return x if math.isfinite(x) else None


def _show(value) -> str:
    """A value for a message, cut short (an API caller may send megabytes)."""
    # (an int's digits are not counted: str() refuses ints of over 4300 digits)
    text = repr(value) if not (type(value) is int and value.bit_length() > 64) else f"an int of {value.bit_length()} bits"
    return text if len(text) <= 60 else text[:57] + "..."


def to_positional(params: StyleParams, enabled: bool = True) -> list:
    """The positional arguments (= UI control values) that reproduce `params`."""
    values = dict(zip(ALL_NAMES, defaults()))
    values.update(enabled=enabled, model=params.model, multiplier=params.multiplier, strength=params.strength,
                  random=params.seed is not None, seed=params.seed if params.seed is not None else -1,
                  blocks=params.blocks, block_weights=" ".join(format_number(w) for w in params.block_weights),
                  start=params.start, end=params.end, refs=params.refs)
    if len(params.components) > MAX_COMPONENTS:
        raise ArgumentError(f"{len(params.components)} components, the UI has {MAX_COMPONENTS} sliders")
    values.update(zip(COMPONENT_NAMES, params.components))
    return [values[n] for n in ALL_NAMES]


# The original writes its list with A1111's quote(), which JSON-dumps it *unquoted*
# ("style_components: [0.12, -1.5]"); A1111's parser reads such a value up to its first comma.
_ORIGINAL_LIST = re.compile(r"(?:^|,)\s*style_components:\s*(\[[^\]\n]*\])")


def original_list_in(infotext: str, params: dict) -> None:
    """For A1111's on_infotext_pasted: put the original extension's whole list back into `params`
    (parse_generation_parameters handed over only '[0.12')."""
    value = params.get("style_components")
    if isinstance(value, str) and value.startswith("[") and not value.rstrip().endswith("]"):
        found = _ORIGINAL_LIST.search(infotext.strip().split("\n")[-1])
        if found:
            params["style_components"] = found[1]


def from_original_extension(d: Mapping) -> str | None:
    """Our infotext entry for what the original author's Forge extension wrote, or None:
    `style_components: [0.12, -1.5, ...]` (the slider values times the multiplier; see
    original_list_in), `style_components_strength` and `style_components_model` (its adapter's
    URL). Anything but a whole list of numbers (a cut one, one number per image as later Forge
    versions write lists) is not read: a style of its first values would look plausible."""
    values = d.get("style_components")
    if not isinstance(values, str) or not (values := values.strip()).startswith("[") or not values.endswith("]"):
        return None
    items = [re.sub(r"^np\.float\d+\((.*)\)$", r"\1", item.strip()) for item in values[1:-1].split(",")]
    if not all(is_number_text(item) for item in items):
        return None
    strength = str(d.get("style_components_strength", "1"))
    adapter = str(d.get("style_components_model") or "").rsplit("/", 1)[-1].split("?")[0]
    params = StyleParams(model=name_of(adapter, "adapter") if adapter else "", components=tuple(map(float, items)),
                         strength=float(strength) if is_number_text(strength) else 1.0)
    return params.to_infotext()


def _without_trailing_zeros(values) -> tuple[float, ...]:
    """Slider values as a style: the zeros after the last moved slider say nothing."""
    values = list(values)
    while values and values[-1] == 0.0:
        values.pop()
    return tuple(values)


def controls_from_infotext(text: str | None, find_model=None) -> tuple[dict, list[str]]:
    """Control values (by argument name) from the infotext entry; ({}, []) when absent.
    find_model(name, hash) -> the local model (.name, .hash) or None: a renamed model file is
    found by its hash, and a model of that name but another hash is pointed out."""
    if not text:
        return {"enabled": False}, []
    params, problems = StyleParams.parse(text)
    local = find_model(params.model, params.model_hash) if find_model is not None and params.model else None
    if find_model is not None and params.model and local is None:
        problems.append(f"style model {params.model!r} is not in the model folders: generating stops until its "
                        f"files are there (then press \U0001f504) or another model is chosen")
    elif local is not None and local.name != params.model:
        problems.append(f"model {params.model!r} is here as {local.name!r} (same file hash {params.model_hash})")
        params = replace(params, model=local.name)
    elif local is not None and params.model_hash and local.hash.lower() != params.model_hash.lower():
        problems.append(f"model {params.model!r} here is another file (hash {local.hash}) than the image's "
                        f"({params.model_hash}): the image may not be reproduced")
    given = len(_without_trailing_zeros(params.components))
    if params.seed is None and local is not None and getattr(local, "k", None) is not None and given > local.k:
        # cut as a model change cuts the sliders: kept on hidden sliders, they stopped every generation
        problems.append(f"{given} component values, but model {local.name!r} has {local.k}: the last "
                        f"{given - local.k} are not restored (the style was made with another model)")
        params = replace(params, components=params.components[:local.k])
    if len(params.components) > MAX_COMPONENTS:  # a paste never raises into the host
        problems.append(f"{len(params.components)} components, the UI has {MAX_COMPONENTS} sliders: "
                        f"the last {len(params.components) - MAX_COMPONENTS} are not restored")
        params = replace(params, components=params.components[:MAX_COMPONENTS])
    return dict(zip(ALL_NAMES, to_positional(params))), problems


def apply_overrides(params: StyleParams, overrides: Mapping[str, Any] | None, k: int | None = None) -> StyleParams:
    """XYZ plot values: {"strength": x, "multiplier": x, "model": name, "component N": x (1-based)}.
    A component axis moves the style the grid would show: the sliders, or the k values (the
    model's K) drawn from a fixed style seed. Seed -1 (each image its own style) has no one
    style to move: an ArgumentError."""
    if not overrides:
        return params
    changes, comps = {}, list(params.components)
    if params.seed is not None and any(key.startswith("component ") for key in overrides):
        if params.seed == SEED_PER_IMAGE:
            raise ArgumentError("an XYZ 'Style component' axis moves one style, but style seed -1 draws "
                                "each image's own: set a style seed (0 or more), or turn Random off")
        if k is None:
            raise ValueError("k (the model's number of components) is needed to move a random style")
        comps, changes["seed"] = list(params.slider_values(k)), None
    for key, value in overrides.items():
        if key in ("strength", "multiplier"):
            changes[key] = float(value)
        elif key == "model":
            changes["model"], changes["model_hash"] = str(value), ""
        elif key.startswith("component "):
            i = int(key.split()[1]) - 1
            if not 0 <= i < MAX_COMPONENTS:
                raise ArgumentError(f"{key}: components are numbered 1 to {MAX_COMPONENTS}")
            comps += [0.0] * (i + 1 - len(comps))
            comps[i] = float(value)
        else:
            raise ArgumentError(f"unknown override {key!r}")
    return replace(params, components=tuple(comps), **changes)
