"""Finding model files in folders, grouping them into models, loading them on demand.

A model is an adapter plus the style space its sliders live in, and optionally the
extractor that turns reference images into embeddings of that space. Files are recognised
by their safetensors `format` metadata (read from the header alone: no tensor is loaded,
no torch import) or, for files without it (the original release's adapter), by name:
`<name>.space.safetensors`, `<name>.adapter.safetensors`, `<name>.extractor.safetensors`
(also with `_` or `-` before the kind, an optional `style` before it, `pca` for a space,
`ip-adapter` for an adapter).
Files of one model share `<name>`; a lone space or extractor in a folder serves every
adapter of that folder.
"""

from __future__ import annotations

import json
import os
import re
import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from .errors import UsageError

KINDS = ("space", "adapter", "extractor")
FORMATS = {"style-components-space": "space", "style-components-adapter": "adapter",
           "style-components-extractor": "extractor"}
# `<name>[.-_][style.-_]<kind word>`: "anime_style_adapter" and "anime_style_space" group as "anime";
# or the kind word first, as the original release names its adapter ("ip-adapter-style_sdxl_amix_v0.1.0")
_KIND_WORDS = (("space", "space|pca"), ("extractor", "extractor|embedder"), ("adapter", r"(?:ip[._-]?)?adapter"))
_NAME_KIND = [(kind, re.compile(rf"^(?P<name>.+?)[._-]?(?:style[._-]?)?(?:{words})$", re.I))
              for kind, words in _KIND_WORDS] + \
             [(kind, re.compile(rf"^(?:{words})[._-]+(?:style[._-]+)?(?P<name>.+)$", re.I)) for kind, words in _KIND_WORDS]
_MAX_HEADER = 100 << 20
MAX_COMPONENT_INPUT = 64  # an adapter input wider than this is an embedding: it needs its style space


# adapters whose metadata names a base model the WebUI cannot load
NOT_FOR_WEBUI = frozenset({"style-components-icon-world"})


def read_header(path) -> dict:
    """The JSON header of a safetensors file (tensor names -> dtype, shape, offsets; and
    `__metadata__`) without reading any tensor; {} when absent or unreadable."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > _MAX_HEADER:
                return {}
            header = json.loads(f.read(n))
    except (OSError, ValueError, struct.error):
        return {}
    return header if isinstance(header, dict) else {}


def read_metadata(path) -> dict[str, str]:
    """The `__metadata__` of a safetensors file's header; {} when absent or unreadable."""
    return _metadata(read_header(path))


def _metadata(header: dict) -> dict[str, str]:
    meta = header.get("__metadata__")
    return {str(k): str(v) for k, v in meta.items()} if isinstance(meta, dict) else {}


def space_layout(path) -> tuple[int, tuple[str, ...]] | None:
    """(K, slider labels) of a style-space file from its header alone (no tensor is read);
    None when the header does not say (the UI then shows its default sliders). K is the
    components tensor's row count, which loading checks, not the metadata's `k`."""
    header = read_header(path)
    meta = _metadata(header)
    try:
        shape = header["components"]["shape"]
        k, labels = int(shape[0]), json.loads(meta.get("labels") or "[]")
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    if k <= 0 or len(shape) != 2 or not isinstance(labels, list):
        return None
    return k, tuple(str(label) for label in labels)


def classify(path, header: dict | None = None) -> tuple[str | None, str]:
    """(kind, model name) of a file: kind from metadata, else from its tensors (an adapter's
    IP-Adapter layout), else from the name; None if none says. The name drops only its kind's word.
    `header`: the file's, when already read."""
    path = Path(path)
    header = read_header(path) if header is None else header
    kind = FORMATS.get(_metadata(header).get("format", "")) or ("adapter" if _adapter_input(header) else None)
    # a known kind reads only its own words: "workspace", an adapter, is not model "work"
    return _named(_stem(path), kind) or (kind, _stem(path))


def name_of(path, kind: str) -> str:
    """The model name the file name of a `kind` file gives: 'anime.space.safetensors' -> 'anime'
    (an extractor 'landscape' stays 'landscape': 'space' is not its kind's word)."""
    stem = _stem(Path(path))
    found = _named(stem, kind)
    return found[1] if found else stem


