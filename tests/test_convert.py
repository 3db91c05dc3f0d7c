"""Safe conversion of the original pickled releases: the allow-list, the space and extractor converters, the CLI."""

from __future__ import annotations

import ast
import builtins
import collections
import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import timm
import torch
from PIL import Image
from sklearn.decomposition import PCA

import style_components
from style_components import cli, files
from style_components.convert import convert_extractor, convert_space, load_pickle, resolve_global
from style_components.unpickle import MODEL, SPACE
from style_components.errors import ModelFileError, StyleComponentsError, UnsafePickleError
from style_components.space import StyleSpace

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(style_components.__file__).parent


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """`python -m style_components ...` in a fresh interpreter, as a user runs it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "style_components", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=300)


# --- the original style space ---------------------------------------------------------------

K, D = 6, 16


def fitted_pca(seed: int = 0) -> tuple[PCA, np.ndarray, np.ndarray]:
    """A PCA over anisotropic random data, the std of all D components (longer than K), and the data."""
    rng = np.random.default_rng(seed)
    data = rng.normal(size=(400, D)) @ rng.normal(size=(D, D)) + rng.normal(size=D) * 3
    pca = PCA(n_components=K, whiten=False).fit(data)
    std = np.sqrt(PCA().fit(data).explained_variance_)
    assert std.shape == (D,)
    return pca, std, data


@pytest.fixture(scope="module")
def pca_file(tmp_path_factory) -> tuple[Path, PCA, np.ndarray, np.ndarray]:
    pca, std, data = fitted_pca()
    path = tmp_path_factory.mktemp("space") / "pca.pkl"
    path.write_bytes(pickle.dumps((pca, std)))
    return path, pca, std, data


def test_convert_space_through_the_cli(pca_file, tmp_path, capsys):
    src, pca, std, data = pca_file
    dst = tmp_path / "space.safetensors"
    assert cli.main(["convert", "space", str(src), str(dst), "--name", "Test space", "--extractor", "tiny"]) == 0
    assert "6 components of 16-d" in capsys.readouterr().out
    space = StyleSpace.load(dst)
    assert (space.k, space.d, space.name, space.extractor) == (K, D, "Test space", "tiny")
    want = pca.transform(data) / std[:K]
    got = space.to_components(torch.from_numpy(data).float())
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-4)
    # back: the embedding's projection onto the K components
    np.testing.assert_allclose(space.to_embedding(got).numpy(), pca.inverse_transform(pca.transform(data)),
                               rtol=1e-4, atol=1e-3)


def test_convert_space_needs_no_scikit_learn(pca_file, tmp_path):
    """A1111's environment has no scikit-learn: the PCA's arrays are read without it."""
    src, pca, std, data = pca_file
    dst = tmp_path / "space.safetensors"
    code = ("import sys; sys.modules['sklearn'] = None\n"  # any sklearn import now fails
            "from style_components.convert import convert_space\n"
            f"convert_space({str(src)!r}, {str(dst)!r})\n"
            "assert 'sklearn' not in {m.split('.')[0] for m, v in sys.modules.items() if v is not None}")
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    got = StyleSpace.load(dst).to_components(torch.from_numpy(data).float())
    np.testing.assert_allclose(got.numpy(), pca.transform(data) / std[:K], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_convert_space_reads_every_pickle_protocol(protocol, tmp_path):
    pca, std, data = fitted_pca(seed=protocol)
    (tmp_path / "pca.pkl").write_bytes(pickle.dumps((pca, std), protocol=protocol))
    space = convert_space(tmp_path / "pca.pkl", tmp_path / "space.safetensors")
    assert space.name == "space"
    # named as the WebUI names the model (found in review: 'anime.space' was shown in messages)
    assert convert_space(tmp_path / "pca.pkl", tmp_path / "anime.space.safetensors").name == "anime"
    np.testing.assert_allclose(space.to_components(torch.from_numpy(data).float()).numpy(),
                               pca.transform(data) / std[:K], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("content, message", [
    (lambda pca, std: (pca, std[:K - 1]), "needs 6 positive standard deviations"),
    (lambda pca, std: (pca, -std), "needs 6 positive standard deviations"),
    (lambda pca, std: {"pca": pca}, "expected a pickled (PCA, std) pair"),
    (lambda pca, std: (std, std), "expected a pickled (PCA, std) pair"),
    (lambda pca, std: (pca, "std"), "std is a str, not an array of numbers"),
    (lambda pca, std: (pca, set(std.tolist())), "std is a set, not an array of numbers"),
    (lambda pca, std: (pca, [std.tolist()]), "std is a list, not an array of numbers"),  # nested
    (lambda pca, std: (pca, None), "std is missing"),
    (lambda pca, std: (pca, std * 1e300), "std holds NaN or infinite values (in float32)"),  # finite in float64
    (lambda pca, std: (pca, std * 1e-300), "needs 6 positive standard deviations"),           # 0 in float32
    (lambda pca, std: (setattr(pca, "mean_", pca.mean_ + 1e300) or pca, std), "mean_ holds NaN or infinite"),
    (lambda pca, std: (setattr(pca, "n_components_", [6]) or pca, std), "n_components_ is a list, not a positive"),
    (lambda pca, std: (setattr(pca, "n_components_", 2.7) or pca, std), "n_components_ is 2.7, not a positive"),
    (lambda pca, std: (setattr(pca, "n_components_", -1) or pca, std), "n_components_ is -1, not a positive"),
])
def test_convert_space_rejects_wrong_content(content, message, tmp_path):
    """...and leaves a good file of the same name as it was (found in review: checks done in
    float64 passed values that the float32 file then held as inf or 0, and the file was written)."""
    pca, std, _ = fitted_pca()
    good = convert_space_of(pca, std, tmp_path / "space.safetensors")
    (tmp_path / "pca.pkl").write_bytes(pickle.dumps(content(pca, std)))
    with pytest.raises(ModelFileError, match=re.escape(message)):
        convert_space(tmp_path / "pca.pkl", tmp_path / "space.safetensors")
    kept = StyleSpace.load(tmp_path / "space.safetensors")
    assert all(torch.equal(getattr(kept, a), getattr(good, a)) for a in ("mean", "components", "std"))


def convert_space_of(pca, std, dst: Path) -> StyleSpace:
    src = dst.with_name("good.pkl")
    src.write_bytes(pickle.dumps((pca, std)))
    return convert_space(src, dst)


def test_a_whitened_pca_keeps_the_original_slider_scale(tmp_path):
    """Found in review: a whitened PCA converted with every slider off by sqrt(explained_variance_).
    sklearn's whitened transform is ((e - mean) @ C.T) / sqrt(explained_variance_)."""
    _, _, data = fitted_pca()
    pca = PCA(n_components=K, whiten=True).fit(data)
    std = np.linspace(0.5, 2.0, D)
    (tmp_path / "pca.pkl").write_bytes(pickle.dumps((pca, std)))
    space = convert_space(tmp_path / "pca.pkl", tmp_path / "space.safetensors")
    want = pca.transform(data) / std[:K]                       # what the original release computes
    got = space.to_components(torch.from_numpy(data).float())
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(space.to_embedding(got).numpy(), pca.inverse_transform(want * std[:K]),
                               rtol=1e-4, atol=1e-3)
    del pca.explained_variance_                                  # whitened, but the scale is unknown
    (tmp_path / "pca.pkl").write_bytes(pickle.dumps((pca, std)))
    with pytest.raises(ModelFileError, match="whitened"):
        convert_space(tmp_path / "pca.pkl", tmp_path / "other.safetensors")


