"""Named style presets: a reusable style built from a set of images, stored as a tiny safetensors file.

The aesthetic-gradients workflow without training: embed the images with the model's extractor,
average (optionally weighted), project into the style space, keep the K slider values. A preset
file holds `components` [K] and metadata `format`, `name`, `model` (the style model it was built
for) and `source` (a note on the images). Selecting it sets the sliders; the infotext records the
values themselves, so images stay reproducible if the preset is later renamed or deleted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .errors import StyleComponentsError

FORMAT = "style-components-preset"
SUFFIX = ".style.safetensors"
_NAME = re.compile(r"^[\w][\w .,()+-]{0,99}$")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")  # what Pillow reads; also artists' folders (train.dataset)


@dataclass(frozen=True)
class Preset:
    name: str
    components: tuple[float, ...]
    model: str = ""
    source: str = ""
    path: Path | None = None


_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"{dev}{i}" for dev in ("COM", "LPT") for i in range(1, 10))}  # Windows


def check_name(name: str, what: str = "preset") -> str:
    """A preset's (or a `what`'s) name, which is its file's name: one that every file system takes."""
    name = (name or "").strip()
    if not _NAME.match(name) or name.endswith("."):
        raise StyleComponentsError(f"{what} name {name!r}: use letters, digits, spaces and . , ( ) + - _ "
                                   "(at most 100 characters, not starting with a symbol)")
    if len((name + SUFFIX).encode()) > 200:  # file names are limited in bytes (255), and saving adds a temporary suffix
        raise StyleComponentsError(f"{what} name {name[:20]!r}...: too long for a file name")
    if name.split(".")[0].strip().upper() in _RESERVED:
        raise StyleComponentsError(f"{what} name {name!r}: a device name on Windows")
    return name


def path_of(folder, name: str) -> Path:
    return Path(folder) / (check_name(name) + SUFFIX)


def images_in(folder) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise StyleComponentsError(f"{folder}: not a folder")
    found = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not found:
        raise StyleComponentsError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return found


def build(extractor, space, images: Sequence, weights: Sequence[float] | None = None) -> tuple[float, ...]:
    """K slider values of the images' (weighted) mean style."""
    if not images:
        raise StyleComponentsError("a preset needs at least one image")
    embedding = extractor.embed(list(images), list(weights) if weights else None)
    return tuple(float(v) for v in space.to_components(embedding.reshape(-1)).tolist())


def save(folder, name: str, components: Sequence[float], model: str = "", source: str = "",
         overwrite: bool = False) -> Preset:
    import torch
    from . import files
    path = path_of(folder, name)
    if path.exists() and not overwrite:
        raise StyleComponentsError(f"preset {name!r} already exists")
    values = torch.tensor(list(components), dtype=torch.float32)
    # checked here, as load() will: a file that fails it would be written and then not be listed
    if values.ndim != 1 or values.numel() == 0 or not bool(torch.isfinite(values).all()):
        raise StyleComponentsError(f"preset {name!r}: its slider values must be finite numbers, "
                                   f"not {[float(v) for v in values.reshape(-1)][:8]}")
    files.write(path, {"components": values}, {
        "format": FORMAT, "name": check_name(name), "model": model, "source": source})
    return load(path)


def load(path) -> Preset:
    from . import files
    tensors, meta = files.read(path, FORMAT)
    comps = files.require(path, tensors, "components", (None,))
    files.reject_extra(path, tensors, {"components"})
    # the file's name, not the metadata's: a file renamed or copied by hand is listed (and deleted) as itself
    name = Path(path).name[: -len(SUFFIX)]
    return Preset(name, tuple(float(v) for v in comps.tolist()), meta.get("model", ""), meta.get("source", ""),
                  Path(path))


def list_presets(folder, model: str | None = None) -> list[Preset]:
    """Presets in `folder` (unreadable files skipped), optionally only those built for `model`."""
    from .errors import ModelFileError
    folder = Path(folder)
    out = []
    for path in sorted(folder.glob("*" + SUFFIX)) if folder.is_dir() else []:
        try:
            preset = load(path)
        except ModelFileError:
            continue
        if model is None or not preset.model or preset.model == model:
            out.append(preset)
    return out


def find(folder, name: str) -> Preset:
    for preset in list_presets(folder):
        if preset.name == name:
            return preset
    raise StyleComponentsError(f"preset {name!r} not found")


def rename(folder, old: str, new: str) -> Preset:
    preset = find(folder, old)
    target = path_of(folder, new)
    if target.exists():
        raise StyleComponentsError(f"preset {new!r} already exists")
    saved = save(folder, new, preset.components, preset.model, preset.source)
    preset.path.unlink()
    return saved


def delete(folder, name: str) -> None:
    find(folder, name).path.unlink()
