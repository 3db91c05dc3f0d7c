"""One-time, safe conversion of the original author's pickled releases to safetensors.

The original style space (a pickled `(sklearn PCA, std)` tuple) and style extractor (a whole
pickled timm module) can only be read by unpickling, and unpickling runs whatever callable
the file names. Here every global a pickle asks for is checked against an allow-list before
it is imported, and every opcode that calls something is checked too, so a malicious file is
refused (`UnsafePickleError`) before any of it runs. Outputs are checked before they are
written, and written atomically. The original adapters are safetensors already.
"""

from __future__ import annotations

import enum
import importlib
import io
import json
import math
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from . import files
from .errors import ModelFileError, StyleComponentsError, UnsafePickleError
from .space import StyleSpace

# --- the restricted unpickler -------------------------------------------------------------

# Exact "module.name" globals a release file may name. Each is data, or rebuilds data.
_ALLOWED = frozenset({
    "builtins.set",                              # plain containers and numbers
    "builtins.frozenset",
    "builtins.slice",
    "builtins.complex",
    "builtins.bytearray",
    "collections.OrderedDict",                   # nn.Module's parameter/buffer/module dicts
    "torch._utils._rebuild_tensor_v2",           # every tensor in a torch.save file
    "torch._utils._rebuild_parameter",           # nn.Parameter
    "numpy.ndarray",                             # numpy arrays (the PCA's fitted attributes)
    "numpy._core.multiarray._reconstruct",       # ndarray reconstruction, numpy >= 2 name
    "numpy.core.multiarray._reconstruct",        # ... numpy 1 name
    "numpy._core.multiarray.scalar",             # numpy scalars (e.g. PCA.noise_variance_)
    "numpy.core.multiarray.scalar",
    "numpy._core.numeric._frombuffer",           # arrays in pickle protocol 5
    "numpy.core.numeric._frombuffer",
})
# Packages whose nn.Module classes (and enums, e.g. timm's Format) a pickled model is made of: the
# globals of torch.save'd timm models are all in these (timm.models.layers in timm < 0.9), whereas
# elsewhere in timm are modules whose __init__ loads files (timm.task.distillation.DistillationTeacher).
_MODULE_PACKAGES = ("torch.nn.modules", "timm.layers", "timm.models")


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """Stands in for `_codecs.encode`: protocol 2 stores bytes as latin-1 text; no other codec is needed."""
    if encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError(f"refused _codecs.encode with codec {encoding!r}")
    return text.encode("latin1")


def _check_state(state) -> None:
    """State that BUILD (or torch, for a Parameter) sets on an object: attribute names and data only.

    A callable or dunder stored on an instance overrides its class's method (`__setstate__`,
    `extend`, `forward`...), which a later opcode or the converter would call.
    """
    for attrs in state if isinstance(state, tuple) and len(state) == 2 else (state,):  # (dict, slots)
        if attrs is None:
            continue
        if not isinstance(attrs, dict):
            raise UnsafePickleError(f"refused object state given as a {type(attrs).__name__}, not a dict")
        for key, value in attrs.items():
            if not isinstance(key, str) or key.startswith("__") or callable(value):
                raise UnsafePickleError(f"refused to set attribute {key!r} to a {type(value).__name__}")


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
    """torch's own, after checking the Python attributes it sets on the Parameter."""
    _check_state(state)
    return torch._utils._rebuild_parameter_with_state(data, requires_grad, backward_hooks, state)


class PickledPCA:
    """Stands in for sklearn's PCA when reading the original style space: it only holds the
    fitted arrays the file carries, so conversion needs no scikit-learn (A1111 has none) and
    runs none of its code."""


# What numpy arrays and scalars of the PCA hold. A dtype with fields, a subarray or objects would
# let the file's bytes be read as Python object pointers.
_PLAIN_KINDS = "biufc"


def _check_plain_dtype(dtype) -> None:
    canonical = np.dtype(dtype.str) if isinstance(dtype, np.dtype) and dtype.kind in _PLAIN_KINDS else None
    if canonical is None or dtype.fields is not None or dtype.subdtype is not None or dtype.hasobject \
            or (dtype.flags, dtype.itemsize) != (canonical.flags, canonical.itemsize):
        raise UnsafePickleError(f"refused numpy dtype {dtype!r}: only plain number types are read")