@pytest.mark.parametrize("spoil", ["components_", "mean_", "std"])
def test_a_space_with_nan_is_refused_before_writing(spoil, tmp_path):
    """Found in review: NaN in the PCA was written out, then failed the check on reading it back,
    leaving a broken file that the model list shows, and an error naming that file, not the source."""
    pca, std, _ = fitted_pca()
    if spoil == "std":
        std[1] = np.inf
    else:
        getattr(pca, spoil).flat[3] = np.nan
    src, dst = tmp_path / "pca.pkl", tmp_path / "space.safetensors"
    src.write_bytes(pickle.dumps((pca, std)))
    with pytest.raises(ModelFileError, match=re.escape(str(src)) + ".*(NaN|infinite)"):
        convert_space(src, dst)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pca.pkl"]


def failing_write(tensors, path, metadata=None):
    """safetensors' save_file interrupted half way (disk full, Ctrl-C): part of a file, then an error."""
    Path(path).write_bytes(b"partial")
    raise OSError("No space left on device")


def test_an_interrupted_conversion_leaves_the_previous_file(pca_file, torch_file, tmp_path, monkeypatch):
    """Outputs are written to a temporary file in the same folder and renamed into place."""
    space, extractor = tmp_path / "space.safetensors", tmp_path / "extractor.safetensors"
    convert_space(pca_file[0], space)
    convert_extractor(torch_file, extractor)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    monkeypatch.setattr(safetensors.torch, "save_file", failing_write)
    with pytest.raises(OSError, match="No space"):
        convert_space(pca_file[0], space)
    with pytest.raises(OSError, match="No space"):
        convert_extractor(torch_file, extractor)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # unchanged, no temporary left


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_written_model_files_get_the_umask_mode(umask, tmp_path):
    """safetensors alone writes 0600: a WebUI run by another user (a service account) could not
    read a model converted or trained by its admin. Files get the mode the umask gives new files."""
    old = os.umask(umask)
    try:
        files.write(tmp_path / "m.safetensors", {"x": torch.zeros(1)}, {"format": "test"})
    finally:
        os.umask(old)
    assert (tmp_path / "m.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask
    assert files.read(tmp_path / "m.safetensors", "test")[0]["x"].shape == (1,)


# --- the original style extractor -------------------------------------------------------------

SMALL = dict(img_size=56, depth=2, embed_dim=64, num_heads=2)
VITS = {  # name: (architecture, kwargs, preprocess)
    "dinov2": ("vit_small_patch14_dinov2", dict(SMALL, num_classes=0, dynamic_img_size=True), "v0.3"),
    "registers": ("vit_small_patch14_reg4_dinov2", dict(SMALL, num_classes=0, dynamic_img_size=True), "v0.3"),
    "avg-pool-head": ("vit_small_patch16_224", dict(SMALL, img_size=64, num_classes=10, global_pool="avg",
                                                    qk_norm=True, act_layer="gelu_tanh", mlp_ratio=2.5), "v0.2"),
}


def randomised(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights everywhere: timm's init (layer scale 1e-5, zero biases) would hide block differences."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model.eval()


def small_vit(architecture: str, **kwargs) -> torch.nn.Module:
    return randomised(timm.create_model(architecture, pretrained=False, **kwargs))


def dinov2_vit() -> torch.nn.Module:
    architecture, kwargs, _ = VITS["dinov2"]
    return small_vit(architecture, **kwargs)


def rebuild(path: Path) -> tuple[torch.nn.Module, dict]:
    """What the extractor loader does: timm.create_model from the metadata, strict load of the weights."""
    tensors, meta = files.read(path, "style-components-extractor")
    model = timm.create_model(meta["architecture"], pretrained=False, **json.loads(meta["model_kwargs"]))
    model.load_state_dict(tensors, strict=True)
    return model.eval(), meta


def assert_same_outputs(a: torch.nn.Module, b: torch.nn.Module, *size: int) -> None:
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = a(x), b(x)
    assert want.std() > 0.1  # a real, non-degenerate output
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", list(VITS))
def test_convert_extractor_rebuilds_the_same_model(kind, tmp_path, capsys):
    architecture, kwargs, preprocess = VITS[kind]
    model = small_vit(architecture, **kwargs)
    torch.save(model, tmp_path / "model.pt")
    dst = tmp_path / "extractor.safetensors"
    assert cli.main(["convert", "extractor", str(tmp_path / "model.pt"), str(dst), "--preprocess", preprocess]) == 0
    assert "extractor" in capsys.readouterr().out

    rebuilt, meta = rebuild(dst)
    size = kwargs["img_size"]
    assert_same_outputs(model, rebuilt, size, size)
    if kwargs.get("dynamic_img_size"):
        assert_same_outputs(model, rebuilt, 42, 70)  # v0.3 sizes vary per image
    tensors, _ = files.read(dst)
    assert set(tensors) == set(model.state_dict()) and all(t.dtype == torch.float32 for t in tensors.values())
    assert meta["architecture"] == architecture and meta["preprocess"] == preprocess
    assert json.loads(meta["dim"]) == (kwargs["num_classes"] or kwargs["embed_dim"])
    assert json.loads(meta["mean"]) == list(model.pretrained_cfg["mean"])
    assert json.loads(meta["std"]) == list(model.pretrained_cfg["std"])
    assert meta["name"] == "extractor"


def test_half_precision_weights_are_written_as_float32(tmp_path):
    model = dinov2_vit().half()
    torch.save(model, tmp_path / "model.pt")
    convert_extractor(tmp_path / "model.pt", tmp_path / "e.safetensors")
    tensors, _ = files.read(tmp_path / "e.safetensors")
    assert all(t.dtype == torch.float32 for t in tensors.values())
    assert_same_outputs(model.float(), rebuild(tmp_path / "e.safetensors")[0], 56, 56)


def test_the_extractor_loader_reads_a_converted_file(tmp_path):
    from style_components.extract import Extractor, preprocess_image

    model = dinov2_vit()
    torch.save(model, tmp_path / "model.pt")
    convert_extractor(tmp_path / "model.pt", tmp_path / "e.safetensors", preprocess="v0.3")
    extractor = Extractor.load(tmp_path / "e.safetensors")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 150, 3), dtype=np.uint8))
    with torch.no_grad():
        want = model(preprocess_image(image, "v0.3").unsqueeze(0))[0]
    torch.testing.assert_close(extractor.embed_one(image), want, atol=1e-5, rtol=1e-5)


def test_v03_enables_variable_sizes_for_a_fixed_size_vit(tmp_path):
    model = small_vit("vit_small_patch14_dinov2", **SMALL, num_classes=0)
    torch.save(model, tmp_path / "model.pt")
    with pytest.warns(UserWarning, match="dynamic_img_size"):
        meta = convert_extractor(tmp_path / "model.pt", tmp_path / "v03.safetensors", preprocess="v0.3")
    assert meta["model_kwargs"]["dynamic_img_size"] is True
    assert_same_outputs(model, rebuild(tmp_path / "v03.safetensors")[0], 56, 56)
    meta = convert_extractor(tmp_path / "model.pt", tmp_path / "v02.safetensors", preprocess="v0.2")
    assert meta["model_kwargs"]["dynamic_img_size"] is False


