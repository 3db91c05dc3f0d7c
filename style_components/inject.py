"""Adding the style term to a UNet's cross-attention through forward hooks.

IP-Adapter's decoupled attention makes attn2 output `W_o (attn(Q,K,V) + w * attn(Q,K_ip,V_ip)) + b_o`.
W_o is linear, so the style part is a separate term `w * W_o attn(Q,K_ip,V_ip)` that a forward
hook adds to attn2's output, whatever `forward` the host installed (A1111 swaps it for its
attention optimisations). With one style token the softmax is 1 and the term is a per-row
constant `w * W_o W_v t`: computed once per style, then one add per layer and step. With
several tokens, Q comes from the layer's own to_q call and W_o is folded into the style values.

Rows: every UNet call is told, per batch row, which style it takes: an index into the
styles given to `apply`, or NULL for the null style `proj(0)` that uncond rows get.
"""

from __future__ import annotations

import math
import warnings
import weakref
from typing import Callable, Sequence

import torch
from torch import nn

from .adapter import ARCHS, Adapter
from .errors import IncompatibleModelError, StyleComponentsError, UsageError
from .layers import Attn2, find_attn2, preset_weights

NULL = -1  # row index of the null style (the last row of the style table)

RowResolver = Callable[[tuple, dict], Sequence[int]]
_active: "weakref.WeakKeyDictionary[nn.Module, list[StyleHandle]]" = weakref.WeakKeyDictionary()


def row_by_row(fn: Callable[[torch.Tensor], torch.Tensor], table: torch.Tensor) -> torch.Tensor:
    """fn(table) computed one row at a time: a matmul's rounding depends on how many rows it
    gets, and a style's numbers must not depend on which other styles share the batch (an image
    of a batch, regenerated alone, is then bit-identical)."""
    return torch.cat([fn(table[i:i + 1]) for i in range(table.shape[0])])


def cfg_rows(n_images: int, cond_first: bool = True) -> list[int]:
    """Rows of the usual classifier-free-guidance batch: image i's style, then n null rows."""
    cond, uncond = list(range(n_images)), [NULL] * n_images
    return cond + uncond if cond_first else uncond + cond


def guidance_rows(styles: Sequence[int], cond_first: bool = True) -> RowResolver:
    """A `rows` function for a host that calls the UNet with one cond row per image (image i takes
    style styles[i]) and, under CFG, as many null-style uncond rows in the same call: after the
    cond rows (cond_first: A1111, the loop in README) or before them (diffusers pipelines). A call
    of just the cond rows (guidance scale <= 1) is understood too."""
    styles = list(styles)
    n = len(styles)

    def rows(args: tuple, kwargs: dict) -> list[int]:
        x = args[0] if args else kwargs.get("sample", kwargs.get("x"))
        if x.shape[0] == n:
            return styles
        if x.shape[0] == 2 * n:
            return styles + [NULL] * n if cond_first else [NULL] * n + styles
        raise StyleComponentsError(f"the UNet was called with {x.shape[0]} rows; the style rows are for "
                                   f"{n} images ({n} or {2 * n} rows with guidance)")
    return rows


def apply(unet: nn.Module, adapter: Adapter, style_inputs: torch.Tensor, strength: float = 1.0,
          weights: str | Sequence[float] = "all", start: float = 0.0, end: float = 1.0,
          rows: Sequence[int] | RowResolver | None = None, trainable: bool = False) -> "StyleHandle":
    """Hook `adapter` into `unet` with one style per row of `style_inputs` [N, adapter.d_in].

    weights: a preset name (see layers.PRESETS) or one weight per attn2 layer in call order.
    start/end: the fraction of the sampling schedule with the style on (see `set_progress`).
    rows: fixed style indices per batch row, or a function (unet args, kwargs) -> indices
    called before every UNet forward; default: every row takes style `row % N`.
    trainable: gradients flow to the adapter (for training; `set_styles` gives each step's styles).
    """
    return StyleHandle(unet, adapter, style_inputs, strength, weights, start, end, rows, trainable)


def remove_all(unet: nn.Module) -> None:
    """Remove every style hook on `unet`: a safety net before a generation starts."""
    for handle in list(_active.get(unet, ())):
        handle.remove()


