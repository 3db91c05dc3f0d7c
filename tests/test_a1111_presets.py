"""Style presets built from image sets (the extension tab's core)."""

import pytest
import torch
from PIL import Image

import a1111_env
from style_components import presets
from style_components.errors import StyleComponentsError


class FakeExtractor:
    """Embeds an image as a fixed vector per colour; the weighted mean, as Extractor.embed does."""

    def __init__(self, space):
        self.space, self.calls = space, []

    def embed(self, images, weights):
        self.calls.append((len(images), weights))
        embs = torch.stack([self.space.to_embedding(torch.full((30,), Image.open(i).getpixel((0, 0))[0] / 100))
                            for i in images])
        w = torch.tensor(weights or [1.0] * len(images))
        return (embs * w[:, None]).sum(0) / w.sum()


def test_build_save_list_rename_delete(tmp_path):
    space = a1111_env.make_space(30, 64)
    src = tmp_path / "images"
    src.mkdir()
    Image.new("RGB", (8, 8), (100, 0, 0)).save(src / "a.png")
    Image.new("RGB", (8, 8), (200, 0, 0)).save(src / "b.jpg")
    (src / "notes.txt").write_text("not an image")
    images = presets.images_in(src)
    assert [p.name for p in images] == ["a.png", "b.jpg"]
    comps = presets.build(FakeExtractor(space), space, images, [1, 3])
    assert comps == pytest.approx([1.75] * 30, abs=1e-4)  # (1*1 + 3*2) / 4

    folder = tmp_path / "presets"
    saved = presets.save(folder, "Warm oils", comps, model="demo", source="2 images")
    assert saved == presets.load(folder / "Warm oils.style.safetensors")
    presets.save(folder, "other", [0.0] * 30, model="xl")
    assert [p.name for p in presets.list_presets(folder, model="demo")] == ["Warm oils"]
    with pytest.raises(StyleComponentsError, match="already exists"):
        presets.save(folder, "Warm oils", comps)
    presets.rename(folder, "Warm oils", "Cool oils")
    assert [p.name for p in presets.list_presets(folder)] == ["Cool oils", "other"]
    assert presets.find(folder, "Cool oils").components == saved.components
    presets.delete(folder, "other")
    assert [p.name for p in presets.list_presets(folder)] == ["Cool oils"]
    with pytest.raises(StyleComponentsError, match="not found"):
        presets.delete(folder, "other")


def test_a_preset_is_its_file(tmp_path):
    """Found in review: presets were named by their metadata, so a file kept under another name by
    hand listed twice under the old name, and Delete removed the wrong one."""
    saved = presets.save(tmp_path, "anime", [1.0, 1.0])
    saved.path.rename(tmp_path / "anime old.style.safetensors")
    presets.save(tmp_path, "anime", [2.0, 2.0])
    assert sorted((p.name, p.components) for p in presets.list_presets(tmp_path)) == [("anime", (2.0, 2.0)),
                                                                                     ("anime old", (1.0, 1.0))]
    presets.delete(tmp_path, "anime")
    assert [p.name for p in presets.list_presets(tmp_path)] == ["anime old"]


@pytest.mark.parametrize("bad", ["", "../escape", "a/b", ".hidden", "x" * 101, "name.",
                                 "\u98a8" * 80,  # 80 characters, 240 bytes: past what file names take
                                 "CON", "nul.x", "Com1"])
def test_unsafe_names_are_refused(tmp_path, bad):
    with pytest.raises(StyleComponentsError, match="preset name"):
        presets.save(tmp_path, bad, [0.0])


def test_folder_without_images_is_a_clear_error(tmp_path):
    with pytest.raises(StyleComponentsError, match="no images"):
        presets.images_in(tmp_path)


def test_a_reference_folder_takes_what_a_training_folder_takes(tmp_path):
    """One list of image suffixes: a TIFF the trainer reads is also a reference image; other files are not."""
    from PIL import Image

    for name in ("a.png", "b.TIF", "c.tiff", "d.webp"):
        Image.new("RGB", (8, 8), "red").save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    assert [p.name for p in presets.images_in(tmp_path)] == ["a.png", "b.TIF", "c.tiff", "d.webp"]


@pytest.mark.parametrize("values", [[0.5, float("nan")], [float("inf")], [1e39], []])
def test_values_that_would_not_load_are_refused_before_writing(tmp_path, values):
    """Found in review: a preset with NaN was written, then failed to load: a file left behind that
    the list silently skips."""
    with pytest.raises(StyleComponentsError, match="finite numbers"):
        presets.save(tmp_path, "broken", values)
    assert list(tmp_path.iterdir()) == []


def test_an_interrupted_save_keeps_the_old_preset(tmp_path, monkeypatch):
    import safetensors.torch

    def failing_write(tensors, path, metadata=None):  # disk full half way
        open(path, "wb").write(b"partial")
        raise OSError("No space left on device")

    old = presets.save(tmp_path, "Warm oils", [1.0, 2.0])
    monkeypatch.setattr(safetensors.torch, "save_file", failing_write)
    with pytest.raises(OSError):
        presets.save(tmp_path, "Warm oils", [3.0, 4.0], overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["Warm oils.style.safetensors"]  # no temporary left
    assert presets.load(old.path).components == (1.0, 2.0)
