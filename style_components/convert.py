"""One-time, safe conversion of the original author's pickled releases to safetensors.

The original style space (a pickled `(sklearn PCA, std)` tuple) and style extractor (a whole
pickled timm module) can only be read by unpickling, and unpickling runs whatever callable
the file names: they are read with `unpickle.load_pickle`, which builds data and refuses
everything else (`UnsafePickleError`) before any of it runs. What it returns is then checked
by type before it is used. Outputs are checked before they are written, and written
atomically. The original adapters are safetensors already.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from . import files
from .errors import ModelFileError, StyleComponentsError, UnsafePickleError
from .models import name_of
from .space import StyleSpace
from .unpickle import MODEL, SPACE, PickledPCA, describe, is_atom, load_pickle, resolve_global  # noqa: F401

# --- style space --------------------------------------------------------------------------

def convert_space(src, dst, name: str | None = None, extractor: str = "") -> StyleSpace:
    """Convert the original PCA file, a pickled `(sklearn PCA, std)`, to a style-space file.

    The first K = n_components_ components are kept, with their standard deviations, so
    that `to_components(e) == pca.transform(e) / std[:K]`, whitened or not. Everything is
    checked before the file is written.
    """
    obj = load_pickle(src, SPACE)
    if not (type(obj) in (tuple, list) and len(obj) == 2 and type(obj[0]) is PickledPCA):
        raise ModelFileError(src, f"expected a pickled (PCA, std) pair, found {type(obj).__name__}")
    pca, std = obj
    components = _float_array(src, getattr(pca, "components_", None), "the PCA's components_")
    k = getattr(pca, "n_components_", None)
    if k is None:
        k = components.shape[0] if components.ndim else 0
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ModelFileError(src, f"the PCA's n_components_ is {describe(k)}, not a positive whole number")
    k = int(k)
    mean = _float_array(src, getattr(pca, "mean_", None), "the PCA's mean_")
    std = _float_array(src, std, "std").reshape(-1)
    if components.ndim != 2 or k > components.shape[0] or mean.shape != (components.shape[1],):
        raise ModelFileError(src, f"PCA with components {list(components.shape)} and mean {list(mean.shape)} "
                                  f"cannot give {k} components")
    components, std = components[:k], std[:k]
    if std.shape[0] < k:
        raise ModelFileError(src, f"needs {k} positive standard deviations, found {std.shape[0]}")
    whiten = getattr(pca, "whiten", False)
    if type(whiten) is not bool:
        raise ModelFileError(src, f"the PCA's whiten is a {type(whiten).__name__}, not True or False")
    if whiten:
        std = std * _whitening_scale(src, pca, k)
    # checked as stored (float32), before anything is written: a value finite in float64 can
    # overflow there, and a failed conversion must not replace a good file
    arrays = {"the PCA's components_": components, "the PCA's mean_": mean, "std": std}
    with np.errstate(over="ignore", under="ignore"):
        arrays = {what: a.astype(np.float32) for what, a in arrays.items()}
    for what, array in arrays.items():
        if not np.all(np.isfinite(array)):
            raise ModelFileError(src, f"{what} holds NaN or infinite values (in float32)")
    components, mean, std = arrays.values()
    if not np.all(std >= np.finfo(np.float32).tiny):
        raise ModelFileError(src, f"needs {k} positive standard deviations (the smallest of the first {k}: "
                                  f"{std.min():.3g})")
    space = StyleSpace(torch.from_numpy(mean), torch.from_numpy(components), torch.from_numpy(std),
                       extractor=extractor, name=name or name_of(dst, "space"))
    space.save(dst)
    return StyleSpace.load(dst)


def _whitening_scale(src, pca, k: int) -> np.ndarray:
    """A whitened PCA's transform also divides by sqrt(explained_variance_): folded into std, the space
    gives pca.transform(e) / std, and maps back as pca.inverse_transform(z * std) does."""
    variance = _float_array(src, getattr(pca, "explained_variance_", None), "explained_variance_").reshape(-1)
    scale = np.sqrt(np.maximum(variance[:k], 0))
    # sklearn raises a scale below its dtype's eps to that eps: above float32's, the folding is exact
    if variance.shape[0] < k or not np.all(scale > np.finfo(np.float32).eps):
        raise ModelFileError(src, f"is a whitened PCA without {k} positive explained_variance_ values, "
                                  f"so its whitening cannot be undone")
    return scale


def _float_array(src, value, what: str) -> np.ndarray:
    """A numpy array of real numbers, or a flat list of numbers, as float64. Checked by type first:
    np.asarray would follow any object's __array_interface__ to whatever memory it names."""
    if value is None:
        raise ModelFileError(src, f"{what} is missing")
    numbers = (int, float, np.integer, np.floating)
    if type(value) in (list, tuple) and all(isinstance(v, numbers) and not isinstance(v, bool) for v in value):
        return np.array(value, dtype=np.float64)
    if type(value) is np.ndarray and value.dtype.kind in "iuf" and value.dtype.fields is None:
        return value.astype(np.float64)
    raise ModelFileError(src, f"{what} is a {type(value).__name__}, not an array of numbers")