class StyleHandle:
    def __init__(self, unet, adapter, style_inputs, strength, weights, start, end, rows, trainable=False):
        if getattr(unet, "_orig_mod", None) is not None or getattr(unet, "_compiled_call_impl", None) is not None:
            # compiled code does not see hooks added after it was traced (dynamo skips hook guards)
            raise StyleComponentsError("this UNet is compiled (torch.compile): apply the style to the "
                                       "module before compiling it")
        layers = find_attn2(unet)
        _check_fits(adapter, layers)
        strength = _finite_number(strength, "style strength")
        per_layer = (preset_weights(weights, layers) if isinstance(weights, str)
                     else [_finite_number(w, "layer weight") for w in weights])
        if len(per_layer) != len(layers):
            raise UsageError(f"{len(per_layer)} layer weights given, this UNet has {len(layers)} attn2 layers")
        if not 0.0 <= start <= end <= 1.0:
            raise UsageError(f"style range {start}-{end}: need 0 <= start <= end <= 1")
        self.adapter, self.trainable, self.version = adapter, trainable, 0
        self.layer_calls = 0  # style terms added so far: a host that bypasses the layers shows as 0
        self._rows: torch.Tensor | None = None
        self._rows_on: dict = {}  # rows copied per (batch, device), once per call, not per layer
        self.set_styles(style_inputs)
        self.start, self.end, self.progress, self._last_step = start, end, 0.0, 0.0
        if rows is not None and not callable(rows):
            self.set_rows(rows)  # checked before any hook exists: a bad argument leaves no trace
        self._hooks, n_terms = [], 0
        self._unet = weakref.ref(unet)  # before any hook: remove() on a failed install needs it
        try:
            for layer, w in zip(layers, per_layer):
                if strength * w != 0.0:  # a zero weight installs nothing: output stays bit-identical
                    term = _StyleTerm(layer, adapter.layer(layer.key), strength * w, self)
                    n_terms += 1
                    self._hooks.append(layer.module.register_forward_hook(term, with_kwargs=True))
                    if adapter.tokens > 1:
                        self._hooks.append(layer.module.to_q.register_forward_hook(term.keep_query))
            self.n_terms = n_terms
            if callable(rows):
                self._hooks.append(unet.register_forward_pre_hook(
                    lambda _, args, kwargs: self.set_rows(rows(args, kwargs)), with_kwargs=True))
        except BaseException:
            self.remove()
            raise
        if _active.get(unet):
            warnings.warn(f"this UNet already has {len(_active[unet])} style handle(s) applied, and their style terms "
                          f"add up (a forgotten remove()?); remove_all(unet) clears them", stacklevel=3)
        _active.setdefault(unet, []).append(self)

    def set_styles(self, style_inputs: torch.Tensor) -> None:
        """Replace the style table (same use as `apply`'s style_inputs); rows keep their meaning."""
        p = self.adapter.image_proj.norm.weight
        inputs = torch.as_tensor(style_inputs).to(p.device, torch.float32)
        if inputs.ndim not in (1, 2) or inputs.shape[-1] != self.adapter.d_in:  # reshaping would mix styles
            raise StyleComponentsError(f"style inputs of shape {list(inputs.shape)}: this adapter takes "
                                       f"[{self.adapter.d_in}] or [styles, {self.adapter.d_in}]")
        inputs = inputs.reshape(-1, self.adapter.d_in)
        if not bool(torch.isfinite(inputs).all()):  # NaN would reach every image, and caches
            raise StyleComponentsError("style inputs hold NaN or infinite values")
        if self._rows is not None and bool((self._rows >= inputs.shape[0]).any()):
            raise StyleComponentsError(f"style rows {self._rows.tolist()} name styles beyond the "
                                       f"{inputs.shape[0]} given: set the rows first")
        with torch.set_grad_enabled(self.trainable and torch.is_grad_enabled()):
            # Style table: one row per style, the null style last so that NULL = -1 indexes it.
            self.tokens = self.per_style(self.adapter, torch.cat([inputs, self.adapter.null_input().to(inputs.device)]))
        self.n_styles = inputs.shape[0]
        self._rows_on.clear()  # default rows (row % n_styles) depend on the table's size
        self.version += 1  # style terms recompute their cached values

    def per_style(self, fn, table: torch.Tensor) -> torch.Tensor:
        """fn(table), one style row at a time outside training (see row_by_row)."""
        if self.trainable and torch.is_grad_enabled():
            return fn(table)
        return row_by_row(fn, table)

    @property
    def active(self) -> bool:
        return self.start <= self.progress < self.end

    def set_rows(self, rows: Sequence[int] | None) -> None:
        """Style index per batch row for the next UNet calls (NULL: null style; None: default)."""
        self._rows_on.clear()
        if rows is None:
            self._rows = None
            return
        rows = torch.as_tensor(list(rows), dtype=torch.long)
        if rows.numel() and not bool(((rows >= -1) & (rows < self.n_styles)).all()):
            raise StyleComponentsError(f"style rows {rows.tolist()}: indices must be {NULL} (null) "
                                       f"or 0..{self.n_styles - 1}")
        self._rows = rows

    def set_progress(self, fraction: float) -> None:
        """Where sampling is (0 = first step, 1 = done); the style is on for start <= fraction < end.

        Going back (a new pass on a reused handle) recomputes the cached style terms: W_o may have
        been rewritten through `.data` in between (diffusers' fuse_lora, EMA's copy_to), which
        leaves no trace in its version counter."""
        self.progress = float(fraction)
        if self.progress <= 1.0:  # OFF (inf), a host's "no step here", is not a step
            if self.progress < self._last_step:
                self.version += 1
            self._last_step = self.progress

    def rows_for(self, batch: int, device: torch.device) -> torch.Tensor:
        key = (batch, device)
        if key not in self._rows_on:
            rows = self._rows if self._rows is not None else torch.arange(batch) % self.n_styles
            if rows.numel() != batch:
                raise StyleComponentsError(f"style rows name {rows.numel()} rows, the UNet was called with {batch}")
            self._rows_on[key] = rows.to(device)
        return self._rows_on[key]

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        unet = self._unet()
        if unet is not None and self in _active.get(unet, ()):
            _active[unet].remove(self)

    def __enter__(self) -> "StyleHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


