"""Restricted unpickling of the original author's releases: data is built, no code from the file runs.

Unpickling calls whatever the file names, with arguments from the file. Here:
- every global is checked against an allow-list for the kind of file (`SPACE`: a pickled
  `(sklearn PCA, std)`, numpy data only; `MODEL`: a torch.save'd timm module) before it is imported;
- every opcode that calls something (REDUCE, NEWOBJ, BUILD, SETITEM...) is checked, and INST/OBJ
  are refused;
- numpy and torch's rebuilding functions are reached through stand-ins that check their arguments
  first: numpy's own readers trust the bytes they are given (a dtype with an object field reads
  file bytes as pointers), and torch's trust the objects;
- everything that gets hashed (dict keys, set items) is a plain value: the hash of a deeply nested
  tuple recurses in C without a limit;
- a torch.save archive is listed and read with torch's own zip reader, never with torch.load,
  which would hand an archive holding TorchScript to torch.jit.load.
A refusal is an `UnsafePickleError`; anything else wrong with the file a `ModelFileError`.
"""

from __future__ import annotations

import collections
import enum
import importlib
import io
import math
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .errors import ModelFileError, StyleComponentsError, UnsafePickleError

SPACE, MODEL = "space", "model"

# Packages whose nn.Module classes (and enums, e.g. timm's Format) a pickled model is made of: the
# globals of torch.save'd timm models are all in these (timm.models.layers in timm < 0.9), whereas
# elsewhere in timm are modules whose __init__ loads files (timm.task.distillation.DistillationTeacher).
_MODULE_PACKAGES = ("torch.nn.modules", "timm.layers", "timm.models")
_NUMPY_CORE = ("numpy._core", "numpy.core")  # numpy >= 2, numpy 1
_PLAIN_KINDS = "biufc"  # bool, integers, floats, complex: what the PCA's arrays and scalars hold
ATOMS = (str, bytes, int, float, complex, bool, type(None), torch.dtype)  # plain values (and Enum members)

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


class PickledPCA:
    """Stands in for sklearn's PCA when reading the original style space: it only holds the
    fitted arrays the file carries, so conversion needs no scikit-learn (A1111 has none) and
    runs none of its code."""


# --- checks on values ---------------------------------------------------------------------

def _refuse(what: str) -> UnsafePickleError:
    return UnsafePickleError(f"refused {what}")


def describe(value) -> str:
    """A file's value for a message: never its repr, which a small file can make terabytes long."""
    if type(value) is int and value.bit_length() < 64 or type(value) in (float, bool, type(None)):
        return repr(value)
    if type(value) in (str, bytes):
        return repr(value[:40]) + ("..." if len(value) > 40 else "")
    return f"a {type(value).__name__}"


def is_atom(value) -> bool:
    return type(value) in ATOMS or isinstance(value, enum.Enum)


def check_key(key) -> None:
    """A dict key or set item: a plain value or a flat tuple of them, so that hashing it is safe."""
    for k in key if type(key) is tuple else (key,):
        if not is_atom(k):
            raise _refuse(f"a {type(k).__name__} as a dict key or set item")


def check_state(state) -> None:
    """State that BUILD (or torch, for a Parameter) sets on an object: attribute names and data only.

    A callable or dunder stored on an instance overrides its class's method (`__setstate__`,
    `extend`, `forward`...), which a later opcode or the converter would call.
    """
    for attrs in state if isinstance(state, tuple) and len(state) == 2 else (state,):  # (dict, slots)
        if attrs is None:
            continue
        if not isinstance(attrs, dict):
            raise _refuse(f"object state given as a {type(attrs).__name__}, not a dict")
        for key, value in attrs.items():
            if not isinstance(key, str) or key.startswith("__") or callable(value):
                raise _refuse(f"to set attribute {describe(key)} to a {type(value).__name__}")


def check_plain_dtype(dtype) -> None:
    canonical = np.dtype(dtype.str) if isinstance(dtype, np.dtype) and dtype.kind in _PLAIN_KINDS else None
    if canonical is None or dtype.fields is not None or dtype.subdtype is not None or dtype.hasobject \
            or (dtype.flags, dtype.itemsize) != (canonical.flags, canonical.itemsize):
        raise _refuse(f"numpy dtype {getattr(dtype, 'str', type(dtype).__name__)!r}: only plain number types are read")


# What a release can hold, far above it: a torch.save'd 24-block ViT-L is 63 k opcodes and 540 modules.
# Every opcode makes at most a small object (~100 bytes), a module's BUILD a dozen dicts (~6 kB):
# these bound what a small file can make the converter allocate to a few hundred MB.
MAX_OPCODES = 2_000_000
MAX_MODULES = 20_000
_MAX_INDEX = 2 ** 48  # far above any real size, and products of a few stay cheap (huge ints multiply slowly)