def test_architecture_missing_from_the_file(tmp_path, capsys):
    model = dinov2_vit()
    model.pretrained_cfg = model.default_cfg = {}
    torch.save(model, tmp_path / "model.pt")
    dst = tmp_path / "e.safetensors"
    assert cli.main(["convert", "extractor", str(tmp_path / "model.pt"), str(dst)]) == 2
    assert "--architecture" in capsys.readouterr().err and not dst.exists()
    assert cli.main(["convert", "extractor", str(tmp_path / "model.pt"), str(dst),
                     "--architecture", "vit_small_patch14_dinov2"]) == 0
    meta = rebuild(dst)[1]
    assert json.loads(meta["mean"]) == [0.485, 0.456, 0.406] and json.loads(meta["std"]) == [0.229, 0.224, 0.225]


def test_other_models_need_explicit_model_kwargs(tmp_path, capsys):
    model = randomised(timm.create_model("resnet10t", pretrained=False, num_classes=0))
    torch.save(model, tmp_path / "resnet.pt")
    dst = tmp_path / "e.safetensors"
    assert cli.main(["convert", "extractor", str(tmp_path / "resnet.pt"), str(dst), "--preprocess", "v0.2"]) == 2
    err = capsys.readouterr().err
    assert "ResNet" in err and "--model-kwargs" in err and "Traceback" not in err
    assert cli.main(["convert", "extractor", str(tmp_path / "resnet.pt"), str(dst), "--preprocess", "v0.2",
                     "--model-kwargs", '{"num_classes": 0}']) == 0
    rebuilt, meta = rebuild(dst)
    assert json.loads(meta["dim"]) == 512
    assert_same_outputs(model, rebuilt, 64, 64)
    # a CNN takes any input size, so v0.3 needs no dynamic_img_size
    assert convert_extractor(tmp_path / "resnet.pt", dst, model_kwargs={"num_classes": 0})["preprocess"] == "v0.3"


@pytest.mark.parametrize("model_kwargs, message", [
    ({**SMALL, "num_classes": 0, "dynamic_img_size": True, "depth": 3}, "do not fit"),
    # same weights, different pooling: the module's attributes (and its output) tell
    ({**SMALL, "num_classes": 0, "dynamic_img_size": True, "global_pool": "avg", "fc_norm": False},
     "global_pool is 'token', rebuilt 'avg'"),
    ({**SMALL, "num_classes": 0}, "dynamic_img_size"),
    ({"no_such_argument": 1}, "cannot build"),
])
def test_wrong_model_kwargs_are_caught(model_kwargs, message, tmp_path):
    torch.save(dinov2_vit(), tmp_path / "model.pt")
    with pytest.raises(ModelFileError, match=message):
        convert_extractor(tmp_path / "model.pt", tmp_path / "e.safetensors", model_kwargs=model_kwargs)
    assert not (tmp_path / "e.safetensors").exists()


def test_bad_model_kwargs_json_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["convert", "extractor", "a.pt", "b.safetensors", "--model-kwargs", "[1, 2]"])
    assert e.value.code == 2 and "JSON object" in capsys.readouterr().err


def test_nan_weights_are_named_before_anything_is_written(tmp_path):
    model = dinov2_vit()
    with torch.no_grad():
        model.blocks[0].mlp.fc1.weight[0, 0] = float("nan")
    torch.save(model, tmp_path / "model.pt")
    with pytest.raises(ModelFileError, match=r"model\.pt \(key 'blocks\.0\.mlp\.fc1\.weight'\): .*NaN"):
        convert_extractor(tmp_path / "model.pt", tmp_path / "e.safetensors")
    assert not (tmp_path / "e.safetensors").exists()


def test_a_state_dict_is_not_a_whole_model(tmp_path):
    torch.save(dinov2_vit().state_dict(), tmp_path / "weights.pt")
    with pytest.raises(ModelFileError, match="not a whole model"):
        convert_extractor(tmp_path / "weights.pt", tmp_path / "e.safetensors")


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_torchscript_archives_are_refused(tmp_path):
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), tmp_path / "scripted.pt")
    with pytest.raises(ModelFileError, match="TorchScript"):
        load_pickle(tmp_path / "scripted.pt")


# --- malicious files ------------------------------------------------------------------------

class SystemCall:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class Eval:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return builtins.eval, (f"open({str(self.marker)!r}, 'w').close()",)


PAYLOADS = {"os.system": (SystemCall, "posix.system"), "eval": (Eval, "builtins.eval")}


def write_payload(kind: str, container: str, marker: Path, path: Path) -> Path:
    """The payload alone, or inside the (PCA, std) pair / a module attribute, saved as a user would get it."""
    payload = PAYLOADS[kind][0](marker)
    if container == "pickle":
        path.write_bytes(pickle.dumps((payload, np.ones(3))))
    else:
        model = torch.nn.Linear(2, 2)
        model.extra = payload
        torch.save(model, path, _use_new_zipfile_serialization=container == "torch zip")
    return path


@pytest.mark.parametrize("kind", list(PAYLOADS))
def test_the_payloads_are_real(kind, tmp_path):
    """Control: an ordinary unpickler runs them, so the refusals below are meaningful."""
    marker = tmp_path / "marker"
    pickle.loads(pickle.dumps(PAYLOADS[kind][0](marker)))
    assert marker.exists()


@pytest.mark.parametrize("container", ["pickle", "torch zip"])
@pytest.mark.parametrize("kind", list(PAYLOADS))
def test_malicious_files_are_refused_before_running(kind, container, tmp_path):
    marker = tmp_path / "marker"
    src = write_payload(kind, container, marker, tmp_path / "evil.pkl")
    with pytest.raises(UnsafePickleError, match=re.escape(PAYLOADS[kind][1])):
        load_pickle(src)
    convert = convert_space if container == "pickle" else convert_extractor
    with pytest.raises(UnsafePickleError, match="allow-list"):
        convert(src, tmp_path / "out.safetensors")
    assert not marker.exists() and not (tmp_path / "out.safetensors").exists()


def test_the_legacy_torch_format_is_refused_without_reading_it(tmp_path):
    """Found in review: torch.load's legacy reader, which the converter used to call after checking
    the first pickle, trusts the file: a 'module' record makes it write a .patch file at a path the
    file names, and a tar container extracts symlinks. Legacy files (torch < 1.6) are refused."""
    marker = tmp_path / "marker"
    src = write_payload("os.system", "torch legacy", marker, tmp_path / "evil.pt")
    for convert in (load_pickle, lambda p: convert_extractor(p, tmp_path / "out.safetensors")):
        with pytest.raises(ModelFileError, match="legacy format"):
            convert(src)
    assert not marker.exists() and not (tmp_path / "out.safetensors").exists()


# hand-written pickle opcodes, for files no pickler would write
def op_global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def op_str(s: str) -> bytes:
    return b"X" + len(s.encode()).to_bytes(4, "little") + s.encode()