# --- style extractor ----------------------------------------------------------------------

def convert_extractor(src, dst, preprocess: str = "v0.3", architecture: str | None = None,
                      model_kwargs: Mapping[str, Any] | None = None, name: str | None = None) -> dict[str, Any]:
    """Convert the original extractor, a whole pickled timm module, to an extractor file.

    The file holds the module's state_dict and how to rebuild it with
    `timm.create_model(architecture, pretrained=False, **model_kwargs)`. `model_kwargs`
    is derived from a VisionTransformer; other models need it given. The rebuilt model
    must load the weights strictly and reproduce the module's output before anything is
    written. Returns the metadata written.
    """
    from .extract import PREPROCESS

    if preprocess not in PREPROCESS:
        raise StyleComponentsError(f"unknown preprocessing {preprocess!r}; known: {', '.join(sorted(PREPROCESS))}")
    model = load_pickle(src, MODEL)
    if not isinstance(model, torch.nn.Module):
        raise ModelFileError(src, f"holds a {type(model).__name__}, not a whole model saved with torch.save(model)")
    try:
        _refuse_stored_code(src, model)
        metadata, state = _rebuilt_metadata(src, model, preprocess, architecture, model_kwargs)
        metadata["name"] = name or name_of(dst, "extractor")
        files.write(dst, state, metadata)
    except (StyleComponentsError, OSError):  # OSError: writing the output (a full disk)
        raise
    except Exception as e:  # torch and timm on a module whose attributes came from the file
        raise ModelFileError(src, f"cannot be converted ({type(e).__name__}: {describe(str(e)[:200])})") from None
    return metadata


def _rebuilt_metadata(src, model: torch.nn.Module, preprocess: str, architecture: str | None,
                      model_kwargs: Mapping[str, Any] | None) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The extractor metadata and state dict of the module read from `src`, once a model built by
    timm from them has the same modules, attributes and output."""
    from .extract import FORMAT, IMAGENET_MEAN, IMAGENET_STD

    cfg = _pretrained_cfg(model)
    architecture = architecture or cfg.get("architecture")
    if not architecture or type(architecture) is not str:
        raise ModelFileError(src, "does not say which timm architecture it is: give its name "
                                  "(--architecture, e.g. vit_base_patch14_dinov2)")
    if model_kwargs is None:
        kwargs = _vit_kwargs(src, model)
        if preprocess == "v0.3" and not kwargs["dynamic_img_size"]:
            # v0.3 feeds each image at its own size; at the saved size the output is unchanged (checked below).
            warnings.warn(f"{src}: enabling dynamic_img_size, which v0.3 preprocessing needs")
            kwargs["dynamic_img_size"] = True
    else:
        kwargs = dict(model_kwargs)
    state = _float_state(src, model)
    rebuilt = _rebuild(src, architecture, kwargs, state)
    if preprocess == "v0.3" and getattr(rebuilt, "dynamic_img_size", True) is False:
        raise ModelFileError(src, "v0.3 preprocessing needs variable input sizes: add "
                                  "\"dynamic_img_size\": true to the model arguments")
    _check_same_modules(src, model, rebuilt)
    model.float().eval()  # only now: a module's own _apply/train code runs here (timm's rotary embeddings)
    dim = _check_outputs(src, model, rebuilt, _dummy_input(src, rebuilt), architecture, kwargs)
    metadata = {"format": FORMAT, "architecture": architecture, "model_kwargs": kwargs,
                "preprocess": preprocess, "dim": dim,
                "mean": _channels(src, cfg, "mean", IMAGENET_MEAN), "std": _channels(src, cfg, "std", IMAGENET_STD)}
    return metadata, state


def _channels(src, cfg: dict, key: str, default) -> list[float]:
    values = cfg.get(key, default)
    if type(values) not in (list, tuple) or len(values) != 3 or not all(
            type(v) in (int, float) and math.isfinite(v) and (key == "mean" or v > 0) for v in values):
        raise ModelFileError(src, f"its pretrained_cfg {key!r} is {describe(values)}, not 3 (positive) numbers")
    return [float(v) for v in values]


def _float_state(src, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights as float32 copies, each checked; tensors sharing memory are refused (safetensors
    cannot store them, and a thousand views of one record would become a thousand copies)."""
    state, seen = {}, set()
    for key, tensor in model.state_dict().items():
        storage = tensor.untyped_storage().data_ptr()  # per storage: views at other offsets share it too
        if tensor.numel() and storage in seen:
            raise ModelFileError(src, "shares its memory with another weight", key)
        seen.add(storage)
        files.check_finite(src, key, tensor)
        state[key] = tensor.float() if tensor.is_floating_point() else tensor
    return state