def _ints(value, what: str, ndim: bool = False) -> None:
    """An int, or (ndim) a tuple of at most 32 ints, each in [0, 2**48): what torch.save and numpy
    write for offsets, sizes, strides and shapes."""
    values = value if ndim and type(value) is tuple and len(value) <= 32 else None if ndim else (value,)
    if values is None or not all(type(v) is int and 0 <= v < _MAX_INDEX for v in values):
        raise _refuse(f"{what} {describe(value)}: not whole numbers from 0 to 2**48")


def _no_hooks(hooks) -> None:
    if not (type(hooks) is collections.OrderedDict and not hooks):
        raise _refuse("a tensor with backward hooks")


# --- plain stand-ins ----------------------------------------------------------------------

def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """Stands in for `_codecs.encode`: protocol 2 stores bytes as latin-1 text; no other codec is needed."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _refuse(f"_codecs.encode of a {type(text).__name__} with codec {describe(encoding)}")
    return text.encode("latin1")


def _bytearray(data=b"") -> bytearray:
    if type(data) is not bytes:  # bytearray(10**11) would allocate 100 GB
        raise _refuse(f"bytearray of a {type(data).__name__}")
    return bytearray(data)


def _hashing(kind: type) -> Callable:
    def make(items=()):
        if type(items) not in (list, tuple):
            raise _refuse(f"{kind.__name__} of a {type(items).__name__}")
        for item in items:
            check_key(item)
        return kind(items)
    make.__name__ = kind.__name__
    return make


def _ordered_dict(items=()):
    if type(items) not in (list, tuple) or not all(type(i) is tuple and len(i) == 2 for i in items):
        raise _refuse("an OrderedDict of anything but (key, value) pairs")
    for key, _ in items:
        check_key(key)
    return collections.OrderedDict(items)


_PLAIN = {
    "builtins.set": _hashing(set), "builtins.frozenset": _hashing(frozenset),
    "builtins.complex": complex, "builtins.bytearray": _bytearray,
    "collections.OrderedDict": _ordered_dict, "_codecs.encode": _latin1_encode,
}
_SPACE_ONLY = {
    "sklearn.decomposition._pca.PCA": PickledPCA,   # the style space's PCA object (sklearn >= 0.22)
    "sklearn.decomposition.pca.PCA": PickledPCA,    # ... its older module path
}


def _import(module: str, name: str) -> Any:
    with warnings.catch_warnings():  # numpy.core is a deprecated alias of numpy._core
        warnings.simplefilter("ignore", DeprecationWarning)
        return getattr(importlib.import_module(module), name)


def _in_packages(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def resolve_global(module: str, name: str, kind: str = MODEL) -> Any:
    """The object a pickle's global `module.name` stands for in a file of `kind`, if the allow-list
    admits it (numpy's and torch's rebuilding functions are admitted by the unpickler itself)."""
    module = "builtins" if module == "__builtin__" else module  # protocol 2 writes Python 2's name
    key = f"{module}.{name}"
    if key in _PLAIN:
        return _PLAIN[key]
    if kind == SPACE and key in _SPACE_ONLY:
        return _SPACE_ONLY[key]
    if key == "numpy.ndarray":  # only as _reconstruct's first argument: calling it is refused
        return np.ndarray
    # Identifiers only: pickle would walk a dotted name such as "Linear.__init__.__globals__".
    identifiers = all(part.isidentifier() for part in (*module.split("."), name))
    if kind == MODEL and identifiers and not name.startswith("_"):
        if module == "torch" and isinstance(vars(torch).get(name), torch.dtype):
            return vars(torch)[name]  # dtypes held as module attributes
        if module == "torch" and name in _STORAGE_TYPES:
            return _STORAGE_TYPES[name]
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


def _counted(load: Callable) -> Callable:
    def run(unpickler) -> None:
        unpickler._count()  # every opcode counts against MAX_OPCODES
        load(unpickler)
    return run


# --- the unpickler ------------------------------------------------------------------------

class RestrictedUnpickler(pickle._Unpickler):
    """An unpickler that builds only allow-listed globals, and calls only what rebuilding data needs.

    The pure-Python unpickler is used for its dispatch table, so that every opcode that calls
    or hashes something is checked (torch.save and scikit-learn pickles pass all of these checks).
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, kind: str = MODEL, **kwargs) -> None:
        super().__init__(file, **kwargs)
        self.kind = kind
        self._opcodes = self._modules = 0
        self._globals: dict[int, Any] = {}
        self._new_dtypes: dict[int, np.dtype] = {}    # made here, BUILD not yet applied
        self._new_arrays: dict[int, np.ndarray] = {}  # empty, from _reconstruct, BUILD not yet applied
        self._storages: dict[int, Any] = {}           # from persistent_load
        checked = {"dtype": self._dtype, "multiarray._reconstruct": self._reconstruct,
                   "multiarray.scalar": self._scalar, "numeric._frombuffer": self._frombuffer}
        self._checked = {f"{core}.{name}": fn for core in _NUMPY_CORE for name, fn in checked.items()}
        self._checked["numpy.dtype"] = self._dtype
        if kind == MODEL:
            self._checked |= {"torch._utils._rebuild_tensor_v2": self._rebuild_tensor,
                              "torch._utils._rebuild_parameter": self._rebuild_parameter,
                              "torch._utils._rebuild_parameter_with_state": self._rebuild_parameter_with_state}

    def find_class(self, module: str, name: str) -> Any:
        obj = self._checked.get(f"{module}.{name}") or resolve_global(module, name, self.kind)
        self._globals[id(obj)] = obj
        return obj

    # -- numpy: plain number arrays and scalars, built once --
    def _plain(self, dtype) -> np.dtype:
        if not isinstance(dtype, np.dtype):
            raise _refuse(f"a {type(dtype).__name__} as a numpy dtype")
        check_plain_dtype(dtype)
        return dtype

    def _dtype(self, spec, align=False, copy=False) -> np.dtype:
        """numpy.dtype(spec) for a plain number type: always a new object (BUILD then sets its
        byte order; numpy's shared dtype singletons are never touched)."""
        if not isinstance(spec, str):
            raise _refuse(f"a numpy dtype made from a {type(spec).__name__}")
        try:
            self._plain(np.dtype(spec))
        except TypeError:
            raise _refuse(f"numpy dtype {describe(spec)}") from None
        dtype = np.dtype(spec, copy=True)
        self._new_dtypes[id(dtype)] = dtype
        return dtype

    def _reconstruct(self, subtype, shape, typecode):
        """An empty ndarray, as numpy pickles begin one; its BUILD then gives it shape, dtype and data."""
        if subtype is not np.ndarray or shape != (0,) or typecode not in (b"b", "b"):
            raise _refuse("an ndarray reconstructed other than numpy pickles one")
        array = _import(_numpy_core(), "multiarray")._reconstruct(np.ndarray, (0,), b"b")
        self._new_arrays[id(array)] = array
        return array

    def _scalar(self, dtype, data=None):
        self._plain(dtype)
        if type(data) is not bytes or len(data) != dtype.itemsize:
            raise _refuse("a numpy scalar from anything but its bytes")
        return _import(_numpy_core(), "multiarray").scalar(dtype, data)

    def _frombuffer(self, data, dtype, shape, order):
        """Arrays in pickle protocol 5: a copy, so that nothing refers to the file's buffer."""
        self._plain(dtype)
        _ints(shape, "shape", ndim=True)
        if type(data) not in (bytes, bytearray) or order not in ("C", "F"):
            raise _refuse("a numpy array from anything but bytes")
        return np.frombuffer(data, dtype=dtype).reshape(shape, order=order).copy()

    def _build_numpy(self, target, state) -> None:
        """BUILD once, on a dtype or an array made here, with the state numpy itself writes (a second
        BUILD of an array frees data a view may still use; a dtype's state could give it fields)."""
        if isinstance(target, np.dtype):
            if self._new_dtypes.pop(id(target), None) is not target or not (
                    type(state) is tuple and len(state) == 8 and state[0] == 3 and state[1] in ("<", ">", "|", "=")
                    and state[2:] == (None, None, None, -1, -1, 0)):
                raise _refuse("numpy dtype state other than a plain number type's")
        else:
            if self._new_arrays.pop(id(target), None) is not target or not (type(state) is tuple and len(state) == 5):
                raise _refuse("numpy array state other than numpy's own, or set twice")
            version, shape, dtype, fortran, data = state
            _ints(shape, "shape", ndim=True)
            self._plain(dtype)
            if type(version) is not int or type(fortran) is not bool or type(data) not in (bytes, bytearray) \
                    or len(data) != math.prod(shape) * dtype.itemsize:  # (_ints: no negative sizes)
                raise _refuse("numpy array state other than numpy's own")

    # -- torch: tensors on storages read from the archive --
    def _rebuild_tensor(self, storage, offset, size, stride, requires_grad, backward_hooks, metadata=None):
        if id(storage) not in self._storages:
            raise _refuse("a tensor on a storage not read from the archive")
        _ints(offset, "offset")
        _ints(size, "size", ndim=True)
        _ints(stride, "stride", ndim=True)
        _no_hooks(backward_hooks)
        if type(requires_grad) is not bool or metadata:
            raise _refuse("tensor arguments other than torch.save's")
        # more elements than the storage holds means overlapping ones (stride 0): a 2-byte record
        # would become a terabyte tensor when the converter copies it
        if math.prod(size) > storage._size() - offset:  # _size(): size() warns that TypedStorage is deprecated
            raise _refuse(f"a tensor of {math.prod(size)} elements on a storage of {storage._size()}")
        # a fresh OrderedDict: torch keeps the one it is given, which the file could fill later
        return torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, collections.OrderedDict())

    def _rebuild_parameter(self, data, requires_grad, backward_hooks):
        if type(data) is not torch.Tensor or type(requires_grad) is not bool:
            raise _refuse(f"a Parameter made from a {type(data).__name__}")
        _no_hooks(backward_hooks)
        return torch._utils._rebuild_parameter(data, requires_grad, collections.OrderedDict())

    def _rebuild_parameter_with_state(self, data, requires_grad, backward_hooks, state):
        if type(data) is not torch.Tensor or type(requires_grad) is not bool:
            raise _refuse(f"a Parameter made from a {type(data).__name__}")
        _no_hooks(backward_hooks)
        check_state(state)
        return torch._utils._rebuild_parameter_with_state(data, requires_grad, collections.OrderedDict(), state)

    # -- opcodes --
    def load_build(self) -> None:
        target, state = self.stack[-2:]
        # a global, or an Enum member (a process-wide singleton): state set here outlives the file
        if id(target) in self._globals or isinstance(target, enum.Enum):
            raise _refuse(f"to set attributes of {getattr(target, '__qualname__', type(target).__name__)!r}")
        if isinstance(target, (np.ndarray, np.dtype)):
            self._build_numpy(target, state)
        else:
            check_state(state)
        super().load_build()

    def load_reduce(self) -> None:
        # Only allow-listed globals are called; modules are rebuilt by NEWOBJ + BUILD (torch.save
        # never calls a Module class or instance, whose __init__/forward would run file-given arguments).
        func, args = self.stack[-2:]
        if id(func) not in self._globals or func is np.ndarray \
                or (isinstance(func, type) and issubclass(func, torch.nn.Module)) \
                or (isinstance(func, enum.EnumMeta) and len(args) != 1):  # an Enum's value lookup, not its class factory
            raise _refuse(f"to call {getattr(func, '__qualname__', type(func).__name__)!r}")
        if isinstance(func, enum.EnumMeta):
            check_key(args[0])
        super().load_reduce()

    def load_newobj(self) -> None:
        self._check_class(self.stack[-2])
        super().load_newobj()

    def load_newobj_ex(self) -> None:
        self._check_class(self.stack[-3])
        super().load_newobj_ex()

    def _check_class(self, cls) -> None:
        # NEWOBJ(_EX) calls cls.__new__: an allow-listed class's, not one an instance carries.
        if not (isinstance(cls, type) and id(cls) in self._globals) or cls is np.ndarray:
            raise _refuse(f"to create a {getattr(cls, '__qualname__', type(cls).__name__)}: not an allow-listed class")
        if issubclass(cls, torch.nn.Module):
            self._modules += 1
            if self._modules > MAX_MODULES:
                raise _refuse(f"a model of more than {MAX_MODULES:,} modules (a ViT-L has 540)")

    def _count(self) -> None:
        self._opcodes += 1
        if self._opcodes > MAX_OPCODES:
            raise _refuse(f"a pickle of more than {MAX_OPCODES:,} opcodes (a whole ViT-L is 63,000)")

    def _check_container(self, target, kind: type) -> None:
        # These opcodes call the target's append/extend/__setitem__/add: only a plain container's
        # (a module's __setitem__, e.g. ParameterDict's, would set any attribute).
        if not isinstance(target, kind):
            raise _refuse(f"to add items to a {type(target).__name__}")

    def load_append(self) -> None:
        self._check_container(self.stack[-2], list)
        super().load_append()

    def load_appends(self) -> None:
        self._check_container(self.metastack[-1][-1], list)  # the object below the MARK
        super().load_appends()

    def load_setitem(self) -> None:
        self._check_container(self.stack[-3], dict)
        check_key(self.stack[-2])
        super().load_setitem()

    def load_setitems(self) -> None:
        self._check_container(self.metastack[-1][-1], dict)
        for key in self.stack[::2]:
            check_key(key)
        super().load_setitems()

    def load_dict(self) -> None:
        for key in self.stack[::2]:
            check_key(key)
        super().load_dict()

    def load_additems(self) -> None:
        self._check_container(self.metastack[-1][-1], set)
        for item in self.stack:
            check_key(item)
        super().load_additems()

    def load_frozenset(self) -> None:
        for item in self.stack:
            check_key(item)
        super().load_frozenset()

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
    dispatch[pickle.DICT[0]] = load_dict
    dispatch[pickle.ADDITEMS[0]] = load_additems
    dispatch[pickle.FROZENSET[0]] = load_frozenset
    dispatch = {code: _counted(load) for code, load in dispatch.items()}