def op_tuple(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def op_dtype(spec: str) -> bytes:  # numpy.dtype(spec, False, True), as numpy pickles a dtype
    return op_global("numpy", "dtype") + op_tuple(op_str(spec), b"\x89", b"\x88") + b"R"


@pytest.mark.parametrize("case", ["void", "object", "fields given by BUILD"])
def test_numpy_dtypes_with_fields_or_objects_are_refused(case, tmp_path):
    """Found in review: a dtype whose state gives it an object field made numpy read 8 bytes of the
    file as a PyObject pointer (a segfault at an address the file chose). Only plain number dtypes
    are built now, and a BUILD that gives one fields is refused."""
    numeric = "numpy._core.numeric" if np.__version__ >= "2" else "numpy.core.numeric"
    state = op_tuple(b"K\x03", op_str("|"), b"N", op_tuple(op_str("a")),
                     b"}" + op_str("a") + op_tuple(op_dtype("O"), b"K\x00") + b"s", b"K\x08", b"K\x01", b"K\x00")
    dtype = {"void": op_dtype("V8"), "object": op_dtype("O"), "fields given by BUILD": op_dtype("f8") + state + b"b"}[case]
    array = op_global(numeric, "_frombuffer") + op_tuple(b"C\x08" + b"A" * 8, dtype, op_tuple(b"K\x01"), op_str("C")) + b"R"
    (tmp_path / "space.pkl").write_bytes(b"\x80\x02" + op_tuple(array, array) + b".")
    with pytest.raises(UnsafePickleError, match="dtype"):
        convert_space(tmp_path / "space.pkl", tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


NUMPY_CORE = "numpy._core" if np.__version__ >= "2" else "numpy.core"
MINUS_ONE = b"J\xff\xff\xff\xff"
F8_STATE = op_tuple(b"K\x03", op_str("<"), b"N", b"N", b"N", MINUS_ONE, MINUS_ONE, b"K\x00")  # what numpy writes
ARRAY_STATE = op_tuple(b"K\x01", op_tuple(b"K\x01"), op_dtype("f8") + F8_STATE + b"b", b"\x89", b"C\x08" + b"A" * 8)
RECONSTRUCT = (op_global(f"{NUMPY_CORE}.multiarray", "_reconstruct")
               + op_tuple(op_global("numpy", "ndarray"), op_tuple(b"K\x00"), b"C\x01b") + b"R")
ENTRY = op_global("torch.nn.modules.linear", "Identity") + b")\x81"  # an allowed module, in a model file


@pytest.mark.parametrize("data, kind, message", [
    # numpy.ndarray called (REDUCE or NEWOBJ) reads its buffer as a dtype *string* says: "O" = pointers
    (op_global("numpy", "ndarray") + op_tuple(op_tuple(b"K\x02"), op_str("O"), b"C\x10" + b"A" * 16) + b"R",
     SPACE, "refused to call 'ndarray'"),
    (op_global("numpy", "ndarray") + op_tuple(op_tuple(b"K\x02"), op_str("O"), b"C\x10" + b"A" * 16) + b"\x81",
     SPACE, "not an allow-listed class"),
    # ... without a buffer, uninitialised memory: it went into the converted file
    (op_global("numpy", "ndarray") + op_tuple(op_tuple(b"M\x00\x10"), op_str("u1")) + b"R", SPACE, "to call 'ndarray'"),
    # a second BUILD of an array frees the data that a view made in between still reads
    (RECONSTRUCT + b"q\x00" + ARRAY_STATE + b"b0h\x00" + ARRAY_STATE + b"b", SPACE, "set twice"),
    # a dtype state numpy walks before any check could: version 2 (7 items), fields given
    (op_dtype("f8") + op_tuple(b"K\x02", op_str("<"), b"N", b"N", b"N", MINUS_ONE, MINUS_ONE) + b"b", SPACE,
     "dtype state"),
    # the hash of a deeply nested tuple recurses in C without a limit (a segfault at ~10**5 levels)
    (b"}" + b")" + b"\x85" * 100_000 + b"K\x01s", SPACE, "a tuple as a dict key"),
    (op_global("builtins", "frozenset") + op_tuple(b"]" + b")\x85\x85" + b"a") + b"R", SPACE, "a tuple as a dict key"),
    # bytearray(10**11): 12 bytes of pickle, 100 GB of memory
    (op_global("builtins", "bytearray") + op_tuple(b"\x8a\x05" + (10 ** 11).to_bytes(5, "little")) + b"R",
     SPACE, "bytearray of a int"),
    # torch classes have no place in a space file (a module's __getattr__ served __array_interface__,
    # which np.asarray followed to any address)
    (ENTRY, SPACE, "allow-list"),
    # Parameter(x) calls x.detach(): a module's __getattr__ served a class, and torch called it
    (op_global("torch._utils", "_rebuild_parameter") + op_tuple(ENTRY, b"\x89", op_global("collections", "OrderedDict")
                                                                + b")R") + b"R", MODEL, "Parameter made from a Identity"),
    # a tensor on anything but a storage read from the archive
    (op_global("torch._utils", "_rebuild_tensor_v2") + op_tuple(ENTRY, b"K\x00", op_tuple(b"K\x01"), op_tuple(b"K\x01"),
                                                                b"\x89", op_global("collections", "OrderedDict") + b")R")
     + b"R", MODEL, "storage not read from the archive"),
])
def test_what_numpy_and_torch_would_trust_is_checked_first(data, kind, message, tmp_path):
    """Found in a second review, after the first round of fixes: each of these crashed the
    converter (segfault), leaked its memory into the written file, or called an allowed class."""
    (tmp_path / "evil.pkl").write_bytes(b"\x80\x02" + data + b".")
    with pytest.raises(UnsafePickleError, match=re.escape(message)):
        load_pickle(tmp_path / "evil.pkl", kind)


def test_messages_never_repr_what_the_file_holds(tmp_path):
    """Found in a third review: `{value!r:.60}` builds the whole repr before cutting it, and the
    memo lets 1000 references to one 100 kB string (a 100 kB file) make a 100 MB message."""
    shape = op_str("a" * 100_000) + b"q\x000" + b"](" + b"h\x00" * 1000 + b"e"  # memo 0 = the string
    data = op_global(f"{NUMPY_CORE}.numeric", "_frombuffer") + op_tuple(b"C\x08" + b"A" * 8, op_dtype("f8"), shape,
                                                                        op_str("C")) + b"R"
    (tmp_path / "evil.pkl").write_bytes(b"\x80\x02" + data + b".")
    with pytest.raises(UnsafePickleError) as info:
        load_pickle(tmp_path / "evil.pkl", SPACE)
    assert "shape a list: not whole numbers" in str(info.value) and len(str(info.value)) < 300


def test_a_pickle_that_builds_too_much_is_refused(tmp_path):
    """Left open by the fourth review: every opcode builds something, so a file of tens of MB could
    make the converter allocate GBs (a 40 MB chain of 200 k modules: 1.2 GB). Opcodes and modules
    are now counted; a real ViT-L is 63 k opcodes and 540 modules."""
    from style_components import unpickle
    empty_dicts = b"(" + b"}" * unpickle.MAX_OPCODES + b"l"  # a list of 2 M dicts: 2 MB of pickle, ~130 MB built
    (tmp_path / "dicts.pkl").write_bytes(b"\x80\x02" + empty_dicts + b".")
    with pytest.raises(UnsafePickleError, match=r"more than 2,000,000 opcodes"):
        load_pickle(tmp_path / "dicts.pkl", SPACE)
    modules = b"(" + (ENTRY + b"}b") * (unpickle.MAX_MODULES + 1) + b"l"  # 20,001 modules, each given a state
    (tmp_path / "modules.pkl").write_bytes(b"\x80\x02" + modules + b".")
    with pytest.raises(UnsafePickleError, match=r"more than 20,000 modules"):
        load_pickle(tmp_path / "modules.pkl", MODEL)
    fewer = b"(" + (ENTRY + b"}b") * unpickle.MAX_MODULES + b"l"  # the limits themselves are allowed
    (tmp_path / "fewer.pkl").write_bytes(b"\x80\x02" + fewer + b".")
    assert len(load_pickle(tmp_path / "fewer.pkl", MODEL)) == unpickle.MAX_MODULES


def test_slices_are_refused():
    """A chain of 10**6 slices, each holding the next, crashed the process when freed (CPython frees
    slices recursively, without the guard lists and tuples have). Releases hold no slices."""
    with pytest.raises(UnsafePickleError, match="allow-list"):
        resolve_global("builtins", "slice")


def vit_file(tmp_path, change=lambda model: None, name="model.pt") -> Path:
    model = dinov2_vit()
    change(model)
    torch.save(model, tmp_path / name)
    return tmp_path / name


@pytest.mark.parametrize("change, error, message", [
    # a tensor with stride 0 on a 1-element storage: copying it (float(), isfinite, the file) made it real
    (lambda m: setattr(m, "cls_token", torch.nn.Parameter(torch.zeros(1).expand(1, 1, 64))), UnsafePickleError,
     "elements on a storage of 1"),
    # the rebuilt model's arguments come from attributes: a list of lists went into every message
    (lambda m: setattr(m, "global_pool", [["token"] * 100] * 100), ModelFileError, "its global_pool is a list"),
    # ... and a big one built the whole model before its weights were compared (16 GB at 2**26)
    (lambda m: setattr(m, "num_classes", 4_000_000), ModelFileError, "do not fit"),
    # the saved module is run to compare outputs: any allowed module could stand where a Dropout does...
    (lambda m: setattr(m, "pos_drop", torch.nn.Upsample(scale_factor=250_000)), ModelFileError,
     "at 'pos_drop': Upsample"),
    # ... or a module of the right kind with other arguments
    (lambda m: setattr(m.patch_embed.proj, "padding", (100_000, 100_000)), ModelFileError,
     "'patch_embed.proj': padding is a tuple, rebuilt a tuple"),
])
def test_a_module_built_to_exhaust_memory_is_refused_before_it_runs(change, error, message, tmp_path, monkeypatch):
    """Found in a third review: each made the converter allocate gigabytes (or more) from a small file."""
    from style_components import convert, extract
    built_on, ran = [], []
    real_build = extract._build_model
    monkeypatch.setattr(extract, "_build_model", lambda *a: built_on.append(torch.empty(0).device.type) or real_build(*a))
    monkeypatch.setattr(convert, "_check_outputs", lambda *a: ran.append(a))
    with pytest.raises(error, match=re.escape(message)):
        convert_extractor(vit_file(tmp_path, change), tmp_path / "e.safetensors")
    assert ran == [] and not (tmp_path / "e.safetensors").exists()  # the saved module never ran
    if message == "do not fit":
        assert built_on == ["meta"]  # never built for real
    assert built_on in ([], ["meta"], ["meta", "cpu"])  # a real model is built only once its weights fit


def repeat_block(m):
    m.blocks._modules["1"] = m.blocks._modules["0"]


@pytest.mark.parametrize("change, preprocess, error, message", [
    # one block listed N times: the state's shapes fit a depth-N model, built for real N times over
    (repeat_block, "v0.3", UnsafePickleError, "is a module met twice"),
    # a half tensor kept as a plain attribute: float() ran timm's rotary-embedding code, which rebuilt
    # its bands at a size taken from the file (200 GB); nothing runs on the module before this check
    (lambda m: setattr(m.blocks[0], "bands", torch.zeros(4, dtype=torch.half)), "v0.3", UnsafePickleError,
     "attribute bands is a Tensor"),
    # weights sharing memory: a thousand views of one half record became a thousand float copies
    (lambda m: setattr(m.blocks[1].attn.qkv, "weight", m.blocks[0].attn.qkv.weight), "v0.3", ModelFileError,
     "shares its memory with another weight"),
    # ... also as views at other offsets of one storage
    (lambda m: setattr(m.blocks[1].attn.proj, "bias", torch.nn.Parameter(m.blocks[0].attn.qkv.weight.data.view(-1)[1:65])),
     "v0.3", ModelFileError, "shares its memory with another weight"),
    # sizes read from attributes: 0.5 made _mlp_ratio step one ulp at a time (10**15 steps)
    (lambda m: setattr(m.blocks[0].mlp.fc1, "out_features", 0.5), "v0.3", ModelFileError, "its MLP width is 0.5"),
    # without a position embedding no weight bounds the image size: attention on 90k tokens (v0.2)
    (lambda m: (setattr(m, "pos_embed", None), setattr(m, "dynamic_img_size", False),
                setattr(m.patch_embed, "img_size", (4200, 4200)), setattr(m.patch_embed, "grid_size", (300, 300)),
                setattr(m.patch_embed, "num_patches", 90_000)), "v0.2", ModelFileError, "too large to check"),
    # whatever torch raises on such a module is one line, not a traceback
    (lambda m: setattr(m, "eval", 0), "v0.3", ModelFileError, "cannot be converted (TypeError"),
])
def test_a_module_that_would_cost_memory_time_or_a_traceback_is_refused(change, preprocess, error, message, tmp_path):
    """Found in a fourth review."""
    with pytest.raises(error, match=re.escape(message)):
        convert_extractor(vit_file(tmp_path, change), tmp_path / "e.safetensors", preprocess=preprocess)
    assert not (tmp_path / "e.safetensors").exists()


def test_storage_records_are_named_exactly(tmp_path):
    """torch's zip reader looks records up ignoring case, so keys 'A', 'a'... each read one record
    again (3000 references to a 2 MB record: 6 GB). Only the exact name is read, and only once."""
    import zipfile
    src = vit_file(tmp_path)
    with zipfile.ZipFile(src) as z, zipfile.ZipFile(tmp_path / "case.pt", "w") as out:
        for info in z.infolist():
            data = z.read(info.filename)
            if info.filename.endswith("data.pkl"):
                data = data.replace(b"X\x01\x00\x00\x000", b"X\x01\x00\x00\x00A")  # storage key "0" -> "A"
            out.writestr(info.filename.replace("/data/0", "/data/a"), data)
    with pytest.raises(ModelFileError, match="names a storage record 'A' it does not hold"):
        load_pickle(tmp_path / "case.pt")


def test_sizes_are_bounded_before_they_are_multiplied(tmp_path):
    """A 100 kB int, referenced 300 times as a shape (2 bytes each), took minutes to multiply."""
    huge = b"\x8a\x04\x00\x00\x00\x01"  # 2**24 as LONG1: fine; then one of 2**48
    shape = op_tuple(huge, b"\x8a\x07" + (2 ** 48).to_bytes(7, "little"))
    data = op_global(f"{NUMPY_CORE}.numeric", "_frombuffer") + op_tuple(b"C\x08" + b"A" * 8, op_dtype("f8"), shape,
                                                                        op_str("C")) + b"R"
    (tmp_path / "big.pkl").write_bytes(b"\x80\x02" + data + b".")
    with pytest.raises(UnsafePickleError, match="from 0 to 2"):
        load_pickle(tmp_path / "big.pkl", SPACE)


def test_the_dummy_input_is_the_rebuilt_models_not_the_files(tmp_path):
    """The file's pretrained_cfg said (120000, 56, 56): a 1.5 GB input was made from it."""
    src = vit_file(tmp_path, lambda m: m.pretrained_cfg.update(input_size=(120_000, 56, 56)))
    assert convert_extractor(src, tmp_path / "e.safetensors")["dim"] == 64


def test_compressed_records_are_refused(tmp_path):
    """torch's zip reader inflates deflated records (torch.save never writes them): 1 MB of file
    could be 1 GB of tensor."""
    import zipfile
    src = vit_file(tmp_path, lambda m: m.register_buffer("zeros", torch.zeros(256, 1024)))
    with zipfile.ZipFile(src) as z, zipfile.ZipFile(tmp_path / "deflated.pt", "w", zipfile.ZIP_DEFLATED) as out:
        for info in z.infolist():
            out.writestr(info.filename, z.read(info.filename))
    assert (tmp_path / "deflated.pt").stat().st_size < 1_000_000 < src.stat().st_size
    with pytest.raises(ModelFileError, match="compressed records"):
        load_pickle(tmp_path / "deflated.pt")


def test_numpy_data_as_numpy_writes_it_loads(tmp_path):
    (tmp_path / "ok.pkl").write_bytes(b"\x80\x02" + RECONSTRUCT + ARRAY_STATE + b"b.")
    assert load_pickle(tmp_path / "ok.pkl", SPACE).tolist() == [float(np.frombuffer(b"A" * 8, "<f8")[0])]


def test_plain_numpy_arrays_and_scalars_still_load(tmp_path):
    values = (np.arange(6, dtype=">f4").reshape(2, 3), np.float64(2.5), np.int64(7), np.array([True, False]))
    (tmp_path / "ok.pkl").write_bytes(pickle.dumps(values, protocol=2))
    got, want = load_pickle(tmp_path / "ok.pkl"), pickle.loads((tmp_path / "ok.pkl").read_bytes())
    assert all(np.array_equal(a, b) and np.asarray(a).dtype == np.asarray(b).dtype for a, b in zip(got, want))
    assert all(np.array_equal(a, b) for a, b in zip(got, values))


def test_an_enum_imported_into_an_allowed_package_is_refused(tmp_path):
    """Found in review: timm.layers.format imports enum.Enum, which passed as an Enum class of an
    allowed package; calling it with two arguments makes a new class from the file's data."""
    (tmp_path / "enum.pkl").write_bytes(b"\x80\x02" + op_global("timm.layers.format", "Enum")
                                        + op_tuple(op_str("Made"), b"}" + op_str("A") + b"K\x01s") + b"R.")
    with pytest.raises(UnsafePickleError, match="allow-list"):
        load_pickle(tmp_path / "enum.pkl")
    # an enum defined there is admitted, for a value lookup only
    fmt = op_global("timm.layers.format", "Format")
    (tmp_path / "lookup.pkl").write_bytes(b"\x80\x02" + fmt + op_tuple(op_str("NCHW")) + b"R.")
    assert load_pickle(tmp_path / "lookup.pkl").value == "NCHW"
    (tmp_path / "factory.pkl").write_bytes(b"\x80\x02" + fmt + op_tuple(op_str("Made"), op_str("A B")) + b"R.")
    with pytest.raises(UnsafePickleError, match="refused to call"):
        load_pickle(tmp_path / "factory.pkl")


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_a_zip_whose_two_directories_disagree_is_read_as_torch_reads_it(tmp_path, capfd):
    """Found in review: the TorchScript check listed names with Python's zipfile and torch.load
    read the archive with its own reader. A zip with two central directories (Python reads the
    second, torch the first) hid constants.pkl from the check, and torch.load ran the file's
    TorchScript. Now torch's reader both lists and reads, and torch.load is never called."""
    import io
    import struct

    class Loud(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.x = torch.zeros(1)

        @torch.jit.export
        def __getstate__(self):
            return (self.x, self.training)

        @torch.jit.export
        def __setstate__(self, state: tuple[torch.Tensor, bool]):
            print("TORCHSCRIPT RAN")
            self.x, self.training = state[0], state[1]

        def forward(self, x):
            return x

    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(Loud()), buf)
    data = buf.getvalue()
    end = data.rfind(b"PK\x05\x06")
    *head, size, offset, _ = struct.unpack("<IHHHHIIH", data[end:end + 22])
    first = data[offset:offset + size]
    second = first.replace(b"/constants.pkl", b"/constantz.pkl")
    (tmp_path / "two.pt").write_bytes(data[:offset] + first + second + struct.pack("<IHHHHIIH", *head, size, offset, 0))
    import zipfile
    assert not any(n.endswith("constants.pkl") for n in zipfile.ZipFile(tmp_path / "two.pt").namelist())
    with pytest.raises(ModelFileError, match="TorchScript"):
        load_pickle(tmp_path / "two.pt")
    assert "TORCHSCRIPT RAN" not in capfd.readouterr().out


def test_a_folder_is_not_a_file(tmp_path):
    with pytest.raises(ModelFileError, match="is not a file"):
        load_pickle(tmp_path)


def test_malicious_file_through_the_command_line(tmp_path):
    marker = tmp_path / "marker"
    src = write_payload("os.system", "torch zip", marker, tmp_path / "evil.pt")
    done = run_cli("convert", "extractor", str(src), str(tmp_path / "out.safetensors"))
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "Traceback" not in done.stderr
    assert "posix.system" in done.stderr
    assert not marker.exists()


@pytest.mark.parametrize("module, name", [
    ("builtins", "getattr"), ("builtins", "exec"), ("builtins", "__import__"), ("os", "system"),
    ("subprocess", "Popen"), ("importlib", "import_module"), ("posix", "system"), ("pickle", "loads"),
    ("torch", "load"), ("torch.storage", "_load_from_bytes"), ("numpy", "load"), ("_codecs", "decode"),
    ("timm", "create_model"),                                 # a function in an allowed package
    ("timm.models._helpers", "load_checkpoint"),
    ("timm.utils.checkpoint_saver", "CheckpointSaver"),       # classes there that are not modules
    ("timm.task.distillation", "DistillationTeacher"),       # a Module whose __init__ loads a file it is given
    ("torch.nn.modules.module", "Parameter"),
    ("torch.nn.modules.linear", "Linear.__init__"),           # dotted names walk into attributes
    ("torch.nn.modules.module", "Module.__init__.__globals__"),
    ("timm_evil", "Module"), ("torch.nn.modules_evil", "Linear"),  # look-alike package names
    ("torch", "_C"), ("torch", "nn"),
])
def test_refused_globals(module, name):
    with pytest.raises(UnsafePickleError, match=re.escape(f"{module}.{name}")):
        resolve_global(module, name)


def test_each_kind_of_file_has_its_own_allow_list():
    """Found by mutation, untested until then: the PCA only in a space file, modules only in a
    model file, and no private class even of an allowed package (torch's _ConvNd base)."""
    from style_components.unpickle import MODEL, SPACE
    assert resolve_global("sklearn.decomposition._pca", "PCA", SPACE) is not None
    with pytest.raises(UnsafePickleError, match="sklearn.decomposition._pca.PCA"):
        resolve_global("sklearn.decomposition._pca", "PCA", MODEL)
    with pytest.raises(UnsafePickleError, match="torch.nn.modules.linear.Linear"):
        resolve_global("torch.nn.modules.linear", "Linear", SPACE)
    with pytest.raises(UnsafePickleError, match="torch.nn.modules.conv._ConvNd"):
        resolve_global("torch.nn.modules.conv", "_ConvNd", MODEL)


def test_allowed_globals():
    from timm.layers.format import Format
    from timm.models.vision_transformer import VisionTransformer

    assert resolve_global("torch.nn.modules.linear", "Linear") is torch.nn.Linear
    assert resolve_global("timm.models.vision_transformer", "VisionTransformer") is VisionTransformer
    assert resolve_global("timm.layers.format", "Format") is Format
    assert resolve_global("__builtin__", "set")(["a"]) == {"a"}  # a stand-in that checks what it hashes
    assert resolve_global("torch", "bfloat16") is torch.bfloat16


def test_a_dotted_global_inside_a_pickle_is_refused(tmp_path):
    # protocol 4: STACK_GLOBAL("torch.nn.modules.linear", "Linear.__init__"), then STOP
    data = (b"\x80\x04\x8c\x17torch.nn.modules.linear\x94\x8c\x0fLinear.__init__\x94\x93\x94.")
    (tmp_path / "dotted.pkl").write_bytes(data)
    assert pickle.loads(data) is torch.nn.Linear.__init__  # the ordinary unpickler would hand it out
    with pytest.raises(UnsafePickleError, match="Linear.__init__"):
        load_pickle(tmp_path / "dotted.pkl")


def test_attributes_of_allowed_classes_cannot_be_set(tmp_path):
    # protocol 2: GLOBAL timm.layers.mlp.Mlp; BUILD (None, {"forward": set}) would set Mlp.forward = set
    data = b"\x80\x02ctimm.layers.mlp\nMlp\nN}X\x07\x00\x00\x00forwardc__builtin__\nset\ns\x86b."
    (tmp_path / "build.pkl").write_bytes(data)
    from timm.layers.mlp import Mlp
    forward = Mlp.forward
    with pytest.raises(UnsafePickleError, match="Mlp"):
        load_pickle(tmp_path / "build.pkl")
    assert Mlp.forward is forward


def test_allowed_module_classes_are_never_called(tmp_path):
    """Found in review: REDUCE on an allow-listed Module class ran its __init__ with arguments
    from the file. torch.save rebuilds modules by NEWOBJ + BUILD, never by a call."""
    data = b"\x80\x02ctorch.nn.modules.linear\nLinear\nK\x03K\x04\x86R."   # Linear(3, 4)
    assert isinstance(pickle.loads(data), torch.nn.Linear)  # the ordinary unpickler builds it
    (tmp_path / "call.pkl").write_bytes(data)
    with pytest.raises(UnsafePickleError, match="refused to call 'Linear'"):
        load_pickle(tmp_path / "call.pkl")


CALLS: list = []


def sentinel_call(*args, **kwargs):
    """Harmless stand-in for any allow-listed callable a file could get called (a Module class, `set`...)."""
    CALLS.append(args)


class Bait:
    """Harmless stand-in for an allow-listed object whose methods pickle opcodes call: `__new__` (NEWOBJ),
    `__setstate__` (BUILD), append/extend (APPEND(S)), add (ADDITEMS), __setitem__ (SETITEM(S))."""

    def __init__(self):
        for name in ("__new__", "__setstate__", "append", "extend", "add"):
            setattr(self, name, lambda *args, _name=name, **kwargs: CALLS.append((_name, *args)))

    def __setitem__(self, key, value):
        CALLS.append(("__setitem__", key, value))


@pytest.fixture
def sentinel(monkeypatch):
    """Puts the stand-ins on the allow-list as `sentinel.call` and `sentinel.bait` (and the call under its
    own name, as torch.save writes it); yields the list of the calls they saw."""
    from style_components import unpickle
    CALLS.clear()
    for key, obj in {"sentinel.call": sentinel_call, "sentinel.bait": Bait(),
                     f"{__name__}.sentinel_call": sentinel_call}.items():
        monkeypatch.setitem(unpickle._PLAIN, key, obj)
    yield CALLS
    CALLS.clear()


def load_bytes(data: bytes, tmp_path: Path):
    (tmp_path / "file.pkl").write_bytes(data)
    return load_pickle(tmp_path / "file.pkl", SPACE if b"sklearn" in data else MODEL)  # a PCA is a space's


def test_the_sentinel_is_on_the_allow_list(sentinel, tmp_path):
    """Control: REDUCE may call an allow-listed function, so the refusals below are the opcodes' own."""
    load_bytes(b"csentinel\ncall\n(I7\ntR.", tmp_path)
    assert sentinel == [(7,)]


@pytest.mark.parametrize("data, message", [
    (b"(I1\nisentinel\ncall\n.", "INST"),                       # INST: calls the class it names
    (b"(I3\nI4\nitorch.nn.modules.linear\nLinear\n.", "INST"),   # ... Linear(3, 4): a Module's __init__
    (b"(csentinel\ncall\nI1\no.", "OBJ"),                         # OBJ: calls any object on the stack
    (b"((I1\nitorch.nn.modules.linear\nIdentity\nI42\no.", "INST"),  # ... e.g. a module: forward(42)
    (b"\x80\x02csentinel\nbait\nK\x01\x85\x81.", "not an allow-listed class"),  # NEWOBJ: obj.__new__(obj, 1)
    (b"\x80\x04csentinel\nbait\n)}\x92.", "not an allow-listed class"),          # NEWOBJ_EX
    (b"csentinel\nbait\nI1\na.", "add items to a Bait"),          # APPEND: obj.append(1)
    (b"csentinel\nbait\n(I1\ne.", "add items to a Bait"),         # APPENDS: obj.extend([1])
    (b"csentinel\nbait\nI1\nI2\ns.", "add items to a Bait"),     # SETITEM: obj[1] = 2
    (b"csentinel\nbait\n(I1\nI2\nu.", "add items to a Bait"),    # SETITEMS
    (b"\x80\x04csentinel\nbait\n(K\x01\x90.", "add items to a Bait"),  # ADDITEMS: obj.add(1)
    # BUILD storing a callable on an instance: the next BUILD calls it as __setstate__(...) ...
    (b"\x80\x02csklearn.decomposition._pca\nPCA\n)\x81}X\x0c\x00\x00\x00__setstate__csentinel\ncall\nsb"
     b"}b.", "refused to set attribute '__setstate__'"),
    # ... or APPENDS as extend(...); and on a module, the converter calls a stored `forward`
    (b"\x80\x02csklearn.decomposition._pca\nPCA\n)\x81}X\x06\x00\x00\x00extendcsentinel\ncall\nsb(K\x01e.",
     "refused to set attribute 'extend'"),
    (b"\x80\x02ctorch.nn.modules.linear\nIdentity\n)\x81}X\x07\x00\x00\x00forwardcsentinel\ncall\nsb.",
     "refused to set attribute 'forward'"),
])
def test_opcodes_that_call_are_refused(data, message, sentinel, tmp_path):
    """Found in review: only REDUCE was checked; INST, OBJ, NEWOBJ, BUILD and the container opcodes
    also call objects the file picks, with arguments from the file."""
    with pytest.raises(UnsafePickleError, match=re.escape(message)):
        load_bytes(data, tmp_path)
    assert sentinel == []


def test_a_real_inst_payload_is_refused(tmp_path):
    """The review's payload: timm's DistillationTeacher.__init__ loads a checkpoint named by the file."""
    secret = tmp_path / "secret.pth"
    data = f"(Vresnet18\nI10\nI3\nV{secret}\nitimm.task.distillation\nDistillationTeacher\n.".encode()
    with pytest.raises(UnsafePickleError, match="INST"):
        load_bytes(data, tmp_path)


def test_parameter_state_cannot_store_callables(sentinel, tmp_path):
    model = torch.nn.Linear(2, 2)
    model.weight.on_load = sentinel_call     # a Parameter's Python attributes are set with setattr
    torch.save(model, tmp_path / "model.pt")
    with pytest.raises(UnsafePickleError, match="refused to set attribute 'on_load'"):
        load_pickle(tmp_path / "model.pt")


HOOKS = ["_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks", "_state_dict_hooks",
         "_state_dict_pre_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks"]


@pytest.mark.parametrize("where", HOOKS + ["_modules", "forward"])
def test_code_stored_in_a_module_never_runs(where, sentinel, tmp_path):
    """Found in review: a hook stored in the pickle ran during conversion (the saved module is called
    to compare it with the rebuilt one, and its state_dict is read)."""
    model = dinov2_vit()
    target = model.blocks[1].attn
    if where == "forward":
        target.forward = sentinel_call          # an instance attribute wins over the class's method
        message = "refused to set attribute 'forward'"
    elif where == "_modules":
        target._modules["proj"] = sentinel_call  # forward calls self.proj(x)
        message = "module 'blocks.1.attn' has something other than Modules in _modules"
    else:
        getattr(target, where)[0] = sentinel_call  # as register_*_hook stores it
        message = f"module 'blocks.1.attn' carries {where}"
    src, dst = tmp_path / "hooked.pt", tmp_path / "e.safetensors"
    torch.save(model, src)
    with pytest.raises(UnsafePickleError, match=re.escape(str(src)) + ": .*" + re.escape(message)):
        convert_extractor(src, dst)
    assert sentinel == [] and not dst.exists()


def test_enum_members_cannot_be_rewritten(tmp_path):
    """Found in review: BUILD onto an Enum member (a process-wide singleton) changed it for the
    rest of the process."""
    from timm.layers import Format
    member = pickle.dumps(Format.NCHW, protocol=2)[:-1]                 # REDUCE(Format, ("NCHW",))
    data = member + b"N}X\x07\x00\x00\x00_value_X\x04\x00\x00\x00NHWCs\x86b."  # BUILD {"_value_": "NHWC"}
    (tmp_path / "enum.pkl").write_bytes(data)
    with pytest.raises(UnsafePickleError, match="refused to set attributes"):
        load_pickle(tmp_path / "enum.pkl")
    assert Format.NCHW.value == "NCHW"
    (tmp_path / "member.pkl").write_bytes(member + b".")
    assert load_pickle(tmp_path / "member.pkl") is Format.NCHW  # the member itself still loads


def test_only_the_latin1_codec(tmp_path):
    # protocol 2 bytes are `_codecs.encode(text, "latin1")`; any other codec is refused
    data = b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x06\x00\x00\x00rot_13\x86R."
    (tmp_path / "codec.pkl").write_bytes(data)
    with pytest.raises(UnsafePickleError, match="rot_13"):
        load_pickle(tmp_path / "codec.pkl")
    (tmp_path / "bytes.pkl").write_bytes(pickle.dumps(b"\x00\xffdata", protocol=2))
    assert load_pickle(tmp_path / "bytes.pkl") == b"\x00\xffdata"


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_allowed_data_round_trips(protocol, tmp_path):
    data = {"od": collections.OrderedDict(a=1), "set": {1, 2}, "frozen": frozenset("ab"), "c": 1 + 2j,
            "ba": bytearray(b"xy"), "dtype": torch.float16,
            "array": np.arange(6, dtype=np.float32).reshape(2, 3), "scalar": np.float64(2.5)}
    (tmp_path / "data.pkl").write_bytes(pickle.dumps(data, protocol=protocol))
    loaded = load_pickle(tmp_path / "data.pkl")
    array = loaded.pop("array")
    np.testing.assert_array_equal(array, data.pop("array"))
    assert loaded == data


# --- broken files ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def torch_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("torch") / "model.pt"
    torch.save(dinov2_vit(), path)
    return path


@pytest.mark.parametrize("content", ["empty", "garbage", "truncated pickle", "truncated torch zip", "text"])
def test_broken_files_give_a_clear_error(content, pca_file, torch_file, tmp_path):
    src = tmp_path / "broken.bin"
    src.write_bytes({
        "empty": b"",
        "garbage": bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)),
        "truncated pickle": pca_file[0].read_bytes()[:300],
        "truncated torch zip": torch_file.read_bytes()[:5000],
        "text": b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\n",
    }[content])
    for convert in (convert_space, convert_extractor):
        with pytest.raises(StyleComponentsError, match=re.escape(str(src))):
            convert(src, tmp_path / "out.safetensors")