def _numpy_dtype(spec, align=False, copy=False) -> np.dtype:
    """Stands in for numpy.dtype: plain number types only, and always a new object (BUILD then
    sets its byte order; numpy's shared dtype singletons are never touched)."""
    if not isinstance(spec, str):
        raise UnsafePickleError(f"refused a numpy dtype made from a {type(spec).__name__}")
    try:
        dtype = np.dtype(spec)
    except TypeError:
        raise UnsafePickleError(f"refused numpy dtype {spec!r}") from None
    _check_plain_dtype(dtype)
    return np.dtype(spec, copy=True)


# torch.save names each storage by a class of this kind; it stands for a dtype (as in torch.load).
_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool, "UntypedStorage": torch.uint8,
}


class StorageType:
    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


_STORAGE_TYPES = {name: StorageType(dtype) for name, dtype in _STORAGE_DTYPES.items()}

_SUBSTITUTES = {
    "_codecs.encode": _latin1_encode,
    "numpy.dtype": _numpy_dtype,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter_with_state,  # a Parameter with attributes
    "sklearn.decomposition._pca.PCA": PickledPCA,   # the style space's PCA object (sklearn >= 0.22)
    "sklearn.decomposition.pca.PCA": PickledPCA,    # ... its older module path
}


def _import(module: str, name: str) -> Any:
    with warnings.catch_warnings():  # numpy.core is a deprecated alias of numpy._core
        warnings.simplefilter("ignore", DeprecationWarning)
        return getattr(importlib.import_module(module), name)