def _numpy_core() -> str:
    return _NUMPY_CORE[0] if np.__version__ >= "2" else _NUMPY_CORE[1]


class _TorchZipUnpickler(RestrictedUnpickler):
    """data.pkl of a torch.save archive: storages are read from the archive's data/ records."""

    def __init__(self, reader, path: Path, kind: str) -> None:
        super().__init__(io.BytesIO(reader.get_record("data.pkl")), kind)
        self.reader, self.path, self.by_key = reader, path, {}
        self.records = set(reader.get_all_records())  # torch's lookup ignores case: names must match exactly
        self.bytes_left = path.stat().st_size          # each record is read once, in one dtype

    def persistent_load(self, saved_id) -> Any:
        if not (type(saved_id) is tuple and len(saved_id) == 5 and saved_id[0] in ("storage", b"storage")):
            raise _refuse(f"persistent id {describe(saved_id)}: torch.save writes only storages")
        _, storage_type, key, _location, numel = saved_id
        if not isinstance(storage_type, StorageType) or type(key) is not str or type(numel) is not int or numel < 0:
            raise ModelFileError(self.path, f"garbled storage record (key {describe(key)}, size {describe(numel)})")
        if key not in self.by_key:  # the reader checks the record holds this many bytes
            nbytes = numel * torch._utils._element_size(storage_type.dtype)
            if f"data/{key}" not in self.records or nbytes > self.bytes_left:
                raise ModelFileError(self.path, f"names a storage record {describe(key)} it does not hold")
            self.bytes_left -= nbytes
            data = self.reader.get_storage_from_record(f"data/{key}", nbytes, torch.UntypedStorage)
            storage = torch.storage.TypedStorage(
                wrap_storage=data._typed_storage()._untyped_storage, dtype=storage_type.dtype, _internal=True)
            self.by_key[key] = storage
            self._storages[id(storage)] = storage
        if self.by_key[key].dtype != storage_type.dtype:
            raise ModelFileError(self.path, f"reads storage record {describe(key)} as two types")
        return self.by_key[key]