def test_missing_file(tmp_path, capsys):
    assert cli.main(["convert", "space", str(tmp_path / "nope.pkl"), str(tmp_path / "out.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("style-components: error:") and "file not found" in err and err.count("\n") == 1


def test_broken_file_through_the_command_line(tmp_path):
    (tmp_path / "broken.pkl").write_bytes(b"\x80\x04\x95garbage")
    done = run_cli("convert", "space", str(tmp_path / "broken.pkl"), str(tmp_path / "out.safetensors"))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith("style-components: error:") and done.stderr.count("\n") == 1


# --- the command line and the package ---------------------------------------------------------

def test_python_dash_m_converts_a_space(pca_file, tmp_path):
    src, pca, std, data = pca_file
    done = run_cli("convert", "space", str(src), str(tmp_path / "s.safetensors"), "--name", "cli")
    assert done.returncode == 0, done.stderr
    space = StyleSpace.load(tmp_path / "s.safetensors")
    assert space.name == "cli"
    np.testing.assert_allclose(space.to_components(torch.from_numpy(data).float()).numpy(),
                               pca.transform(data) / std[:K], rtol=1e-4, atol=1e-4)


def test_importing_the_cli_stays_light():
    code = "import sys, style_components.cli; print(sorted({'torch', 'timm', 'sklearn', 'numpy'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.stdout.strip() == "[]", done.stderr


def unsafe_unpickling_calls(source: str) -> list[str]:
    """Calls that unpickle without an allow-list: pickle/dill/joblib loads, other Unpicklers,
    torch.load without weights_only=True, np.load with allow_pickle."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        func = ast.unparse(node.func)
        kwargs = {k.arg: ast.unparse(k.value) for k in node.keywords}
        if (func.split(".")[0] in ("pickle", "dill", "joblib", "cPickle") and func.endswith(("load", "loads"))
                or func.endswith("Unpickler") and func not in ("RestrictedUnpickler", "_TorchZipUnpickler")
                or func == "torch.load" and kwargs.get("weights_only") != "True"
                or func in ("np.load", "numpy.load") and kwargs.get("allow_pickle", "False") != "False"):
            found.append(ast.unparse(node))
    return found


def test_nothing_else_in_the_package_unpickles():
    """Every unpickling in the package goes through convert.load_pickle's restricted unpickler."""
    assert unsafe_unpickling_calls("pickle.loads(b); torch.load(p, weights_only=False); np.load(p, allow_pickle=True)"
                                   "; pickle.Unpickler(f)") == [
        "pickle.loads(b)", "torch.load(p, weights_only=False)", "np.load(p, allow_pickle=True)",
        "pickle.Unpickler(f)"]
    found = {str(p.relative_to(PACKAGE)): unsafe_unpickling_calls(p.read_text()) for p in PACKAGE.rglob("*.py")}
    assert {k: v for k, v in found.items() if v} == {}