class _StyleTerm:
    """The forward hook of one attn2 layer."""

    def __init__(self, layer: Attn2, values, weight: float, handle: StyleHandle):
        self.module, self.ip, self.handle, self.weight = layer.module, values, handle, weight
        self.heads, self.scale = layer.module.heads, getattr(layer.module, "scale", None)
        self._cache: dict = {}
        self._q: tuple | None = None  # (to_q module, x, to_q(x)) of the layer's own forward

    def keep_query(self, module, args, out) -> None:
        """Forward hook on to_q: the layer's own Q, so the style term need not compute it again."""
        if self.handle.active:
            self._q = (module, args[0] if args else None, out)

    @property
    def out_proj(self) -> nn.Module:
        """W_o as the layer has it now (a LoRA library may wrap it after the style was applied)."""
        return self.module.to_out[0]

    def __call__(self, module, args, kwargs, out):
        if not self.handle.active:
            return None
        self.handle.layer_calls += 1
        rows = self.handle.rows_for(out.shape[0], out.device)
        if self.handle.adapter.tokens == 1:
            return out + self._bias(out)[rows].unsqueeze(1)
        x = args[0] if args else kwargs.get("x", kwargs.get("hidden_states"))
        kept, self._q = self._q, None
        # Q as the layer computed it, unless the host made it another way (fused QKV) or to_q was
        # wrapped after apply (PEFT's LoRA: the hooked module is then the wrapper's base layer)
        same = kept is not None and kept[0] is self.module.to_q and kept[1] is x
        q = kept[2] if same else self.module.to_q(x)
        return out + self._attention(q, rows, out)

    def _cached(self, kind: str, key: tuple | None, compute):
        """compute() once per style table and `key` (None: on every call); every call while training.

        One slot per kind (bias, keys, values): a new key replaces only its own kind's value."""
        if self.handle.trainable and torch.is_grad_enabled():
            return compute()
        if key is None:
            with torch.no_grad():
                return compute()
        key = (self.handle.version, *key)
        if self._cache.get(kind, (None,))[0] != key:
            with torch.no_grad():
                self._cache[kind] = (key, compute())
        return self._cache[kind][1]

    def _project(self, v: torch.Tensor) -> torch.Tensor:
        """W_o v without the bias, through the out-projection module rather than its weight: its
        hooks then run (accelerate's offload loads W_o, a meta tensor until then; unmerged LoRA,
        A1111's lora_functional or PEFT's, adds its part). The bias is its output for 0."""
        out_proj = self.out_proj
        weight = getattr(out_proj, "weight", None)
        dtype = weight.dtype if isinstance(weight, torch.Tensor) else next(out_proj.parameters()).dtype
        if dtype.itemsize > 1:  # 8-bit weights (A1111's "FP8 weight") only run under the host's
            v = v.to(dtype)     # autocast, which casts v itself: rounding it to 8 bits would lose 4 %
        return out_proj(v) - out_proj(v.new_zeros(1, v.shape[-1]))

    def _bias(self, out: torch.Tensor) -> torch.Tensor:
        """[S, C] = weight * W_o W_v_ip t for each style, in the output's dtype and device.

        Cached per W_o version (hosts, A1111's LoRA, may rewrite W_o in place between calls);
        recomputed on every call where W_o's version says too little (`_projection_key`).
        """
        def compute():
            bias = lambda t: self._project(self.ip.values(t)[:, 0].to(out.device)).float()  # noqa: E731
            return (self.weight * self.handle.per_style(bias, self.handle.tokens)).to(out.dtype)
        return self._cached("bias", self._projection_key(out), compute)

    def _projection_key(self, out: torch.Tensor) -> tuple | None:
        """What a value projected through W_o depends on, or None (recompute on every call) when
        that cannot be told: an offloaded (meta) or inference-mode W_o, or a wrapped or hooked one (PEFT's unmerged
        LoRA) whose output changes when its adapters are switched or rescaled."""
        out_proj = self.out_proj
        if type(out_proj) is not nn.Linear or out_proj._forward_hooks or out_proj._forward_pre_hooks:
            return None
        w_o = out_proj.weight
        if w_o.is_meta or w_o.is_inference():  # inference tensors (made under inference_mode) have no version
            return None
        return out.dtype, out.device, id(out_proj), w_o._version, w_o.data_ptr()

    def _attention(self, q: torch.Tensor, rows: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Decoupled attention of the layer's queries over the style tokens, through W_o (no bias).

        W_o is folded into the values: W_o concat_h(P_h V_h) = sum_h P_h (V_h W_o,h), and V_h W_o,h
        ([heads, tokens, C] per style) is computed once per style table and W_o version, so each
        call costs the scores and a [tokens x C] product per head instead of a [C x C] matmul.
        """
        tokens, each = self.handle.tokens, self.handle.per_style
        keys = lambda: each(self.ip.keys, tokens).to(out.device)  # noqa: E731 (scored in fp32)
        values = lambda: each(lambda t: self._values_through_out(t, out.device), tokens).to(out.dtype)  # noqa: E731
        k = self._cached("keys", (out.dtype, out.device), keys)[rows]
        v = self._cached("values", self._projection_key(out), values)[rows]   # [B, heads, T, C]
        b, n, inner = q.shape
        q = q.reshape(b, n, self.heads, inner // self.heads).transpose(1, 2)   # [B, heads, N, d]
        k = k.reshape(b, -1, self.heads, inner // self.heads).transpose(1, 2)  # [B, heads, T, d]
        scale = self.scale if self.scale is not None else q.shape[-1] ** -0.5
        # scores in fp32 (T is small): fp16 scores overflow where the host upcasts its own (upcast_attn)
        probs = ((q.float() * scale) @ k.float().transpose(-1, -2)).softmax(-1).to(q.dtype)  # [B, heads, N, T]
        # one matmul over (head, token) pairs: [B, N, heads*T] @ [B, heads*T, C]
        return self.weight * (probs.transpose(1, 2).reshape(b, n, -1) @ v.flatten(1, 2)).to(out.dtype)

    def _values_through_out(self, style_tokens: torch.Tensor, device: torch.device) -> torch.Tensor:
        """[S, T, C_ctx] style tokens -> [S, heads, T, C] on `device` (the UNet's; the adapter may
        sit elsewhere): each head's V_ip rows, alone in that head's slot of the inner dimension,
        through W_o without its bias."""
        v = self.ip.values(style_tokens).to(device)                            # [S, T, inner]
        s, t, inner = v.shape
        d = inner // self.heads
        slots = v.new_zeros(s, self.heads, t, self.heads, d)
        for h in range(self.heads):
            slots[:, h, :, h] = v.reshape(s, t, self.heads, d)[:, :, h]
        return self._project(slots.reshape(s, self.heads, t, inner))


def _finite_number(value, what: str) -> float:
    """float(value), refusing text (a UI value left unconverted) and NaN/infinity with a clear message."""
    try:
        if isinstance(value, (str, bytes)):
            raise TypeError
        number = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be a number, not {type(value).__name__} {value!r}") from None
    if not math.isfinite(number):
        raise StyleComponentsError(f"{what} must be finite, not {number}")
    return number


def _described(layers: list[Attn2]) -> str:
    if len(layers) in ARCHS:
        return f"is {ARCHS[len(layers)].upper()} ({len(layers)})"
    return f"has {len(layers)} (another architecture; the SDXL refiner has 44)"


def _check_fits(adapter: Adapter, layers: list[Attn2]) -> None:
    if adapter.n_layers != len(layers):
        raise IncompatibleModelError(
            f"adapter {adapter.name!r} is for {adapter.arch.upper()} ({adapter.n_layers} cross-attention layers); "
            f"this UNet {_described(layers)}: choose a matching model")
    for layer in layers:
        to_v = layer.module.to_v.weight
        want = adapter.layer(layer.key).to_v_ip.weight.shape
        if tuple(to_v.shape) != tuple(want):
            raise IncompatibleModelError(
                f"adapter {adapter.name!r} layer {layer.key} has shape {list(want)}, the UNet's "
                f"{layer.name}.to_v has {list(to_v.shape)}: the adapter is for another base model")
