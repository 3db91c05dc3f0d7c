"""The style space: a PCA basis that turns embeddings into sliders and back.

A slider value of 1 is one standard deviation of the training styles along that
component, so random styles are N(0, 1) per slider. All sliders at 0 is the *mean*
style; "no style" is not a point of this space (see `adapter.Adapter.null_input`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import files
from .errors import ModelFileError, UsageError

FORMAT = "style-components-space"


@dataclass(frozen=True)
class StyleSpace:
    mean: torch.Tensor        # [D]
    components: torch.Tensor  # [K, D], orthonormal rows
    std: torch.Tensor         # [K], standard deviation of the data along each component
    labels: tuple[str, ...] = ()
    extractor: str = ""       # name of the extractor whose embeddings this space describes
    name: str = ""
    meta: dict = field(default_factory=dict, compare=False)

    @property
    def k(self) -> int:
        return self.components.shape[0]

    @property
    def d(self) -> int:
        return self.components.shape[1]

    def to_components(self, embedding: torch.Tensor) -> torch.Tensor:
        """[..., D] embedding -> [..., K] slider values: ((e - mean) @ C^T) / std."""
        e = embedding.to(self.mean)
        if e.shape[-1:] != self.mean.shape:  # an extractor of another model beside this space
            raise UsageError(f"embeddings of {e.shape[-1] if e.ndim else 1} dims given, the style space "
                             f"{self.name!r} describes {self.mean.shape[0]}-d embeddings (another model's extractor?)")
        return ((e - self.mean) @ self.components.T) / self.std

    def to_embedding(self, components: torch.Tensor) -> torch.Tensor:
        """[..., K'] slider values (K' <= K, missing ones are 0) -> [..., D]: (z * std) @ C + mean."""
        z = torch.as_tensor(components).to(self.mean)
        k = z.shape[-1]
        if k > self.k:
            raise UsageError(f"{k} component values given, the style space {self.name!r} has {self.k}")
        return (z * self.std[:k]) @ self.components[:k] + self.mean

    def label(self, i: int) -> str:
        return self.labels[i] if i < len(self.labels) and self.labels[i] else f"Style component {i + 1}"

    def save(self, path) -> None:
        files.write(path, {"mean": self.mean, "components": self.components, "std": self.std},
                    {"format": FORMAT, "k": self.k, "d": self.d, "labels": list(self.labels),
                     "extractor": self.extractor, "name": self.name or Path(path).stem})

    @classmethod
    def load(cls, path) -> "StyleSpace":
        tensors, meta = files.read(path, FORMAT)
        components = files.require(path, tensors, "components", (None, None))
        k, d = components.shape
        mean = files.require(path, tensors, "mean", (d,))
        std = files.require(path, tensors, "std", (k,))
        files.reject_extra(path, tensors, {"mean", "components", "std"})
        if not bool(torch.all(std.float() >= torch.finfo(torch.float32).tiny)):  # a denormal one makes inf sliders
            raise ModelFileError(path, "standard deviations must be positive (and not denormal)", "std")
        labels = files.json_field(path, meta, "labels", [])
        if not isinstance(labels, list) or not all(isinstance(s, str) for s in labels):
            raise ModelFileError(path, "metadata entry 'labels' must be a list of strings")
        return cls(mean.float(), components.float(), std.float(), tuple(labels),
                   meta.get("extractor", ""), meta.get("name", Path(path).stem), meta)
