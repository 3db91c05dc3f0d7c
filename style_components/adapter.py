"""The style adapter: style input -> tokens -> per-layer values, in IP-Adapter's file layout.

The module's `state_dict()` keys are the file's keys (`image_proj.*`,
`ip_adapter.{n}.to_v_ip.weight`, optional `ip_adapter.{n}.to_k_ip.weight`), so loading
is build-from-shapes + strict load, and a trainer can save what it optimises as is.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import files
from .errors import ModelFileError

FORMAT = "style-components-adapter"
ARCHS = {16: "sd1", 70: "sdxl"}  # attn2 layer count -> architecture
_LAYER_KEY = re.compile(r"ip_adapter\.(\d+)\.(to_v_ip|to_k_ip)\.weight")


class Projection(nn.Module):
    """Style input [N, D_in] -> tokens [N, T, cross]: Linear (classic IP-Adapter) or
    Linear-GELU-Linear (the original Style Components release), then LayerNorm per token."""

    def __init__(self, d_in: int, cross_dim: int, tokens: int = 1, hidden: int | None = None):
        super().__init__()
        self.tokens, self.cross_dim = tokens, cross_dim
        out = cross_dim * tokens
        self.proj = (nn.Linear(d_in, out) if hidden is None else
                     nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, out)))
        self.norm = nn.LayerNorm(cross_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Functional calls, not the submodules' forward: a host may patch nn.Linear/LayerNorm.forward
        # (A1111's manual_cast, on MPS, XPU and GTX 16xx, moves each called module to fp16 and
        # back, which would round the adapter's weights for good).
        for layer in self.proj if isinstance(self.proj, nn.Sequential) else (self.proj,):
            x = F.gelu(x) if isinstance(layer, nn.GELU) else F.linear(x, layer.weight, layer.bias)
        norm = self.norm
        return F.layer_norm(x.reshape(-1, self.tokens, self.cross_dim), norm.normalized_shape,
                            norm.weight, norm.bias, norm.eps)


class LayerValues(nn.Module):
    """One attn2 layer's projections of the style tokens (no bias, as in IP-Adapter)."""

    def __init__(self, cross_dim: int, inner_dim: int, with_keys: bool):
        super().__init__()
        self.to_v_ip = nn.Linear(cross_dim, inner_dim, bias=False)
        self.to_k_ip = nn.Linear(cross_dim, inner_dim, bias=False) if with_keys else None

    # functional, as Projection.forward and for the same reason
    def values(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.linear(tokens, self.to_v_ip.weight)

    def keys(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.linear(tokens, self.to_k_ip.weight)


class Adapter(nn.Module):
    def __init__(self, d_in: int, cross_dim: int, inner_dims: list[int], tokens: int = 1,
                 hidden: int | None = None, with_keys: bool = False, name: str = "", meta: dict | None = None):
        super().__init__()
        self.image_proj = Projection(d_in, cross_dim, tokens, hidden)
        # Layer n of the file is the n-th attn2 of the UNet in IP-Adapter order (see layers.py);
        # IP-Adapter numbers all attention layers, attn2 takes the odd keys.
        self.ip_adapter = nn.ModuleDict({str(2 * i + 1): LayerValues(cross_dim, c, with_keys)
                                         for i, c in enumerate(inner_dims)})
        self.d_in, self.cross_dim, self.tokens = d_in, cross_dim, tokens
        self.inner_dims, self.with_keys = list(inner_dims), with_keys
        self.name, self.meta = name, dict(meta or {})

    @property
    def n_layers(self) -> int:
        return len(self.inner_dims)

    @property
    def arch(self) -> str:
        return ARCHS.get(self.n_layers, f"{self.n_layers}-layer")

    def layer(self, key: int) -> LayerValues:
        return self.ip_adapter[str(key)]

    def null_input(self, n: int = 1) -> torch.Tensor:
        """The "no style" input condition dropout trained on: zeros. For an embedding input that
        is not the mean style; for a components input (d_in == K) it is the mean style too."""
        return torch.zeros(n, self.d_in)

    def forward(self, style_input: torch.Tensor) -> torch.Tensor:
        """[N, D_in] -> [N, T, cross] style tokens."""
        p = self.image_proj.norm.weight
        return self.image_proj(style_input.to(p.device, p.dtype).reshape(-1, self.d_in))

    def save(self, path, **metadata) -> None:
        files.write(path, self.state_dict(), {"format": FORMAT, "name": self.name, **self.meta, **metadata})

    @classmethod
    def load(cls, path) -> "Adapter":
        tensors, meta = files.read(path)  # the original release has no format entry: accept any
        adapter = cls(**_shapes(path, tensors), name=meta.get("name") or Path(path).stem, meta=meta)
        adapter.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=True)
        return adapter.eval().requires_grad_(False)


def _shapes(path, tensors: dict[str, torch.Tensor]) -> dict:
    """Infer the adapter's constructor arguments from the file, checking every key and shape."""
    norm = files.require(path, tensors, "image_proj.norm.weight", (None,))
    cross = norm.shape[0]
    files.require(path, tensors, "image_proj.norm.bias", (cross,))
    if "image_proj.proj.weight" in tensors:  # classic IP-Adapter projection
        hidden, last = None, "image_proj.proj"
        d_in = files.require(path, tensors, f"{last}.weight", (None, None)).shape[1]
    else:  # the original release's MLP
        first = files.require(path, tensors, "image_proj.proj.0.weight", (None, None))
        hidden, d_in = first.shape
        files.require(path, tensors, "image_proj.proj.0.bias", (hidden,))
        last = "image_proj.proj.2"
        files.require(path, tensors, f"{last}.weight", (None, hidden))
    out = tensors[f"{last}.weight"].shape[0]
    if out % cross:
        raise ModelFileError(path, f"output size {out} is not a multiple of the token size {cross}", f"{last}.weight")
    files.require(path, tensors, f"{last}.bias", (out,))

    keys = sorted({int(m.group(1)) for k in tensors if (m := _LAYER_KEY.fullmatch(k))})
    expected = [2 * i + 1 for i in range(len(keys))]
    if keys != expected:
        missing = sorted(set(expected) - set(keys)) or [keys[-1] + 2 if keys else 1]
        raise ModelFileError(path, "missing (layer keys must be 1, 3, 5, ... without gaps)",
                             f"ip_adapter.{missing[0]}.to_v_ip.weight")
    if len(keys) not in ARCHS:
        raise ModelFileError(path, f"{len(keys)} cross-attention layers; SD1 adapters have 16, SDXL 70")
    with_keys = f"ip_adapter.{keys[0]}.to_k_ip.weight" in tensors
    inner_dims = []
    for n in keys:
        v = files.require(path, tensors, f"ip_adapter.{n}.to_v_ip.weight", (None, cross))
        inner_dims.append(v.shape[0])
        if with_keys:
            files.require(path, tensors, f"ip_adapter.{n}.to_k_ip.weight", tuple(v.shape))
    tokens = out // cross
    if tokens > 1 and not with_keys:
        raise ModelFileError(path, f"{tokens} tokens need keys for attention", f"ip_adapter.{keys[0]}.to_k_ip.weight")

    known = {"image_proj.norm.weight", "image_proj.norm.bias", f"{last}.weight", f"{last}.bias"}
    if hidden is not None:
        known |= {"image_proj.proj.0.weight", "image_proj.proj.0.bias"}
    known |= {f"ip_adapter.{n}.{kind}.weight" for n in keys for kind in ("to_v_ip", "to_k_ip")[:1 + with_keys]}
    files.reject_extra(path, tensors, known)
    return dict(d_in=d_in, cross_dim=cross, inner_dims=inner_dims, tokens=tokens, hidden=hidden, with_keys=with_keys)