def _refuse_stored_code(src, model: torch.nn.Module) -> None:
    """Refuse code that the file stored in a module: hooks run when it is called or its state_dict
    is read (both below), and forward calls whatever stands in `_modules`. torch.save keeps hooks,
    but a genuine release has none, and only tensors and modules in these dicts."""
    contents = {"_parameters": torch.Tensor, "_buffers": torch.Tensor, "_modules": torch.nn.Module}
    todo, seen = [("", model)], set()
    while todo:
        path, module = todo.pop()
        where, attrs = f"{src}: " + (f"module {path!r}" if path else "the model"), vars(module)
        if id(module) in seen:  # a cycle, or one block listed N times: N real blocks once rebuilt
            raise UnsafePickleError(f"{where} is a module met twice in the model")
        seen.add(id(module))
        for name, value in attrs.items():
            if "hook" in name and not (type(value) in (bool, type(None)) or isinstance(value, dict) and not value):
                raise UnsafePickleError(f"{where} carries {name}, code that conversion would run")
            if name not in contents and "hook" not in name and not _plain(value):  # e.g. a tensor outside
                raise UnsafePickleError(f"{where}: attribute {name} is a {type(value).__name__}")  # the state
        for group, kind in contents.items():
            values = attrs.get(group, {})
            if not isinstance(values, dict) or not all(v is None or isinstance(v, kind) for v in values.values()):
                raise UnsafePickleError(f"{where} has something other than {kind.__name__}s in {group}")
        prefix = f"{path}." if path else ""
        todo += [(prefix + name, child) for name, child in attrs.get("_modules", {}).items() if child is not None]


def _pretrained_cfg(model: torch.nn.Module) -> dict:
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None)
    return cfg if isinstance(cfg, dict) else {}


def _is_on(module: torch.nn.Module | None) -> bool:
    """Whether an optional submodule is present (timm puts nn.Identity, or None, where it is off)."""
    return module is not None and not isinstance(module, torch.nn.Identity)


def _size(src, value, what: str) -> int:
    """A layer size read from the file's attributes: a whole number a model could have."""
    if type(value) is not int or not 0 < value < 2 ** 24:
        raise _unsupported(src, f"its {what} is {describe(value)}")
    return value


def _pair(src, size, what: str) -> int | list[int]:
    size = [_size(src, s, what) for s in (size if type(size) in (tuple, list) and len(size) == 2 else (size, size))]
    return size[0] if size[0] == size[1] else size


def _mlp_ratio(src, hidden: int, dim: int) -> float:
    # timm builds int(dim * mlp_ratio) hidden units: nudge the ratio up until the product lands on `hidden`.
    hidden, dim = _size(src, hidden, "MLP width"), _size(src, dim, "embedding width")
    ratio = hidden / dim
    for _ in range(64):
        if int(dim * ratio) >= hidden:
            return ratio
        ratio = math.nextafter(ratio, math.inf)
    raise _unsupported(src, f"its MLP width {hidden} is not a multiple of {dim} that timm can build")


_ACTIVATIONS = {"GELU": "gelu", "GELUTanh": "gelu_tanh", "QuickGELU": "quick_gelu", "SiLU": "silu"}


def _unsupported(src, what: str) -> ModelFileError:
    return ModelFileError(src, f"{what}: the timm arguments cannot be derived from it, give them as JSON "
                               f"(--model-kwargs, with --architecture)")


def _activation(src, act: torch.nn.Module) -> str:
    name = type(act).__name__
    if name == "GELU" and getattr(act, "approximate", "none") == "tanh":
        return "gelu_tanh"
    if name not in _ACTIVATIONS:
        raise _unsupported(src, f"MLP activation {name}")
    return _ACTIVATIONS[name]


