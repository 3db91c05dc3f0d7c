"""Style extractor: preprocessing against torchvision, the file format, embeddings and the cache."""

from __future__ import annotations

import json
import random
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from style_components import files
from style_components.errors import ModelFileError, StyleComponentsError
from style_components.extract import (
    FORMAT, IMAGENET_MEAN, IMAGENET_STD, PREPROCESS, Extractor, load_image, preprocess_image,
    to_rgb, to_tensor, v03_grid,
)

timm = pytest.importorskip("timm")
v2 = pytest.importorskip("torchvision.transforms.v2")
from torchvision.transforms import InterpolationMode  # noqa: E402

AREA = (518 * 1.3) ** 2
ARCH = "vit_small_patch14_dinov2"
# init_values=1.0: dinov2's default layer scale (1e-5) would make every image's CLS output
# almost the same, and the tests below that compare embeddings would pass vacuously.
KWARGS = dict(img_size=56, depth=2, embed_dim=64, num_heads=2, num_classes=0,
              dynamic_img_size=True, init_values=1.0)
# (1024, 768) and (768, 1024) overshoot the crop by 3 px: they tell round() from floor in CenterCrop.
SIZES = [(640, 960), (1200, 500), (700, 700), (20, 300), (1500, 900), (672, 672), (336, 500),
         (1024, 768), (768, 1024)]


