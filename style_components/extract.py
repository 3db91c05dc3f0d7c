"""Images -> style embedding, with a timm backbone stored as safetensors.

An extractor file holds a timm model's `state_dict()` plus metadata saying how to rebuild
it (`architecture`, `model_kwargs`) and how to prepare images (`preprocess`, `mean`, `std`);
`dim` is the embedding size. Nothing is unpickled, and timm is imported only to load one.

Preprocessing reproduces the original release's torchvision pipelines with Pillow alone:
torchvision's Resize on a PIL image calls `Image.resize(..., BICUBIC)`, so the pixels match
(tests check this against torchvision itself).
"""

from __future__ import annotations

import functools
import hashlib
import math
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Mapping, Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from . import files
from .errors import ModelFileError, StyleComponentsError, UsageError

FORMAT = "style-components-extractor"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

V03_AREA = (518 * 1.3) ** 2  # target pixel count of v0.3 inputs
PATCH = 14                   # v0.3 sizes are whole ViT patches
V02_SHORT_SIDE = 336
ICON_SIDES = (64, 128, 192)  # icon encoders' input sides (iconN rules; icon128: the demo's encoder)

ImageInput = Union[Image.Image, str, Path, np.ndarray]


# --- preprocessing: small pure functions on PIL images ------------------------------------

def to_rgb(image: Image.Image) -> Image.Image:
    """RGB copy of `image`; transparent images are composited on white.

    Transparent pixels keep arbitrary colours (often black) that a plain convert("RGB")
    would reveal; artwork with a transparent background is meant to be seen on a white page.
    """
    keyed = "transparency" in image.info  # a colour-keyed transparent colour (PNG tRNS)
    if image.mode == "RGB" and not keyed:
        return image
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        # convert() clips these to 0..255 (16-bit PNGs come out white): scale to 8 bits first.
        # 16-bit grey PNG/TIFF pixels (0..65535) open as I;16, or as I in older Pillow (A1111's);
        # float images hold 0..1 (float TIFF) or, converted by Pillow from 8 bits, 0..255.
        a = np.asarray(image, dtype=np.float64)
        scale = 255 / 65535 if image.mode != "F" else 255.0 if a.max() <= 1 else 1.0
        grey = Image.fromarray(np.clip(np.rint(a * scale), 0, 255).astype(np.uint8), "L")
        if not keyed:
            return grey.convert("RGB")
        alpha = Image.fromarray(np.where(a == image.info["transparency"], 0, 255).astype(np.uint8), "L")
        image = Image.merge("LA", (grey, alpha))
    if image.mode in ("RGBA", "LA", "PA") or keyed:
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