def _vit_kwargs(src, model: torch.nn.Module) -> dict[str, Any]:
    """timm.create_model arguments that rebuild this VisionTransformer.

    Attributes are read with getattr defaults where older timm versions lacked them.
    """
    from timm.layers import Attention, Mlp
    from timm.models.vision_transformer import Block, VisionTransformer

    if type(model) is not VisionTransformer:
        raise _unsupported(src, f"the model is a {type(model).__name__}, not a timm VisionTransformer")
    blocks = list(model.blocks)
    if not blocks or any(type(b) is not Block or type(b.attn) is not Attention or type(b.mlp) is not Mlp
                         for b in blocks):
        raise _unsupported(src, "its transformer blocks are not timm's standard Block/Attention/Mlp")
    norms = [m for m in model.modules() if "Norm" in type(m).__name__]
    if not all(isinstance(m, torch.nn.LayerNorm) and m.eps == 1e-6 for m in norms):
        raise _unsupported(src, "it has normalisation layers other than LayerNorm(eps=1e-6)")
    block, embed = blocks[0], model.patch_embed
    kwargs = {
        "img_size": _pair(src, embed.img_size, "image size"), "patch_size": _pair(src, embed.patch_size, "patch size"),
        "in_chans": embed.proj.in_channels, "embed_dim": model.embed_dim, "depth": len(blocks),
        "num_heads": block.attn.num_heads, "mlp_ratio": _mlp_ratio(src, block.mlp.fc1.out_features, model.embed_dim),
        "qkv_bias": block.attn.qkv.bias is not None,
        # layer scale is on for any init value; the scales themselves come from the state dict
        "init_values": 1e-5 if _is_on(getattr(block, "ls1", None)) else None,
        "class_token": model.cls_token is not None, "reg_tokens": getattr(model, "num_reg_tokens", 0),
        "no_embed_class": getattr(model, "no_embed_class", False),
        "pre_norm": _is_on(getattr(model, "norm_pre", None)), "fc_norm": _is_on(model.fc_norm),
        "global_pool": model.global_pool, "num_classes": model.num_classes,
        "dynamic_img_size": getattr(model, "dynamic_img_size", False),
        "act_layer": _activation(src, block.mlp.act), "norm_layer": "layernorm",
    }
    # Newer options, written only when on, so that older timm versions can still build the model.
    optional = {
        "qk_norm": _is_on(getattr(block.attn, "q_norm", None)),
        "scale_attn_norm": _is_on(getattr(block.attn, "norm", None)),
        "scale_mlp_norm": _is_on(getattr(block.mlp, "norm", None)),
        "proj_bias": block.attn.proj.bias is not None,
        "final_norm": _is_on(model.norm) or _is_on(model.fc_norm),
        "pos_embed": "learn" if model.pos_embed is not None else "none",
        "pool_include_prefix": getattr(model, "pool_include_prefix", False),
        "dynamic_img_pad": getattr(embed, "dynamic_img_pad", False),
    }
    defaults = {"qk_norm": False, "scale_attn_norm": False, "scale_mlp_norm": False, "proj_bias": True,
                "final_norm": True, "pos_embed": "learn", "pool_include_prefix": False, "dynamic_img_pad": False}
    kwargs.update({k: v for k, v in optional.items() if v != defaults[k]})
    for key, value in kwargs.items():  # read from the file's attributes: they go into metadata and messages
        if not (type(value) in (float, bool, type(None)) or type(value) is int and abs(value) < 2 ** 31
                or type(value) is str and len(value) <= 64
                or type(value) is list and len(value) == 2 and all(type(v) is int and 0 < v < 2 ** 24 for v in value)):
            raise _unsupported(src, f"its {key} is {describe(value)}")
    return kwargs


def _rebuild(src, architecture: str, kwargs: dict, state: Mapping[str, torch.Tensor]) -> torch.nn.Module:
    from .extract import _build_model, _check_state_dict  # the extractor loader's own checks and timm call

    with torch.device("meta"):  # shapes first: the arguments came from the file's attributes
        skeleton = _build_model(src, architecture, kwargs)
    try:
        _check_state_dict(src, skeleton, state)
    except ModelFileError as e:
        raise ModelFileError(src, f"its weights do not fit {architecture!r} built with {json.dumps(kwargs)} "
                                  f"({e.key}: {e.problem}); give the right model arguments (--model-kwargs)") from None
    model = _build_model(src, architecture, kwargs)
    model.load_state_dict(state, strict=True)
    return model.eval()