def _named(stem: str, kind: str | None) -> tuple[str, str] | None:
    """(kind, name) of the first kind word (of `kind`, or of any kind if None) the stem ends or starts with."""
    return next(((k, m["name"]) for k, pattern in _NAME_KIND
                 if kind in (None, k) and (m := pattern.match(stem)) and m["name"]), None)


def _stem(path: Path) -> str:
    return path.name[: -len(".safetensors")] if path.name.endswith(".safetensors") else path.stem


def _adapter_input(header: dict) -> int | None:
    """An adapter's input size (K components or an embedding's D) from its header, if it has the IP-Adapter layout."""
    first = header.get("image_proj.proj.0.weight") or header.get("image_proj.proj.weight")
    try:
        return int(first["shape"][1]) if "image_proj.norm.weight" in header else None
    except (KeyError, IndexError, TypeError, ValueError):
        return None


def _space_shape(header: dict) -> tuple[int, int] | None:
    """A style space's (K, D) from its header."""
    try:
        k, d = header["components"]["shape"]
        return int(k), int(d)
    except (KeyError, TypeError, ValueError):
        return None


def _stamp(*paths) -> tuple:
    """What tells a file replaced in place (a retrained model under the same name)."""
    stamps = []
    for p in paths:
        try:
            st = os.stat(p) if p is not None else None
        except OSError:
            st = None
        stamps.append((st.st_mtime_ns, st.st_size) if st is not None else None)
    return tuple(stamps)


@dataclass
class ModelInfo:
    name: str
    adapter: Path
    space: Path | None = None
    extractor: Path | None = None
    stamp: tuple = field(default=(), repr=False)  # the three files' (mtime, size): equal infos, same files
    _hash: str = field(default="", repr=False, compare=False)

    def __post_init__(self) -> None:
        self.stamp = self.stamp or _stamp(self.adapter, self.space, self.extractor)

    def changed(self) -> bool:
        """Whether a file was replaced (or removed) since the scan."""
        return _stamp(self.adapter, self.space, self.extractor) != self.stamp

    @property
    def hash(self) -> str:
        """Short sha256 of the adapter file (computed once; it reads the whole file)."""
        if not self._hash:
            from .files import short_hash
            self._hash = short_hash(self.adapter)
        return self._hash

    @property
    def title(self) -> str:
        return self.name

    @property
    def k(self) -> int | None:
        """Its number of components from the style space's header; None without one."""
        layout = space_layout(self.space) if self.space is not None else None
        return layout[0] if layout is not None else None


def scan(folders: Iterable) -> dict[str, ModelInfo]:
    """Every model found in `folders` (searched recursively), by name; earlier folders win."""
    models: dict[str, ModelInfo] = {}
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            continue
        by_dir: dict[Path, dict[str, dict[str, Path]]] = {}
        headers = {path: read_header(path) for path in _safetensors_files(folder)}  # each read once
        for path, header in headers.items():
            kind, name = classify(path, header)
            if kind == "adapter" and _metadata(header).get("base") in NOT_FOR_WEBUI:
                continue  # e.g. the demo adapter in models/demo: its base is the icon world, not SD
            if kind in KINDS:  # names pair regardless of case (Windows users do not see it)
                by_dir.setdefault(path.parent, {k: {} for k in KINDS})[kind].setdefault(name.lower(), (name, path))
        for files in by_dir.values():
            lone = {k: next(iter(files[k].values()))[1] if len(files[k]) == 1 else None for k in ("space", "extractor")}
            for key, (name, adapter) in files["adapter"].items():
                if name in models:
                    continue
                space = files["space"].get(key, (None, None))[1] or _fitting_space(lone["space"], adapter, headers)
                extractor = files["extractor"].get(key, (None, None))[1] or lone["extractor"]
                models[name] = ModelInfo(name, adapter, space, extractor)
    return models


def _safetensors_files(folder: Path) -> list[Path]:
    """Every .safetensors file below `folder`, following linked folders as A1111's own model lists do
    (a shared model store linked in), each real folder once."""
    found, seen = [], set()
    for root, dirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs.clear()
            continue
        seen.add(real)
        found += [Path(root) / n for n in names if n.endswith(".safetensors")]
    return sorted(found)


def _fitting_space(space: Path | None, adapter: Path, headers: dict) -> Path | None:
    """A folder's lone style space serves an adapter when its D is what the adapter takes (an
    adapter of K components takes one as well: its sliders' labels), not another model's space."""
    if space is None:
        return None
    d_in, shape = _adapter_input(headers[adapter]), _space_shape(headers[space])
    return space if d_in is None or shape is None or d_in in shape else None


