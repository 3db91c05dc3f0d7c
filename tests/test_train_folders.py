"""Your own artists: `style-components dataset OUT --images FOLDER` (one sub-folder per artist),
then the same train / evaluate / pca / atlas commands as for the icon themes, through the real CLI."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from icon_fixture import STYLES, SUBJECTS, draw_icon
from style_components import cli
from style_components.extract import Extractor
from style_components.space import StyleSpace
from style_components.train import dataset

TINY = ["--width", "8", "--dim", "16", "--batch-themes", "3", "--per-theme", "2", "--no-progress", "--cpu"]


def _artwork(shape, style, size=40, wide=False):
    """A drawn picture on an opaque background (artworks rarely have alpha), some not square."""
    icon = draw_icon(shape, style, size)
    canvas = Image.new("RGB", (size * 3 // 2 if wide else size, size), (240, 235, 220))
    canvas.paste(icon, (0, 0), icon)
    return canvas


@pytest.fixture(scope="module")
def artists(tmp_path_factory):
    """my_images/<artist>/: three artists drawing 14 subjects each (as PNG and JPEG), plus what a
    real folder holds: a copy of one picture in another artist's folder, a picture saved twice
    in one folder, a broken file, a hidden folder, and an artist with a single picture."""
    root = tmp_path_factory.mktemp("my_images")
    for artist, style in zip(("alice", "bob", "carol"), list(STYLES.values())):
        (root / artist).mkdir()
        for i, shape in enumerate(SUBJECTS.values()):
            suffix = ".jpg" if i % 3 == 0 else ".png"
            _artwork(shape, style, wide=i % 4 == 0).save(root / artist / f"picture {i:02d}{suffix}", quality=95)
    (root / "bob" / "picture 01.png").replace(root / "bob" / "from alice.png")
    Image.open(root / "alice" / "picture 01.png").save(root / "bob" / "from alice.png")   # the same pixels as alice's
    Image.open(root / "carol" / "picture 02.png").save(root / "carol" / "picture 02 (copy).png")
    (root / "carol" / "broken.png").write_bytes(b"not an image")
    (root / ".cache").mkdir()
    _artwork("disc", STYLES["Delta"]).save(root / ".cache" / "thumb.png")
    (root / "dave").mkdir()
    _artwork("disc", STYLES["Delta"]).save(root / "dave" / "only.png")
    return root


@pytest.fixture(scope="module")
def built(artists, tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    assert cli.main(["dataset", str(out), "--images", str(artists), "--size", "64", "--heldout-every", "4",
                     "--workers", "1"]) == 0
    return out


def test_each_folder_is_an_artist_and_what_cannot_be_told_apart_is_dropped(built, artists):
    stats = json.loads((built / "dataset.json").read_text())
    data = dataset.load(built)
    assert data.themes == ["alice", "bob", "carol"]  # dave (one picture) and .cache are not artists
    assert stats["skipped_artists"] == ["dave"] and stats["skipped_unreadable"] == [str(artists / "carol/broken.png")]
    assert stats["dropped_identical_across_themes"] == 2       # alice's picture 01 and bob's copy of it
    assert stats["dropped_copies_within_theme"] == 1           # carol's picture 02, saved twice
    names = {(data.themes[t], n) for t, n in zip(data.labels, data.names)}
    assert ("alice", "picture 01") not in names and ("bob", "from alice") not in names
    assert stats["images_per_theme"] == {"alice": 13, "bob": 13, "carol": 14} and stats["images"] == 40
    # pixels: each picture fitted whole in the square on the background, as iconN extraction fits a reference
    row = next(r for r in data.rows if r["theme"] == "alice" and r["name"] == "picture 00")  # a wide one
    assert data.images[data.rows.index(row)].shape == (64, 64, 3)
    assert (data.images[data.rows.index(row)][0] == 255).all()  # letterboxed: the top row is background
    pixels = [data.images[data.rows.index(r)] for r in data.rows if r["source_sha256"] == row["source_sha256"]]
    assert len(pixels) == 1


def test_every_nth_picture_of_each_artist_is_held_out_by_file_hash(built):
    data = dataset.load(built)
    for t, artist in enumerate(data.themes):
        rows = [r for r, label in zip(data.rows, data.labels) if label == t]
        by_hash = sorted(rows, key=lambda r: r["source_sha256"])
        assert [r["heldout"] for r in by_hash] == [i % 4 == 0 for i in range(len(rows))]
    assert 0 < data.heldout.sum() < len(data.heldout) and data.heldout.sum() == 12


def test_the_icon_pipeline_trains_and_evaluates_on_your_artists(built, tmp_path):
    run = tmp_path / "run"
    assert cli.main(["train", str(built), str(run), "--steps", "2", "--eval-every", "2", *TINY]) == 0
    ext = str(run / "extractor.safetensors")
    assert cli.main(["evaluate", str(built), ext, "--out", str(tmp_path / "report.json")]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["split"]["query_images"] == 12 and report["split"]["gallery_images"] == 28
    held = {r["name"] for r in dataset.load(built).rows if r["heldout"]}
    assert set(report["split"]["heldout_families"]) == held  # each held-out picture is its own unit
    assert set(report["encoder"]["per_theme_recall"]) == {"alice", "bob", "carol"}
    assert report["encoder"]["content_probe"]["accuracy"] is None  # no subject shared across artists: no probe
    space_path = tmp_path / "space.safetensors"
    assert cli.main(["pca", str(built), ext, str(space_path), "--max-k", "3"]) == 0
    assert 1 <= StyleSpace.load(space_path).k <= 3
    assert cli.main(["atlas", str(built), ext, str(space_path), str(tmp_path / "atlas"), "--n", "2"]) == 0
    assert (tmp_path / "atlas" / "component_01.png").is_file()
    # a reference picture extracted at run time sees what training saw (a dataset built at the
    # encoder's side): the same fitted square
    data = dataset.load(built)
    i = next(i for i, r in enumerate(data.rows) if r["path"].endswith(".png"))
    ex = Extractor.load(ext)
    from_file = ex.embed_one(data.rows[i]["path"]).float()
    from_dataset = ex.embed_one(data.images[i]).float()
    assert torch.equal(from_file, from_dataset)


def test_a_folder_without_two_artists_says_so_and_writes_nothing(tmp_path, capsys):
    lone = tmp_path / "one_artist" / "alice"
    lone.mkdir(parents=True)
    for i, shape in enumerate(list(SUBJECTS.values())[:3]):
        _artwork(shape, STYLES["Alpha"]).save(lone / f"{i}.png")
    out = tmp_path / "data"
    assert cli.main(["dataset", str(out), "--images", str(tmp_path / "one_artist")]) == 2
    err = capsys.readouterr().err
    assert "1 artist folder(s) with 2 or more distinct images" in err and "nothing written" in err
    assert not out.exists()
    assert cli.main(["dataset", str(out), "--images", str(tmp_path / "nowhere")]) == 2
    assert "nowhere: not a folder" in capsys.readouterr().err
    assert cli.main(["dataset", str(out), "--images", str(lone), "--theme", "a=Alpha"]) == 2
    assert "--images and --theme" in capsys.readouterr().err
    assert not np.any([p.exists() for p in (out / "manifest.jsonl", out / "shards")])