_METADATA_ATTRS = {"pretrained_cfg", "default_cfg", "pretrained_cfg_overlay", "_model_args", "training",
                   # v0.3 turns dynamic_img_size on (same output at the saved size): flags only
                   "dynamic_img_size", "strict_img_size", "flatten", "output_fmt"}


def _check_same_modules(src, original: torch.nn.Module, rebuilt: torch.nn.Module) -> None:
    """The saved module is run below to compare outputs; it runs the same code as the rebuilt one
    only if it has the same modules and the same plain attributes. A file could otherwise put any
    allowed module where a Dropout stands, or give a Conv2d a padding of millions."""
    # by class name: an equivalent class of another package stands in places (torch's GELU, timm's GELU)
    theirs, ours = list(original.named_modules()), list(rebuilt.named_modules())
    kinds = lambda modules: [(n, type(m).__name__) for n, m in modules]  # noqa: E731
    if kinds(theirs) != kinds(ours):
        first = next(((a, x) for (a, x), (b, y) in zip(kinds(theirs), kinds(ours)) if (a, x) != (b, y)),
                     ("", f"{len(theirs)} modules, not {len(ours)}"))
        raise ModelFileError(src, f"its modules are not those of the rebuilt model (at {first[0]!r}: {first[1]})")
    for (path, m), (_, r) in zip(theirs, ours):
        mine = vars(r)
        for attr, value in vars(m).items():
            if attr in ("_parameters", "_buffers", "_modules") or attr in _METADATA_ATTRS or "hook" in attr:
                continue  # hooks: refused by _refuse_stored_code
            if not _plain(value) or (attr in mine and type(value) is not dict and _plain(mine[attr])  # dicts: metadata
                                     and value != mine[attr]):
                raise ModelFileError(src, f"the rebuilt model differs (module {path or 'the model'!r}: {attr} is "
                                          f"{describe(value)}, rebuilt {describe(mine.get(attr))}); give the right "
                                          f"model arguments (--model-kwargs)")


def _plain(value, depth: int = 0) -> bool:
    if is_atom(value):
        return True
    if depth < 2 and type(value) in (tuple, list, set, frozenset):
        return all(_plain(v, depth + 1) for v in value)
    return depth < 2 and type(value) is dict and all(_plain(k, 2) and _plain(v, depth + 1) for k, v in value.items())


MAX_CHECK_PATCHES = 64 * 64  # DINOv2 at 518 px has 37 x 37


def _dummy_input(src, model: torch.nn.Module) -> torch.Tensor:
    """One random image at the size the (rebuilt) model was built for, or a smaller one where it
    takes any size. A ViT-B at 518 px takes seconds to minutes on a CPU; 8x8 patches still use every weight."""
    channels, *size = model.pretrained_cfg.get("input_size", (3, 224, 224))
    embed = getattr(model, "patch_embed", None)
    if embed is not None and hasattr(embed, "img_size"):
        channels = embed.proj.in_channels
        size = embed.img_size  # a ViT built with img_size=... keeps its registry cfg's input_size
        if getattr(model, "dynamic_img_size", False):
            size = [min(s, 8 * p) for s, p in zip(size, embed.patch_size)]
        if math.prod(s // p for s, p in zip(size, embed.patch_size)) > MAX_CHECK_PATCHES:
            # attention costs the square of it; without a position embedding no weight bounds the size
            raise ModelFileError(src, f"its image size {list(size)} is too large to check (more than "
                                      f"{MAX_CHECK_PATCHES} patches)")
    return torch.randn(1, int(channels), *(int(s) for s in size), generator=torch.Generator().manual_seed(0))


def _check_outputs(src, original: torch.nn.Module, rebuilt: torch.nn.Module, x: torch.Tensor,
                   architecture: str, kwargs: dict) -> int:
    """Compare the rebuilt model with the original on `x`; return the embedding size."""
    with torch.no_grad():
        got = rebuilt(x)
        try:
            want = original(x)
        except Exception as e:  # a module pickled by an older timm may lack attributes today's forward reads
            warnings.warn(f"{src}: the saved module does not run with this timm ({type(e).__name__}: {e}); "
                          f"its outputs were not compared with the rebuilt model's")
            want = None
    if got.ndim != 2:
        raise ModelFileError(src, f"the model outputs shape {list(got.shape)}, not one embedding per image")
    if want is not None and (want.shape != got.shape or not torch.allclose(want, got, rtol=1e-4, atol=1e-5)):
        raise ModelFileError(src, f"{architecture!r} built with {json.dumps(kwargs)} does not reproduce the "
                                  f"saved module's output; give the right model arguments (--model-kwargs)")
    return int(got.shape[1])