@dataclass
class LoadedModel:
    info: ModelInfo
    adapter: object          # adapter.Adapter
    space: object | None     # space.StyleSpace, None for adapters that take embeddings without a space

    @property
    def k(self) -> int:
        """Number of sliders: the space's K, or the adapter's input size when it takes components directly."""
        return self.space.k if self.space is not None else self.adapter.d_in

    def style_inputs(self, components) -> "torch.Tensor":  # noqa: F821
        """[N, K'] slider values -> [N, adapter.d_in] adapter inputs."""
        import torch
        z = torch.as_tensor(components, dtype=torch.float32)
        if self.adapter.d_in == z.shape[-1] or (self.space is None and z.shape[-1] <= self.adapter.d_in):
            if z.shape[-1] < self.adapter.d_in:
                z = torch.nn.functional.pad(z, (0, self.adapter.d_in - z.shape[-1]))
            return z
        if self.space is None:
            raise UsageError(f"{z.shape[-1]} component values given, model {self.info.name!r} takes {self.adapter.d_in}")
        if self.space.d != self.adapter.d_in:
            from .errors import ModelFileError
            raise ModelFileError(self.info.space, f"style space has {self.space.d}-d embeddings, the adapter "
                                                  f"{self.info.adapter.name} takes {self.adapter.d_in}")
        from .inject import row_by_row  # an image's style must not depend on its batch
        return row_by_row(self.space.to_embedding, z.reshape(-1, z.shape[-1])).reshape(*z.shape[:-1], self.space.d)


class Registry:
    """The models of some folders, scanned on demand, with at most one loaded at a time."""

    def __init__(self, folders: Iterable = ()):
        self.folders = [Path(f) for f in folders]
        self.models: dict[str, ModelInfo] = {}
        self.loaded: LoadedModel | None = None
        self._lock = threading.Lock()
        self._scanned = False
        self.scans = 0  # how many times the folders were scanned (a key for what depends on them)

    def set_folders(self, folders: Iterable) -> None:
        self.folders = [Path(f) for f in folders]
        self._scanned = False

    def refresh(self) -> list[str]:
        self.models = scan(self.folders)
        self._scanned = True
        self.scans += 1
        if self.loaded is not None and self.models.get(self.loaded.info.name) != self.loaded.info:
            self.unload()
        return self.names()

    def names(self) -> list[str]:
        if not self._scanned:
            self.refresh()
        return sorted(self.models, key=str.lower)

    def find(self, name: str = "", model_hash: str = "") -> ModelInfo | None:
        """The model an infotext names: the one whose adapter has `model_hash` (the named one
        first: a file renamed or replaced under its name is told apart), else the one named."""
        self.names()
        named = self.models.get(name)
        if model_hash:
            candidates = ([named] if named is not None else []) + list(self.models.values())
            same = next((info for info in candidates if info.hash.lower() == model_hash.lower()), None)
            if same is not None:
                return same
        return named

    def load(self, name: str) -> LoadedModel:
        from .errors import StyleComponentsError
        info = self.find(name)
        if info is not None and info.changed():  # retrained in place, or removed: scan again
            self.refresh()
            info = self.find(name)
        if info is None:
            known = ", ".join(self.names()) or "none; put model files in " + " or ".join(map(str, self.folders))
            raise StyleComponentsError(f"style model {name!r} not found (known: {known})")
        with self._lock:
            if self.loaded is None or self.loaded.info != info:
                from .adapter import Adapter
                from .space import StyleSpace
                self.loaded = None
                info.hash  # of the file as loaded (the infotext's record), not as it may be later
                adapter = Adapter.load(info.adapter)
                adapter.name = info.name  # messages name the model as the user picked it, not the file's own name
                if info.space is None and adapter.d_in > MAX_COMPONENT_INPUT:
                    raise StyleComponentsError(
                        f"style model {name!r}: its adapter takes {adapter.d_in}-d embeddings and no style space "
                        f"was found beside it (put it in {info.adapter.parent} as {name}.space.safetensors)")
                space = StyleSpace.load(info.space) if info.space is not None else None
                self.loaded = LoadedModel(info, adapter, space)
            return self.loaded

    def unload(self) -> None:
        self.loaded = None