def _torch_zip_load(path: Path, kind: str) -> Any:
    """A torch.save archive, read with torch's own zip reader (the one torch.load uses, so both see
    the same records) and unpickled here. torch.load is never called: it hands an archive with
    TorchScript records to torch.jit.load, which runs code from the file."""
    reader = torch._C.PyTorchFileReader(str(path))
    records = reader.get_all_records()
    if sum(reader.get_record_size(r) for r in records) > path.stat().st_size:
        # torch.save stores records uncompressed; a deflated one could inflate a thousandfold
        raise ModelFileError(path, "holds compressed records, which torch.save never writes")
    if any(r.rsplit("/", 1)[-1] == "constants.pkl" for r in records):
        raise ModelFileError(path, "is a TorchScript archive, not a torch.save file")
    if not reader.has_record("data.pkl"):
        raise ModelFileError(path, "is a zip archive without data.pkl, not a torch.save file")
    if reader.has_record("byteorder") and reader.get_record("byteorder") != b"little":
        raise ModelFileError(path, "was saved on a big-endian machine, which is not read")
    return _TorchZipUnpickler(reader, path, kind).load()


def load_pickle(path, kind: str = MODEL) -> Any:
    """Read a plain pickle or a torch.save file (zip format) of `kind` (SPACE or MODEL), building
    only what that kind's allow-list admits."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(path, "is not a file" if path.exists() else "file not found")
    try:
        if zipfile.is_zipfile(path):
            return _torch_zip_load(path, kind)
        with open(path, "rb") as f:
            obj = RestrictedUnpickler(f, kind).load()
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
    except RecursionError:
        raise ModelFileError(path, "nests its data too deeply to be a release file") from None
    except Exception as e:  # whatever a truncated or foreign file makes the unpickler raise
        raise ModelFileError(path, f"not a readable pickle or torch.save file ({type(e).__name__}: {e})") from None
