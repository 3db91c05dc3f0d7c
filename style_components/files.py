"""Reading and checking safetensors files: the only way model files are loaded."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import Iterator, Mapping

import torch

from .errors import ModelFileError


def read(path, kind: str | None = None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load every tensor and the metadata of a safetensors file.

    `kind`, when given, must equal the file's `format` metadata entry; it keeps a
    style space from being loaded as an extractor and vice versa.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(path, "file not found")
    try:
        with safe_open(str(path), "pt") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ModelFileError(path, f"not a readable safetensors file ({e})") from None
    if kind is not None and metadata.get("format") != kind:
        found = metadata.get("format", "none")
        raise ModelFileError(path, f"expected a {kind!r} file, its metadata says format={found!r}")
    return tensors, metadata


@contextlib.contextmanager
def replaced(path) -> Iterator[Path]:
    """A temporary path in `path`'s folder to write; renamed to `path` when the block succeeds.

    A failed or interrupted write never leaves a half file that the model lists would show (or a
    resume would read), nor spoils an older one. The temporary name is hidden and has no model suffix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as f:  # on disk before the rename: a power cut leaves one file or the other
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write(path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, object]) -> None:
    """Save tensors with metadata (non-string metadata values are stored as JSON), atomically."""
    from safetensors.torch import save_file

    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    with replaced(path) as tmp:
        # safetensors creates files readable by their owner alone (0600); a model file should get
        # the mode any new file gets here (umask), so that a WebUI run by another user can read it
        os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        mode = os.stat(tmp).st_mode & 0o777
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), meta)
        os.chmod(tmp, mode)


def require(path, tensors: Mapping[str, torch.Tensor], key: str, shape: tuple[int | None, ...],
            floating: bool = True) -> torch.Tensor:
    """Return tensors[key] after checking it exists, has `shape` (None = any size, never empty)
    and, when `floating`, a float dtype and finite values."""
    if key not in tensors:
        raise ModelFileError(path, "missing", key)
    t = tensors[key]
    if t.ndim != len(shape) or any(s is not None and s != n for s, n in zip(shape, t.shape)):
        want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
        raise ModelFileError(path, f"shape {list(t.shape)} where {want} is required", key)
    if t.numel() == 0:
        raise ModelFileError(path, f"shape {list(t.shape)} is empty", key)
    if floating and not t.is_floating_point():
        raise ModelFileError(path, f"dtype {t.dtype} where a floating-point tensor is required", key)
    if floating:
        check_finite(path, key, t)
    return t


def check_finite(path, key: str, t: torch.Tensor) -> None:
    """A floating-point tensor must hold no NaN or infinity (other dtypes pass)."""
    # torch has no isfinite for most 8-bit floats; their values are exact in float32
    if t.is_floating_point() and not bool(torch.isfinite(t if t.dtype.itemsize > 1 else t.float()).all()):
        raise ModelFileError(path, "holds NaN or infinite values", key)


def reject_extra(path, tensors: Mapping[str, torch.Tensor], known: set[str]) -> None:
    """Unknown keys mean the file is not what we think it is: refuse it rather than ignore weights."""
    extra = sorted(set(tensors) - known)
    if extra:
        more = f" and {len(extra) - 1} more" if len(extra) > 1 else ""
        raise ModelFileError(path, f"unexpected key{more}", extra[0])


def json_field(path, metadata: Mapping[str, str], key: str, default=None):
    """Parse one JSON metadata entry, naming it when it is garbled."""
    if key not in metadata:
        return default
    try:
        return json.loads(metadata[key])
    except json.JSONDecodeError:
        raise ModelFileError(path, f"metadata entry {key!r} is not valid JSON") from None


def short_hash(path) -> str:
    """First 8 hex digits of the file's SHA-256, the form A1111 shows for models."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:8]