def _in_packages(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def resolve_global(module: str, name: str) -> Any:
    """The object a pickle's global `module.name` stands for, if the allow-list admits it."""
    module = "builtins" if module == "__builtin__" else module  # protocol 2 writes Python 2's name
    key = f"{module}.{name}"
    if key in _SUBSTITUTES:
        return _SUBSTITUTES[key]
    if module == "torch" and name in _STORAGE_TYPES:
        return _STORAGE_TYPES[name]
    if key in _ALLOWED:
        return _import(module, name)
    # Identifiers only: pickle would walk a dotted name such as "Linear.__init__.__globals__".
    identifiers = all(part.isidentifier() for part in (*module.split("."), name))
    if identifiers and not name.startswith("_"):
        if module == "torch" and isinstance(vars(torch).get(name), torch.dtype):
            return vars(torch)[name]  # dtypes held as module attributes
        if _in_packages(module, _MODULE_PACKAGES):
            obj = _import(module, name)
            # defined there, not only imported there: timm re-exports enum.Enum, whose call makes classes
            if isinstance(obj, type) and issubclass(obj, (torch.nn.Module, enum.Enum)) \
                    and _in_packages(obj.__module__, _MODULE_PACKAGES):
                return obj
    raise UnsafePickleError(f"refused to load {key}: it is not on the converter's allow-list "
                            f"(a genuine release never needs it, so the file may be malicious)")


def _refuse_opcode(name: str) -> Callable:
    def refuse(unpickler) -> None:
        raise UnsafePickleError(f"refused the {name} opcode: it calls a class or object with arguments from "
                                f"the file (torch.save and scikit-learn never write it)")
    return refuse


class RestrictedUnpickler(pickle._Unpickler):
    """An unpickler that builds only allow-listed globals, and calls only what rebuilding data needs.

    The pure-Python unpickler is used for its dispatch table, so that every opcode that calls
    something is checked (torch.save and scikit-learn pickles pass all of these checks):
    REDUCE, NEWOBJ(_EX), BUILD, APPEND(S), SETITEM(S) and ADDITEMS; INST and OBJ are refused.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, **kwargs) -> None:
        super().__init__(file, **kwargs)
        self._globals: set[int] = set()

    def find_class(self, module: str, name: str) -> Any:
        obj = resolve_global(module, name)
        self._globals.add(id(obj))
        return obj

    def load_build(self) -> None:
        target, state = self.stack[-2:]
        # a global, or an Enum member (a process-wide singleton): state set here outlives the file
        if id(target) in self._globals or isinstance(target, enum.Enum):
            raise UnsafePickleError(f"refused to set attributes of {getattr(target, '__qualname__', target)!r}")
        if not isinstance(target, (np.ndarray, np.dtype)):  # these two take a tuple of data
            _check_state(state)
        super().load_build()
        if isinstance(target, np.dtype):  # its state could have given it fields or objects
            _check_plain_dtype(target)

    def load_reduce(self) -> None:
        # Only allow-listed globals are called; modules are rebuilt by NEWOBJ + BUILD (torch.save
        # never calls a Module class or instance, whose __init__/forward would run file-given arguments).
        func, args = self.stack[-2:]
        if id(func) not in self._globals or (isinstance(func, type) and issubclass(func, torch.nn.Module)) \
                or (isinstance(func, enum.EnumMeta) and len(args) != 1):  # an Enum's value lookup, not its class factory
            raise UnsafePickleError(f"refused to call {getattr(func, '__qualname__', type(func).__name__)!r}")
        super().load_reduce()

    def _check_class(self, cls) -> None:
        # NEWOBJ(_EX) calls cls.__new__: an allow-listed class's, not one an instance carries.
        if not (isinstance(cls, type) and id(cls) in self._globals):
            raise UnsafePickleError(f"refused to create a {type(cls).__name__}: not an allow-listed class")

    def load_newobj(self) -> None:
        self._check_class(self.stack[-2])
        super().load_newobj()

    def load_newobj_ex(self) -> None:
        self._check_class(self.stack[-3])
        super().load_newobj_ex()

    def _check_container(self, target, kind: type) -> None:
        # These opcodes call the target's append/extend/__setitem__/add: only a plain container's
        # (a module's __setitem__, e.g. ParameterDict's, would set any attribute).
        if not isinstance(target, kind):
            raise UnsafePickleError(f"refused to add items to a {type(target).__name__}")

    def load_append(self) -> None:
        self._check_container(self.stack[-2], list)
        super().load_append()

    def load_appends(self) -> None:
        self._check_container(self.metastack[-1][-1], list)  # the object below the MARK
        super().load_appends()

    def load_setitem(self) -> None:
        self._check_container(self.stack[-3], dict)
        super().load_setitem()

    def load_setitems(self) -> None:
        self._check_container(self.metastack[-1][-1], dict)
        super().load_setitems()

    def load_additems(self) -> None:
        self._check_container(self.metastack[-1][-1], set)
        super().load_additems()

    dispatch[pickle.BUILD[0]] = load_build
    dispatch[pickle.REDUCE[0]] = load_reduce
    dispatch[pickle.INST[0]] = _refuse_opcode("INST")
    dispatch[pickle.OBJ[0]] = _refuse_opcode("OBJ")
    dispatch[pickle.NEWOBJ[0]] = load_newobj
    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex
    dispatch[pickle.APPEND[0]] = load_append
    dispatch[pickle.APPENDS[0]] = load_appends
    dispatch[pickle.SETITEM[0]] = load_setitem
    dispatch[pickle.SETITEMS[0]] = load_setitems
    dispatch[pickle.ADDITEMS[0]] = load_additems


def restricted_load(file, **kwargs) -> Any:
    return RestrictedUnpickler(file, **kwargs).load()


class _TorchZipUnpickler(RestrictedUnpickler):
    """data.pkl of a torch.save archive: storages are read from the archive's data/ records."""

    def __init__(self, reader, path: Path) -> None:
        super().__init__(io.BytesIO(reader.get_record("data.pkl")))
        self.reader, self.path, self.storages = reader, path, {}

    def persistent_load(self, saved_id) -> Any:
        if not (isinstance(saved_id, tuple) and len(saved_id) == 5 and saved_id[0] in ("storage", b"storage")):
            raise UnsafePickleError(f"refused persistent id {saved_id!r:.80}: torch.save writes only storages")
        _, storage_type, key, _location, numel = saved_id
        if not isinstance(storage_type, StorageType) or not isinstance(key, str) or type(numel) is not int \
                or numel < 0:
            raise ModelFileError(self.path, f"garbled storage record {saved_id!r:.80}")
        if key not in self.storages:  # the reader checks that the record holds this many bytes
            nbytes = numel * torch._utils._element_size(storage_type.dtype)
            data = self.reader.get_storage_from_record(f"data/{key}", nbytes, torch.UntypedStorage)
            self.storages[key] = torch.storage.TypedStorage(
                wrap_storage=data._typed_storage()._untyped_storage, dtype=storage_type.dtype, _internal=True)
        return self.storages[key]


def _torch_zip_load(path: Path) -> Any:
    """A torch.save archive, read with torch's own zip reader (the one torch.load uses, so both see
    the same records) and unpickled here. torch.load is never called: it hands an archive with
    TorchScript records to torch.jit.load, which runs code from the file."""
    reader = torch._C.PyTorchFileReader(str(path))
    if any(r.rsplit("/", 1)[-1] == "constants.pkl" for r in reader.get_all_records()):
        raise ModelFileError(path, "is a TorchScript archive, not a torch.save file")
    if not reader.has_record("data.pkl"):
        raise ModelFileError(path, "is a zip archive without data.pkl, not a torch.save file")
    if reader.has_record("byteorder") and reader.get_record("byteorder") != b"little":
        raise ModelFileError(path, "was saved on a big-endian machine, which is not read")
    return _TorchZipUnpickler(reader, path).load()


def load_pickle(path) -> Any:
    """Read a plain pickle or a torch.save file (zip format), building only allow-listed objects."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(path, "is not a file" if path.exists() else "file not found")
    try:
        if zipfile.is_zipfile(path):
            return _torch_zip_load(path)
        with open(path, "rb") as f:
            obj = restricted_load(f)
        if type(obj) is int and obj == torch.serialization.MAGIC_NUMBER:
            # torch.load's reader for it trusts the file (it writes files the pickle names and
            # extracts tar members); torch has saved zip archives since 1.6 (2020)
            raise ModelFileError(path, "is a torch.save file in the legacy format (torch < 1.6), which is not "
                                       "read: only zip-format torch.save files and plain pickles are")
        return obj
    except UnsafePickleError as e:
        raise UnsafePickleError(f"{path}: {e}") from None
    except StyleComponentsError:
        raise
    except ImportError as e:
        raise ModelFileError(path, f"needs {e.name or e}, which is not installed") from None
    except Exception as e:  # whatever a truncated or foreign file makes the unpickler raise
        raise ModelFileError(path, f"not a readable pickle or torch.save file ({type(e).__name__}: {e})") from None


# --- style space --------------------------------------------------------------------------

def convert_space(src, dst, name: str | None = None, extractor: str = "") -> StyleSpace:
    """Convert the original PCA file, a pickled `(sklearn PCA, std)`, to a style-space file.

    The first K = n_components_ components are kept, with their standard deviations, so
    that `to_components(e) == pca.transform(e) / std[:K]`, whitened or not. Everything is
    checked before the file is written.
    """
    obj = load_pickle(src)
    if not (isinstance(obj, (tuple, list)) and len(obj) == 2 and hasattr(obj[0], "components_")):
        raise ModelFileError(src, f"expected a pickled (PCA, std) pair, found {type(obj).__name__}")
    pca, std = obj
    components = _float_array(src, pca.components_, "the PCA's components_")
    k = getattr(pca, "n_components_", None)
    if k is None:
        k = components.shape[0] if components.ndim else 0
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ModelFileError(src, f"the PCA's n_components_ is {k!r:.40}, not a positive whole number")
    k = int(k)
    mean = _float_array(src, getattr(pca, "mean_", None), "the PCA's mean_")
    std = _float_array(src, std, "std").reshape(-1)
    if components.ndim != 2 or k > components.shape[0] or mean.shape != (components.shape[1],):
        raise ModelFileError(src, f"PCA with components {list(components.shape)} and mean {list(mean.shape)} "
                                  f"cannot give {k} components")
    components, std = components[:k], std[:k]
    if std.shape[0] < k:
        raise ModelFileError(src, f"needs {k} positive standard deviations, found {std.shape[0]}")
    if getattr(pca, "whiten", False):
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
                       extractor=extractor, name=name or Path(dst).stem)
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
    if value is None:
        raise ModelFileError(src, f"{what} is missing")
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ModelFileError(src, f"{what} is a {type(value).__name__}, not an array of numbers") from None


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
    from .extract import FORMAT, IMAGENET_MEAN, IMAGENET_STD, PREPROCESS

    if preprocess not in PREPROCESS:
        raise StyleComponentsError(f"unknown preprocessing {preprocess!r}; known: {', '.join(sorted(PREPROCESS))}")
    model = load_pickle(src)
    if not isinstance(model, torch.nn.Module):
        raise ModelFileError(src, f"holds a {type(model).__name__}, not a whole model saved with torch.save(model)")
    _refuse_stored_code(src, model)
    model.float().eval()  # the file holds float32 weights; compare in the same precision
    cfg = _pretrained_cfg(model)
    architecture = architecture or cfg.get("architecture")
    if not architecture:
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
    state = model.state_dict()
    for key, tensor in state.items():
        files.check_finite(src, key, tensor)
    rebuilt = _rebuild(src, architecture, kwargs, state)
    if preprocess == "v0.3" and getattr(rebuilt, "dynamic_img_size", True) is False:
        raise ModelFileError(src, "v0.3 preprocessing needs variable input sizes: add "
                                  "\"dynamic_img_size\": true to the model arguments")
    dim = _check_outputs(src, model, rebuilt, _dummy_input(model, cfg), architecture, kwargs)
    metadata = {"format": FORMAT, "architecture": architecture, "model_kwargs": kwargs,
                "preprocess": preprocess, "dim": dim,
                "mean": [float(v) for v in cfg.get("mean", IMAGENET_MEAN)],
                "std": [float(v) for v in cfg.get("std", IMAGENET_STD)],
                "name": name or Path(dst).stem}
    files.write(dst, state, metadata)
    return metadata


def _refuse_stored_code(src, model: torch.nn.Module) -> None:
    """Refuse code that the file stored in a module: hooks run when it is called or its state_dict
    is read (both below), and forward calls whatever stands in `_modules`. torch.save keeps hooks,
    but a genuine release has none, and only tensors and modules in these dicts."""
    contents = {"_parameters": torch.Tensor, "_buffers": torch.Tensor, "_modules": torch.nn.Module}
    todo, seen = [("", model)], set()
    while todo:
        path, module = todo.pop()
        if id(module) in seen:  # a file can make the module graph a cycle
            continue
        seen.add(id(module))
        where, attrs = f"{src}: " + (f"module {path!r}" if path else "the model"), vars(module)
        for name, value in attrs.items():
            if "hook" in name and value and not isinstance(value, bool):  # _is_full_backward_hook is a flag
                raise UnsafePickleError(f"{where} carries {name}, code that conversion would run")
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


def _pair(size) -> int | list[int]:
    size = [int(s) for s in (size if isinstance(size, (tuple, list)) else (size, size))]
    return size[0] if size[0] == size[1] else size


def _mlp_ratio(hidden: int, dim: int) -> float:
    # timm builds int(dim * mlp_ratio) hidden units: nudge the ratio up until the product lands on `hidden`.
    ratio = hidden / dim
    while int(dim * ratio) < hidden:
        ratio = math.nextafter(ratio, math.inf)
    return ratio


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
        "img_size": _pair(embed.img_size), "patch_size": _pair(embed.patch_size),
        "in_chans": embed.proj.in_channels, "embed_dim": model.embed_dim, "depth": len(blocks),
        "num_heads": block.attn.num_heads, "mlp_ratio": _mlp_ratio(block.mlp.fc1.out_features, model.embed_dim),
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
    return kwargs


def _rebuild(src, architecture: str, kwargs: dict, state: Mapping[str, torch.Tensor]) -> torch.nn.Module:
    from .extract import _build_model  # the extractor loader's own checks and timm call

    model = _build_model(src, architecture, kwargs)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        problem = " ".join(str(e).split())[:300]
        raise ModelFileError(src, f"its weights do not fit {architecture!r} built with {json.dumps(kwargs)} "
                                  f"({problem}); give the right model arguments (--model-kwargs)") from None
    return model.eval()


def _dummy_input(model: torch.nn.Module, cfg: dict) -> torch.Tensor:
    """One random image at the size the model was built for, or a smaller one where it takes any size.

    A ViT-B at 518 px takes seconds to minutes on a CPU; 8x8 patches still use every weight.
    """
    channels, *size = cfg.get("input_size", (3, 224, 224))
    embed = getattr(model, "patch_embed", None)
    if embed is not None and hasattr(embed, "img_size"):
        size = embed.img_size  # a ViT built with img_size=... keeps its registry cfg's input_size
        if getattr(model, "dynamic_img_size", False):
            size = [min(s, 8 * p) for s, p in zip(size, embed.patch_size)]
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