def _resize(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    # torchvision returns the image untouched when the size is unchanged; so does this.
    return image if image.size == size else image.resize(size, Image.Resampling.BICUBIC)


def _aspect_error(a: float, b: float) -> float:
    return 1 - min(a, b) / max(a, b)


def v03_grid(w: int, h: int, area: float = V03_AREA, d: int = PATCH) -> tuple[int, int]:
    """(W, H) in patches of `d` px for a w x h image: 14^2*W*H <= area, aspect closest to w/h.

    Ties go to the first candidate in (i, j) order, as in the original's `min`.
    """
    s = (area / w / h) ** 0.5  # the original's expression: math.sqrt(area / (w * h)) floors differently on a few sizes
    w0, h0 = math.floor(s * w / d), math.floor(s * h / d)
    candidates = [(w0 + i, h0 + j) for i in (0, 1) for j in (0, 1)]
    # A zero-sized side would be an empty image (the original crashed on such inputs).
    fitting = [(gw, gh) for gw, gh in candidates if gw > 0 and gh > 0 and d * d * gw * gh <= area]
    if not fitting:
        raise StyleComponentsError(f"a {w}x{h} image is too elongated for v0.3 preprocessing")
    return min(fitting, key=lambda g: _aspect_error(g[0] / g[1], w / h))


def cover_and_crop(image: Image.Image, width: int, height: int) -> Image.Image:
    """Bicubic resize so the image covers width x height, then centre-crop to it."""
    w, h = image.size
    if width / w > height / h:
        size = (width, int(h * width / w))
    else:
        size = (int(w * height / h), height)
    image = _resize(image, size)
    # torchvision's CenterCrop rounding
    left = int(round((size[0] - width) / 2.0))
    top = int(round((size[1] - height) / 2.0))
    return image.crop((left, top, left + width, top + height))


def resize_v03(image: Image.Image) -> Image.Image:
    """v0.3: about (518*1.3)^2 px, sides multiples of 14, aspect kept as well as the grid allows."""
    gw, gh = v03_grid(*image.size)
    return cover_and_crop(image, PATCH * gw, PATCH * gh)


def resize_v02(image: Image.Image) -> Image.Image:
    """v0.2: short side to 336, aspect kept, no crop (torchvision Resize(336))."""
    w, h = image.size
    short, long = min(w, h), max(w, h)
    long = int(V02_SHORT_SIDE * long / short)
    return _resize(image, (V02_SHORT_SIDE, long) if w <= h else (long, V02_SHORT_SIDE))


def fit_icon(image: Image.Image, side: int, background: Sequence[int] = (255, 255, 255)) -> Image.Image:
    """iconN (the icon encoders, N = side): the whole image fitted in an N x N square, centred on
    `background` (LANCZOS down, bicubic up) -- how the icon dataset rasterises its icons, so an
    extracted style sees an icon as training did."""
    image = image.convert("RGBA")
    if image.size != (side, side):
        w, h = image.size
        s = side / max(w, h)
        resample = Image.Resampling.LANCZOS if s < 1 else Image.Resampling.BICUBIC
        image = image.resize((max(1, round(w * s)), max(1, round(h * s))), resample)
    canvas = Image.new("RGBA", (side, side), (*background, 255))
    canvas.alpha_composite(image, ((side - image.size[0]) // 2, (side - image.size[1]) // 2))
    return canvas.convert("RGB")


ICON_RULES: dict[str, int] = {f"icon{side}": side for side in ICON_SIDES}
PREPROCESS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "v0.2": resize_v02, "v0.3": resize_v03,
    **{name: functools.partial(fit_icon, side=side) for name, side in ICON_RULES.items()}}


def to_tensor(image: Image.Image, mean: Sequence[float] = IMAGENET_MEAN,
              std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """RGB PIL image -> normalised float32 [3, H, W] (ToTensor then Normalize)."""
    x = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div(255)
    m = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
    return (x - m) / s


def preprocess_image(image: Image.Image, name: str, mean: Sequence[float] = IMAGENET_MEAN,
                     std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """Image -> the [3, H, W] tensor the `name` preprocessing ("v0.2" or "v0.3") gives."""
    if name not in PREPROCESS:
        raise UsageError(f"unknown preprocessing {name!r}; known: {', '.join(sorted(PREPROCESS))}")
    return to_tensor(PREPROCESS[name](to_rgb(image)), mean, std)


# --- inputs --------------------------------------------------------------------------------

def _decoded(image: Image.Image, what: str) -> Image.Image:
    """RGB of an opened image, decoded now (a truncated upload fails here, with a message) and
    turned as its EXIF says, so the image is the one a viewer (and the UI) shows."""
    try:
        image.load()
        return to_rgb(ImageOps.exif_transpose(image))
    except (OSError, Image.DecompressionBombError) as e:
        raise StyleComponentsError(f"{what}: cannot read the image ({e})") from None


def load_image(source: ImageInput) -> Image.Image:
    """A PIL image, an image file path or an HxWx3 (or x4) uint8 array -> RGB PIL image."""
    if isinstance(source, Image.Image):
        return _decoded(source, "the image")
    if isinstance(source, (str, Path)):
        try:
            with Image.open(source) as im:
                return _decoded(im, str(source))
        except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as e:
            raise StyleComponentsError(f"{source}: cannot read the image ({e})") from None
    if isinstance(source, np.ndarray):
        if source.dtype != np.uint8 or source.ndim != 3 or source.shape[2] not in (3, 4) or not source.size:
            raise UsageError(f"an image array must be HxWx3 (or HxWx4) uint8, not empty; "
                             f"got shape {source.shape} dtype {source.dtype}")
        return to_rgb(Image.fromarray(source))
    raise TypeError(f"expected a PIL image, a path or a numpy array, got {type(source).__name__}")


def image_key(image: Image.Image) -> str:
    """Content hash: equal pixels give equal keys whatever object holds them."""
    h = hashlib.sha256(f"{image.mode}:{image.size[0]}x{image.size[1]}:".encode())
    h.update(image.tobytes())
    return h.hexdigest()


def _check_input_size(path, model: torch.nn.Module, preprocess: str) -> None:
    """A ViT of a fixed input size takes the sizes its rule makes: v0.2/v0.3 sizes vary per image
    (the position embeddings must be interpolated); iconN is N x N."""
    if getattr(model, "dynamic_img_size", True) is not False:
        return
    side = ICON_RULES.get(preprocess)
    size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if side is None or size is None or tuple(size) != (side, side):
        raise ModelFileError(path, f"{preprocess} preprocessing makes other input sizes than this model's fixed "
                                   f"{list(size) if size is not None else 'one'}: add \"dynamic_img_size\": true "
                                   "to metadata entry 'model_kwargs'")


def _check_weights(weights: Sequence[float] | None, n: int) -> list[float]:
    if weights is None:
        return [1.0] * n
    w = [float(x) for x in weights]
    if len(w) != n:
        raise UsageError(f"{len(w)} weights given for {n} images")
    for i, x in enumerate(w):
        if not math.isfinite(x) or x < 0:
            raise UsageError(f"image weights must be finite and non-negative; weight {i} is {x}")
    if sum(w) <= 0:
        raise UsageError("at least one image weight must be positive")
    return w


# --- the extractor -------------------------------------------------------------------------

class Extractor:
    """A backbone plus its preprocessing; embeddings are cached by image content."""

    def __init__(self, model: torch.nn.Module, preprocess: str, dim: int,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 name: str = "", source: str = "<in memory>", cache_size: int = 256):
        if preprocess not in PREPROCESS:
            raise UsageError(f"unknown preprocessing {preprocess!r}; known: {', '.join(sorted(PREPROCESS))}")
        self.model = model.eval().requires_grad_(False)
        self.preprocess, self.dim, self.name, self.source = preprocess, int(dim), name, str(source)
        self.mean, self.std = tuple(mean), tuple(std)
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.cache_size = cache_size
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()  # the UI and the API may extract at the same time

    # -- files --

    @staticmethod
    def save(model: torch.nn.Module, path, architecture: str, model_kwargs: Mapping[str, object],
             preprocess: str, mean: Sequence[float] = IMAGENET_MEAN,
             std: Sequence[float] = IMAGENET_STD, name: str | None = None) -> None:
        """Write `model` (a timm model built as `architecture` with `model_kwargs`) as an extractor file."""
        if preprocess not in PREPROCESS:
            raise UsageError(f"unknown preprocessing {preprocess!r}; known: {', '.join(sorted(PREPROCESS))}")
        # timm's convention: the head's size, or the pooled features' when there is no head.
        dim = getattr(model, "num_classes", 0) or model.num_features
        files.write(path, model.state_dict(), {
            "format": FORMAT, "architecture": architecture, "model_kwargs": dict(model_kwargs),
            "preprocess": preprocess, "dim": int(dim), "mean": list(mean), "std": list(std),
            "name": name or Path(path).stem})

    @classmethod
    def load(cls, path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
             cache_size: int = 256) -> "Extractor":
        tensors, meta = files.read(path, FORMAT)
        for entry in ("architecture", "model_kwargs", "preprocess", "dim"):
            if entry not in meta:
                raise ModelFileError(path, f"metadata entry {entry!r} is missing")
        kwargs = files.json_field(path, meta, "model_kwargs")
        if not isinstance(kwargs, dict):
            raise ModelFileError(path, "metadata entry 'model_kwargs' must be a JSON object")
        preprocess = meta["preprocess"]
        if preprocess not in PREPROCESS:
            raise ModelFileError(path, f"metadata entry 'preprocess' is {preprocess!r}; "
                                       f"known: {', '.join(sorted(PREPROCESS))}")
        dim = files.json_field(path, meta, "dim")
        if not isinstance(dim, int) or isinstance(dim, bool) or dim <= 0:
            raise ModelFileError(path, f"metadata entry 'dim' must be a positive integer, not {meta['dim']!r}")
        mean = _channel_values(path, meta, "mean", IMAGENET_MEAN)
        std = _channel_values(path, meta, "std", IMAGENET_STD)
        if min(std) <= 0:
            raise ModelFileError(path, "metadata entry 'std' must be positive")

        with torch.device("meta"):  # 'model_kwargs' could ask for any size: the weights' shapes are
            skeleton = _build_model(path, meta["architecture"], kwargs)  # checked before a byte is allocated
        _check_state_dict(path, skeleton, tensors)
        model = _build_model(path, meta["architecture"], kwargs)
        model.load_state_dict(dict(tensors), strict=True)
        _check_input_size(path, model, preprocess)
        model.to(device=device, dtype=dtype)
        return cls(model, preprocess, dim, mean, std, meta.get("name") or Path(path).stem,
                   source=str(path), cache_size=cache_size)

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> "Extractor":
        """Move the backbone (e.g. to the CPU to free VRAM); cached embeddings are kept."""
        self.model.to(device=device, dtype=dtype)
        param = next(self.model.parameters())
        self.device, self.dtype = param.device, param.dtype
        return self

    # -- embeddings --

    def embed_one(self, image: ImageInput) -> torch.Tensor:
        """The [D] float32 CPU embedding of one image."""
        rgb = load_image(image)
        key = image_key(rgb)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key].clone()
        x = preprocess_image(rgb, self.preprocess, self.mean, self.std)
        with torch.inference_mode():
            out = self.model(x.unsqueeze(0).to(self.device, self.dtype))
        if tuple(out.shape) != (1, self.dim):
            raise ModelFileError(self.source, f"the backbone returns shape {list(out.shape)}, "
                                              f"metadata entry 'dim' says [1, {self.dim}]")
        self._check_finite(out)  # before caching: a NaN embedding would be served again
        # clone outside inference mode: a normal tensor callers may use with autograd
        embedding = out[0].to("cpu", torch.float32).clone()
        with self._lock:
            self._cache[key] = embedding
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return embedding.clone()

    def embed_each(self, images: Sequence[ImageInput], batch: int = 256) -> torch.Tensor:
        """[N, D] embeddings of many images, in batches (training and evaluation; no cache).

        Images are read batch by batch, so memory does not grow with N; a batch whose
        preprocessed sizes differ (v0.3 keeps aspect ratios) runs one image at a time.
        """
        images = list(images)
        outs = [torch.zeros(0, self.dim)]
        with torch.inference_mode():
            for i in range(0, len(images), batch):
                xs = [preprocess_image(load_image(im), self.preprocess, self.mean, self.std)
                      for im in images[i:i + batch]]
                groups = [xs] if len({tuple(x.shape) for x in xs}) == 1 else [[x] for x in xs]
                for group in groups:
                    out = self.model(torch.stack(group).to(self.device, self.dtype))
                    if tuple(out.shape) != (len(group), self.dim):
                        raise ModelFileError(self.source, f"the backbone returns shape {list(out.shape)}, "
                                                          f"metadata entry 'dim' says [{len(group)}, {self.dim}]")
                    outs.append(self._check_finite(out).float().cpu())
        return torch.cat(outs).clone()

    def embed(self, images: ImageInput | Sequence[ImageInput],
              weights: Sequence[float] | None = None) -> torch.Tensor:
        """Weighted mean [D] of the images' embeddings (equal weights by default).

        Images run one at a time (v0.3 sizes differ, so they cannot be batched);
        an image with weight 0 is skipped without being read.
        """
        if isinstance(images, (Image.Image, str, Path, np.ndarray)):
            images = [images]
        images = list(images)
        if not images:
            raise UsageError("no images given")
        w = _check_weights(weights, len(images))
        used = [(image, x) for image, x in zip(images, w) if x > 0]
        stacked = torch.stack([self.embed_one(image) for image, _ in used])
        total = sum(x for _, x in used)  # in float64: weights of 1e-50 or 1e39 would be 0 or inf in float32
        coefficients = torch.tensor([x / total for _, x in used], dtype=torch.float64)
        return (coefficients[:, None] * stacked.double()).sum(0).float()

    def _check_finite(self, out: torch.Tensor) -> torch.Tensor:
        if not bool(torch.isfinite(out).all()):
            hint = f" (it ran in {self.dtype}: try float32)" if self.dtype != torch.float32 else ""
            raise ModelFileError(self.source, f"the backbone's embedding of this image holds NaN or "
                                              f"infinite values{hint}")
        return out

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()


def _channel_values(path, meta: Mapping[str, str], entry: str, default: Sequence[float]) -> tuple[float, ...]:
    values = files.json_field(path, meta, entry, list(default))
    if (not isinstance(values, list) or len(values) != 3
            or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)):
        raise ModelFileError(path, f"metadata entry {entry!r} must be a list of 3 numbers (R, G, B)")
    return tuple(float(v) for v in values)


def _build_model(path, architecture: str, kwargs: dict) -> torch.nn.Module:
    try:
        import timm

        from . import stylenet  # noqa: F401  registers the project's own architecture with timm
    except ImportError as e:
        raise StyleComponentsError(f"loading the style extractor {path} needs timm "
                                   f"(pip install timm): {e}") from None
    # is_model also refuses "hf-hub:..." names, which would make timm download a config.
    if not timm.is_model(architecture):
        raise ModelFileError(path, f"'architecture' names {architecture!r}, "
                                   f"which timm {timm.__version__} does not know")
    # create_model's own loading arguments would read (older timm: unpickle) another file
    loading = sorted(k for k in kwargs if k.startswith("pretrained") or k in ("checkpoint_path", "cache_dir"))
    if loading:
        raise ModelFileError(path, f"'model_kwargs' may not set {loading[0]!r}: "
                                   "the weights are the ones in this file")
    try:
        return timm.create_model(architecture, pretrained=False, **kwargs)
    except (TypeError, ValueError, RuntimeError, AssertionError, KeyError, ArithmeticError) as e:
        raise ModelFileError(path, f"timm cannot build {architecture!r} with "
                                   f"'model_kwargs' {kwargs}: {e}") from None


def _check_state_dict(path, model: torch.nn.Module, tensors: Mapping[str, torch.Tensor]) -> None:
    """What a strict load checks, with the first offending key named instead of torch's long message."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in tensors]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise ModelFileError(path, f"missing{more}: the model built from the metadata has this weight",
                             missing[0])
    files.reject_extra(path, tensors, set(expected))
    for k, t in expected.items():
        if tensors[k].shape != t.shape:
            raise ModelFileError(path, f"shape {list(tensors[k].shape)} where the model has {list(t.shape)}", k)
        if tensors[k].is_floating_point() != t.is_floating_point():
            raise ModelFileError(path, f"dtype {tensors[k].dtype} where the model has {t.dtype}", k)
        files.check_finite(path, k, tensors[k])