def noise_image(w: int, h: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = len(mode)
    # smooth gradients plus noise, so resampling has something to get wrong
    yy, xx = np.mgrid[0:h, 0:w]
    base = (xx * 255 // max(w - 1, 1) + yy * 255 // max(h - 1, 1)) // 2
    a = base[..., None] + rng.integers(-40, 40, (h, w, channels))
    a = np.clip(a, 0, 255).astype(np.uint8)
    return Image.fromarray(a[..., 0] if channels == 1 else a, mode)


# --- an independent reference: the original release's torchvision pipelines -----------------

def reference_v03_size(w: int, h: int, area: float = AREA, d: int = 14) -> tuple[int, int]:
    """(height, width) in pixels, transcribed from the original extension's DResize."""
    s = (area / w / h) ** 0.5
    wd, hd = int(s * w / d), int(s * h / d)
    e = lambda a, b: 1 - min(a, b) / max(a, b)  # noqa: E731
    wd, hd = min(((ww * d, hh * d) for ww, hh in [(wd + i, hd + j) for i in (0, 1) for j in (0, 1)]
                  if ww * d * hh * d <= area), key=lambda wh: e(wh[0] / wh[1], w / h))
    return hd, wd


def reference(name: str, image: Image.Image, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    tail = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    if name == "v0.2":
        return v2.Compose([v2.Resize(336, InterpolationMode.BICUBIC), *tail])(image)
    w, h = image.size
    hd, wd = reference_v03_size(w, h)
    cover = (int(h * wd / w), wd) if wd / w > hd / h else (hd, int(w * hd / h))
    return v2.Compose([v2.Resize(cover, InterpolationMode.BICUBIC), v2.CenterCrop((hd, wd)), *tail])(image)


@pytest.mark.parametrize("name", ["v0.2", "v0.3"])
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_preprocessing_matches_torchvision(name, size):
    image = noise_image(*size, seed=size[0])
    ours, ref = preprocess_image(image, name), reference(name, image)
    assert ours.shape == ref.shape
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, ref.as_subclass(torch.Tensor), atol=1e-6, rtol=0)


def test_preprocessing_uses_the_given_mean_and_std():
    image, mean, std = noise_image(300, 200), (0.5, 0.4, 0.3), (0.2, 0.3, 0.4)
    torch.testing.assert_close(preprocess_image(image, "v0.3", mean, std),
                               reference("v0.3", image, mean, std).as_subclass(torch.Tensor), atol=1e-6, rtol=0)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_v03_output_is_whole_patches_within_the_area(size):
    _, h, w = preprocess_image(noise_image(*size), "v0.3").shape
    assert h % 14 == 0 and w % 14 == 0
    assert h * w <= AREA
    assert h * w > 0.8 * AREA  # and it does use the area


def test_v03_grid_matches_the_original_on_many_sizes():
    rng = random.Random(0)
    for _ in range(2000):
        w, h = rng.randint(16, 5000), rng.randint(16, 5000)
        gw, gh = v03_grid(w, h)
        assert (14 * gh, 14 * gw) == reference_v03_size(w, h), (w, h)


@pytest.mark.parametrize("w, h", [(1369, 1600), (1521, 3600), (169, 2500)])
def test_v03_grid_rounds_as_the_original_where_sqrt_would_not(w, h):
    """Found in review: math.sqrt(area / (w*h)) and the original's (area / w / h) ** 0.5 differ in
    the last bit, and for these sizes s*h/14 sits on a whole number, so floor() flipped a side."""
    gw, gh = v03_grid(w, h)
    assert (14 * gh, 14 * gw) == reference_v03_size(w, h)


def test_v03_refuses_an_image_too_elongated_for_the_grid():
    with pytest.raises(StyleComponentsError, match="too elongated"):
        preprocess_image(Image.new("RGB", (1, 3000)), "v0.3")


def test_v02_short_side_is_336():
    assert preprocess_image(noise_image(500, 1000), "v0.2").shape == (3, 672, 336)
    assert preprocess_image(noise_image(1000, 501), "v0.2").shape == (3, 336, 670)


def test_registry_and_unknown_preprocessing():
    assert set(PREPROCESS) == {"v0.2", "v0.3", "icon64", "icon128", "icon192"}
    for side in (64, 128, 192):
        assert preprocess_image(noise_image(50, 80), f"icon{side}").shape == (3, side, side)
    with pytest.raises(ValueError, match="unknown preprocessing 'v0.9'.*icon128, icon192, icon64, v0.2, v0.3"):
        preprocess_image(noise_image(50, 50), "v0.9")


def test_transparent_images_are_composited_on_white():
    clear_black = Image.new("RGBA", (64, 48), (0, 0, 0, 0))
    assert np.array(to_rgb(clear_black)).min() == 255
    half = np.array(to_rgb(Image.new("RGBA", (4, 4), (0, 0, 0, 128))))
    assert np.all(np.abs(half.astype(int) - 127) <= 1)
    la = Image.new("LA", (4, 4), (0, 0))
    assert np.array(to_rgb(la)).min() == 255
    palette = Image.new("P", (4, 4), 0)
    palette.info["transparency"] = 0
    assert np.array(to_rgb(palette)).min() == 255
    # opaque non-RGB modes are a plain conversion
    assert to_rgb(Image.new("L", (4, 4), 7)).getpixel((0, 0)) == (7, 7, 7)


def test_16_bit_grey_images_are_scaled_not_clipped(tmp_path):
    """Found in review: convert("RGB") clips 16-bit pixels to 0..255, so they came out almost white."""
    eight = noise_image(40, 30, mode="L")
    sixteen = Image.fromarray(np.array(eight).astype(np.uint16) * 257)  # the same picture in 16 bits
    sixteen.save(tmp_path / "g16.png")  # Pillow writes a 16-bit greyscale PNG
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode in ("I;16", "I")  # as it opens here, and in older Pillow
    want = np.array(eight.convert("RGB"))
    assert np.array_equal(np.array(load_image(tmp_path / "g16.png")), want)
    assert np.array_equal(np.array(to_rgb(Image.open(tmp_path / "g16.png").convert("I"))), want)
    # float images: 0..1, or 0..255 when Pillow converted them from 8 bits
    assert np.array_equal(np.array(to_rgb(Image.fromarray(np.array(eight) / np.float32(255)))), want)
    assert np.array_equal(np.array(to_rgb(eight.convert("F"))), want)


def test_inputs_path_array_and_pil_agree(tmp_path):
    image = noise_image(90, 60)
    image.save(tmp_path / "a.png")
    rgba = np.dstack([np.array(image), np.full((60, 90), 255, np.uint8)])
    for source in (tmp_path / "a.png", str(tmp_path / "a.png"), np.array(image), rgba, image.convert("RGBA")):
        assert np.array_equal(np.array(load_image(source)), np.array(image))
    with pytest.raises(ValueError, match="HxWx3"):
        load_image(np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        load_image(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(TypeError, match="PIL image"):
        load_image(3)
    with pytest.raises(StyleComponentsError, match="missing.png"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(StyleComponentsError, match="bad.png"):
        load_image(tmp_path / "bad.png")


def test_paths_and_opened_images_follow_exif_orientation(tmp_path):
    """Found in review: uploads (the WebUI, the API) arrive opened, and were not turned."""
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    noise_image(30, 20).save(tmp_path / "r.png", exif=exif)
    assert load_image(tmp_path / "r.png").size == (20, 30)
    with Image.open(tmp_path / "r.png") as opened:
        assert np.array_equal(np.asarray(load_image(opened)), np.asarray(load_image(tmp_path / "r.png")))


def test_colour_keyed_transparency_is_white(tmp_path):
    """Found in review: RGB and 16-bit PNGs with a transparent colour (tRNS) showed it (black)."""
    rgb = Image.new("RGB", (4, 4), (0, 0, 0))
    rgb.putpixel((1, 1), (200, 10, 10))
    rgb.save(tmp_path / "rgb.png", transparency=(0, 0, 0))
    with Image.open(tmp_path / "rgb.png") as im:
        out = load_image(im)
    assert out.getpixel((0, 0)) == (255, 255, 255) and out.getpixel((1, 1)) == (200, 10, 10)
    grey = Image.fromarray(np.full((4, 4), 0, np.uint16), "I;16")
    grey.putpixel((1, 1), 40000)
    grey.save(tmp_path / "grey16.png", transparency=0)
    out = load_image(tmp_path / "grey16.png")
    assert out.getpixel((0, 0)) == (255, 255, 255) and out.getpixel((1, 1)) != (255, 255, 255)


def test_unreadable_images_are_one_clear_error(tmp_path, monkeypatch):
    """Found in review: a truncated upload failed at its first pixel access with a raw OSError, and
    an image over Pillow's decompression-bomb limit escaped as its own error type."""
    noise_image(64, 64).save(tmp_path / "a.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "a.png").read_bytes()[:200])
    with Image.open(tmp_path / "cut.png") as im, pytest.raises(StyleComponentsError, match="cannot read the image"):
        load_image(im)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 64 x 64 is then over twice the limit: a "bomb"
    with pytest.raises(StyleComponentsError, match="a.png: cannot read the image"):
        load_image(tmp_path / "a.png")
    with pytest.raises(ValueError, match="not empty"):
        load_image(np.zeros((0, 5, 3), np.uint8))


def test_the_icon_rule_sees_an_icon_as_the_dataset_rasterises_it(tmp_path):
    """Found in review: iconN cropped the centre of a non-square icon (bicubic), while training saw
    the whole icon fitted on white (LANCZOS): a 96x48 icon moved 1.6 sliders."""
    from style_components.train.dataset import rasterise
    for mode, tolerance in (("RGB", 0), ("RGBA", 3)):  # (alpha: composited before or after resizing, rounding apart)
        noise_image(96, 48, mode=mode).save(tmp_path / "wide.png")
        trained = rasterise(tmp_path / "wide.png", 64).astype(int)
        extracted = np.asarray(PREPROCESS["icon64"](load_image(tmp_path / "wide.png"))).astype(int)
        assert np.abs(extracted - trained).max() <= tolerance, mode


# --- extractor files ---------------------------------------------------------------------------

def tiny_model(**overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(ARCH, pretrained=False, **{**KWARGS, **overrides}).eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model = tiny_model()
    path = tmp_path_factory.mktemp("extractor") / "tiny.safetensors"
    Extractor.save(model, path, ARCH, KWARGS, "v0.3", name="tiny test")
    return path, model


@pytest.fixture
def extractor(saved):
    return Extractor.load(saved[0])


def count_forwards(extractor: Extractor) -> list[int]:
    calls = [0]
    extractor.model.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_tiny_backbone_takes_variable_sizes():
    model = tiny_model()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 56, 98)).shape == (1, 64)
        assert model(torch.randn(1, 3, 476, 952)).shape == (1, 64)


def test_round_trip_gives_the_original_modules_embeddings(saved, extractor):
    path, model = saved
    assert (extractor.dim, extractor.preprocess, extractor.name) == (64, "v0.3", "tiny test")
    assert extractor.model is not model
    for size in [(640, 960), (1200, 500), (20, 300)]:
        image = noise_image(*size, seed=size[1])
        with torch.no_grad():
            expected = model(preprocess_image(image, "v0.3").unsqueeze(0))[0]
        got = extractor.embed_one(image)
        assert got.shape == (64,) and got.dtype == torch.float32
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_embed_each_reads_batch_by_batch_and_matches_embed_one(extractor, monkeypatch):
    """Training embeds every image of a dataset: images are preprocessed one batch at a time
    (not all held in memory first), and a batch of mixed v0.3 sizes runs image by image."""
    from style_components import extract
    images = [noise_image(64, 64, 1), noise_image(64, 64, 2), noise_image(96, 48, 3), noise_image(64, 64, 4),
              noise_image(64, 64, 5)]
    loaded, loaded_at_forward = [], []
    monkeypatch.setattr(extract, "load_image", lambda im, real=extract.load_image: loaded.append(1) or real(im))
    extractor.model.register_forward_hook(lambda *_: loaded_at_forward.append(len(loaded)))
    got = extractor.embed_each(images, batch=2)
    assert loaded_at_forward == [2, 4, 4, 5]  # [1, 2] stacked; [3] and [4] alone (sizes differ); [5]
    want = torch.stack([extractor.embed_one(im) for im in images])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert extractor.embed_each([]).shape == (0, extractor.dim)


def test_load_in_another_dtype(saved, extractor):
    wide = Extractor.load(saved[0], dtype=torch.float64)
    assert next(wide.model.parameters()).dtype == torch.float64
    image = noise_image(300, 400)
    got = wide.embed_one(image)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, extractor.embed_one(image), atol=1e-4, rtol=1e-4)


def test_saved_mean_std_and_v02_are_used(tmp_path):
    model, mean, std = tiny_model(), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    Extractor.save(model, tmp_path / "e.safetensors", ARCH, KWARGS, "v0.2", mean=mean, std=std)
    ext = Extractor.load(tmp_path / "e.safetensors")
    assert ext.name == "e" and ext.preprocess == "v0.2"
    image = noise_image(200, 150)
    x = to_tensor(PREPROCESS["v0.2"](image), mean, std)
    assert x.shape == (3, 336, 448)
    with torch.no_grad():
        torch.testing.assert_close(ext.embed_one(image), model(x.unsqueeze(0))[0], atol=1e-6, rtol=0)


def test_embeddings_differ_between_images(extractor):
    a, b = extractor.embed_one(noise_image(300, 300, 1)), extractor.embed_one(noise_image(300, 300, 2))
    assert (a - b).norm() > 1e-2 * a.norm()


def test_weighted_mean(extractor):
    images = [noise_image(300, 200, 1), noise_image(200, 300, 2), noise_image(250, 250, 3)]
    each = torch.stack([extractor.embed_one(im) for im in images])
    w = torch.tensor([1.0, 2.0, 0.5])
    torch.testing.assert_close(extractor.embed(images, [1.0, 2.0, 0.5]),
                               (w[:, None] * each).sum(0) / w.sum(), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(extractor.embed(images), each.mean(0), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(extractor.embed(images[0]), each[0])
    assert not torch.allclose(extractor.embed(images, [1, 0, 0]), extractor.embed(images, [0, 1, 0]))


def test_zero_weight_images_are_not_run_or_read(extractor, tmp_path):
    calls = count_forwards(extractor)
    image = noise_image(123, 77)
    got = extractor.embed([image, tmp_path / "does-not-exist.png"], weights=[1, 0])
    assert calls[0] == 1
    torch.testing.assert_close(got, extractor.embed_one(image))


@pytest.mark.parametrize("weights, message", [
    ([-1, 2], "non-negative; weight 0"), ([0, 0], "positive"), ([1], "1 weights given for 2 images"),
    ([float("nan"), 1], "finite"), ([1, float("inf")], "weight 1"),
])
def test_bad_weights(extractor, weights, message):
    with pytest.raises(ValueError, match=message):
        extractor.embed([noise_image(30, 30), noise_image(40, 40)], weights)


def test_no_images(extractor):
    with pytest.raises(ValueError, match="no images"):
        extractor.embed([])


def test_cache_hits_on_equal_pixels(extractor, tmp_path):
    calls = count_forwards(extractor)
    image = noise_image(320, 240, 5)
    first = extractor.embed_one(image)
    assert calls[0] == 1
    image.save(tmp_path / "same.png")
    for same in (Image.fromarray(np.array(image)), np.array(image), tmp_path / "same.png", image.convert("RGBA")):
        torch.testing.assert_close(extractor.embed_one(same), first, atol=0, rtol=0)
    assert calls[0] == 1
    # a caller changing a result, fresh or cached, does not change the cache
    first.zero_()
    extractor.embed_one(image).zero_()
    assert extractor.embed_one(image).abs().sum() > 0 and calls[0] == 1
    changed = np.array(image)
    changed[0, 0, 0] ^= 1
    extractor.embed_one(changed)
    assert calls[0] == 2
    extractor.clear_cache()
    extractor.embed_one(image)
    assert calls[0] == 3


def test_cache_is_bounded_lru(saved):
    ext = Extractor.load(saved[0], cache_size=2)
    calls = count_forwards(ext)
    a, b, c = (noise_image(100, 100, s) for s in (1, 2, 3))
    for im in (a, b, a, c):  # a was used after b, so b is the one evicted
        ext.embed_one(im)
    assert calls[0] == 3
    ext.embed_one(a)
    ext.embed_one(c)
    assert calls[0] == 3
    ext.embed_one(b)
    assert calls[0] == 4


def test_to_moves_and_keeps_the_cache(extractor):
    calls = count_forwards(extractor)
    image = noise_image(100, 100)
    before = extractor.embed_one(image)
    extractor.to(dtype=torch.float64)
    assert extractor.dtype == torch.float64
    torch.testing.assert_close(extractor.embed_one(image), before)
    assert calls[0] == 1


# --- bad files -----------------------------------------------------------------------------

def rewrite(src, dst, tensors=None, **meta_changes):
    """Copy an extractor file with changed tensors and metadata (None removes an entry)."""
    t, meta = files.read(src)
    meta = {**meta, **meta_changes}
    files.write(dst, tensors if tensors is not None else t, {k: v for k, v in meta.items() if v is not None})
    return dst


def load_error(path) -> ModelFileError:
    with pytest.raises(ModelFileError) as info:
        Extractor.load(path)
    assert str(path) in str(info.value)
    return info.value


def test_corrupted_and_truncated_files(saved, tmp_path):
    (tmp_path / "junk.safetensors").write_bytes(b"\x13\x00garbage" * 10)
    assert "not a readable safetensors" in str(load_error(tmp_path / "junk.safetensors"))
    data = saved[0].read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    assert "not a readable safetensors" in str(load_error(tmp_path / "cut.safetensors"))
    assert "not found" in str(load_error(tmp_path / "absent.safetensors"))


def test_wrong_format(saved, tmp_path):
    from style_components.space import StyleSpace
    StyleSpace(torch.zeros(4), torch.eye(4)[:2], torch.ones(2)).save(tmp_path / "space.safetensors")
    err = load_error(tmp_path / "space.safetensors")
    assert FORMAT in str(err) and "style-components-space" in str(err)
    assert "format='none'" in str(load_error(rewrite(saved[0], tmp_path / "x.safetensors", format=None)))


@pytest.mark.parametrize("entry", ["architecture", "model_kwargs", "preprocess", "dim"])
def test_missing_metadata_entry_is_named(saved, tmp_path, entry):
    err = load_error(rewrite(saved[0], tmp_path / "m.safetensors", **{entry: None}))
    assert f"metadata entry '{entry}' is missing" in str(err)


@pytest.mark.parametrize("changes, words", [
    ({"architecture": "vit_no_such_model"}, ["'architecture'", "vit_no_such_model"]),
    ({"architecture": "hf-hub:someone/model"}, ["'architecture'", "hf-hub:someone/model"]),
    ({"model_kwargs": '{"no_such_kwarg": 1}'}, ["'model_kwargs'", "no_such_kwarg"]),
    ({"model_kwargs": "{not json"}, ["'model_kwargs'", "JSON"]),
    ({"model_kwargs": "[1]"}, ["'model_kwargs'", "JSON object"]),
    ({"preprocess": "v9"}, ["'preprocess'", "'v9'"]),
    ({"dim": "-3"}, ["'dim'", "positive integer"]),
    ({"dim": "64.5"}, ["'dim'", "positive integer"]),
    ({"mean": "[0.5, 0.5]"}, ["'mean'", "3 numbers"]),
    ({"std": "[0.5, 0, 0.5]"}, ["'std'", "positive"]),
    # timm.create_model's own loading arguments would read another file (older timm: torch.load)
    ({"model_kwargs": '{"checkpoint_path": "/tmp/side.pt"}'}, ["'model_kwargs'", "'checkpoint_path'"]),
    ({"model_kwargs": '{"pretrained_cfg_overlay": {"file": "/tmp/x.bin"}}'}, ["'pretrained_cfg_overlay'"]),
])
def test_bad_metadata_is_named(saved, tmp_path, changes, words):
    message = str(load_error(rewrite(saved[0], tmp_path / "b.safetensors", **changes)))
    for word in words:
        assert word in message


@pytest.mark.parametrize("preprocess", ["v0.3", "v0.2", "icon64"])
def test_a_fixed_size_model_must_take_its_rules_sizes(saved, tmp_path, preprocess):
    """v0.2 and v0.3 sizes vary per image; icon64 needs 64 x 64 (found in review: v0.2 and icon64
    loaded, then failed at the first image inside timm)."""
    kwargs = {**KWARGS, "dynamic_img_size": False}
    Extractor.save(tiny_model(dynamic_img_size=False), tmp_path / "s.safetensors", ARCH, kwargs, preprocess)
    assert "dynamic_img_size" in str(load_error(tmp_path / "s.safetensors"))
    kwargs = {**KWARGS, "dynamic_img_size": False, "img_size": 70}  # icon64's 64 is not whole 14 px patches
    Extractor.save(tiny_model(**kwargs), tmp_path / "t.safetensors", ARCH, kwargs, preprocess)
    assert "dynamic_img_size" in str(load_error(tmp_path / "t.safetensors"))


def test_state_dict_mismatch_names_the_key(saved, tmp_path):
    tensors, _ = files.read(saved[0])
    key = "blocks.1.attn.qkv.weight"
    missing = {k: v for k, v in tensors.items() if k != key}
    err = load_error(rewrite(saved[0], tmp_path / "1.safetensors", tensors=missing))
    assert err.key == key and "missing" in err.problem

    err = load_error(rewrite(saved[0], tmp_path / "2.safetensors", tensors={**tensors, "head.weight": torch.zeros(3, 64)}))
    assert err.key == "head.weight" and "unexpected" in err.problem

    err = load_error(rewrite(saved[0], tmp_path / "3.safetensors", tensors={**tensors, "cls_token": torch.zeros(1, 1, 32)}))
    assert err.key == "cls_token" and "[1, 1, 32]" in err.problem and "[1, 1, 64]" in err.problem

    # weights of a deeper model than model_kwargs builds
    err = load_error(rewrite(saved[0], tmp_path / "4.safetensors", model_kwargs='{"img_size": 56, "depth": 1, '
                             '"embed_dim": 64, "num_heads": 2, "num_classes": 0, "dynamic_img_size": true}'))
    assert err.key.startswith("blocks.1.")


def test_metadata_asking_for_a_huge_model_is_refused_before_it_is_built(saved, tmp_path, monkeypatch):
    """Found in review: timm built the model from the file's model_kwargs before any weight was
    compared ({"mlp_ratio": 1e7}: a 10 GB layer; more would kill the WebUI). The shapes are now
    compared on a model built on the meta device, and nothing is allocated for a file that fails."""
    from style_components import extract
    huge = json.dumps({**KWARGS, "mlp_ratio": 1e7})
    built_on = []
    real_build = extract._build_model

    def spy(*args):
        built_on.append(torch.empty(0).device.type)  # where tensors made now would live
        return real_build(*args)

    monkeypatch.setattr(extract, "_build_model", spy)
    err = load_error(rewrite(saved[0], tmp_path / "h.safetensors", model_kwargs=huge))
    assert err.key == "blocks.0.mlp.fc1.weight" and "[640000000, 64]" in err.problem
    assert built_on == ["meta"]
    Extractor.load(saved[0])  # a good file is then built for real
    assert built_on == ["meta", "meta", "cpu"]


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
def test_model_kwargs_that_break_timm_are_named(saved, tmp_path):
    err = load_error(rewrite(saved[0], tmp_path / "z.safetensors", model_kwargs=json.dumps({**KWARGS, "embed_dim": 0})))
    assert "'model_kwargs'" in str(err)


def test_weights_of_the_wrong_kind_are_named(saved, tmp_path):
    """Found in review: integer weights loaded (load_state_dict casts them) without a word."""
    tensors, _ = files.read(saved[0])
    key = "blocks.0.attn.qkv.weight"
    err = load_error(rewrite(saved[0], tmp_path / "i.safetensors", tensors={**tensors, key: tensors[key].long()}))
    assert err.key == key and "dtype torch.int64" in err.problem


def test_non_finite_weights_are_refused_and_nan_embeddings_not_cached(saved, tmp_path):
    """Found in review: an extractor with a NaN weight loaded silently; its NaN embeddings were cached."""
    tensors, _ = files.read(saved[0])
    key = "blocks.0.attn.qkv.weight"
    bad = tensors[key].clone()
    bad[0, 0] = float("nan")
    err = load_error(rewrite(saved[0], tmp_path / "n.safetensors", tensors={**tensors, key: bad}))
    assert err.key == key and "NaN" in err.problem
    # a backbone that overflows (or was damaged after loading): a clear error, nothing cached
    extractor = Extractor.load(saved[0])
    with torch.no_grad():
        extractor.model.norm.weight[0] = float("inf")
    image = noise_image(60, 60)
    for _ in range(2):  # the second call runs the model again: the first result was not cached
        with pytest.raises(ModelFileError, match="NaN or infinite"):
            extractor.embed(image)
    assert not extractor._cache
    with pytest.raises(ModelFileError, match="NaN or infinite"):
        extractor.embed_each([image])


def test_dim_that_does_not_match_the_backbone(saved, tmp_path):
    ext = Extractor.load(rewrite(saved[0], tmp_path / "d.safetensors", dim="768"))
    with pytest.raises(ModelFileError, match=r"'dim' says \[1, 768\]"):
        ext.embed_one(noise_image(50, 50))
    with pytest.raises(ModelFileError, match=r"'dim' says \[2, 768\]"):  # found in review: a raw torch.cat error
        ext.embed_each([noise_image(50, 50), noise_image(50, 50, seed=1)])


def test_extreme_weights_give_a_finite_weighted_mean(extractor):
    """Found in review: weights of 1e-50 (0 in float32) or 1e39 (inf) gave a NaN style."""
    a, b = noise_image(60, 60), noise_image(60, 60, seed=1)
    plain = extractor.embed([a, b])
    torch.testing.assert_close(extractor.embed([a, b], [1e-50, 1e-50]), plain)
    torch.testing.assert_close(extractor.embed([a, b], [1e39, 1]), extractor.embed(a))


def test_a_space_of_another_size_is_named(extractor):
    from style_components.space import StyleSpace
    space = StyleSpace(torch.zeros(32), torch.eye(32)[:4], torch.ones(4), name="other")
    with pytest.raises(ValueError, match="64 dims given, the style space 'other' describes 32-d embeddings"):
        space.to_components(extractor.embed(noise_image(50, 50)))


def test_missing_timm_is_explained(saved, monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # makes `import timm` raise ImportError
    with pytest.raises(StyleComponentsError, match="needs timm"):
        Extractor.load(saved[0])


def test_save_refuses_unknown_preprocessing(tmp_path):
    with pytest.raises(ValueError, match="unknown preprocessing"):
        Extractor.save(tiny_model(), tmp_path / "x.safetensors", ARCH, KWARGS, "v1")


# --- command line ------------------------------------------------------------------------------

def test_cli_extract_prints_the_weighted_components(saved, tmp_path, capsys):
    from style_components import cli
    from style_components.space import StyleSpace

    torch.manual_seed(1)
    basis = torch.linalg.qr(torch.randn(64, 5)).Q.T  # 5 orthonormal components of 64-d embeddings
    space = StyleSpace(torch.randn(64), basis, torch.rand(5) + 0.5, name="test space")
    space.save(tmp_path / "space.safetensors")
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    noise_image(300, 200, seed=1).save(a)
    noise_image(200, 300, seed=2).save(b)

    assert cli.main(["extract", f"{a}", f"{b}:3", "--extractor", str(saved[0]), "--space", str(tmp_path / "space.safetensors")]) == 0
    printed = [float(v) for v in capsys.readouterr().out.split(",")]
    extractor = Extractor.load(saved[0])
    want = space.to_components(extractor.embed([a, b], [1, 3]))
    assert len(printed) == 5
    torch.testing.assert_close(torch.tensor(printed), want, atol=0.005, rtol=0)


def test_cli_extract_names_a_dimension_mismatch(saved, tmp_path, capsys):
    from style_components import cli
    from style_components.space import StyleSpace

    StyleSpace(torch.zeros(32), torch.eye(32)[:3], torch.ones(3)).save(tmp_path / "space.safetensors")
    image = tmp_path / "a.png"
    noise_image(100, 100).save(image)
    assert cli.main(["extract", str(image), "--extractor", str(saved[0]), "--space", str(tmp_path / "space.safetensors")]) == 2
    assert "gives 64-d embeddings" in capsys.readouterr().err


def test_shipped_demo_extractor_loads_from_the_core_alone():
    """models/demo's encoder names the project's own architecture and icon128 rule; no training import needed."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    code = ("import sys; from style_components.extract import Extractor; from PIL import Image; "
            "e = Extractor.load('models/demo/icon_style_extractor.safetensors'); "
            "v = e.embed(Image.new('RGB', (48, 48), (200, 30, 30))); "
            "assert 'style_components.train' not in sys.modules; print(e.preprocess, v.shape[0])")
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["icon128", "128"]
