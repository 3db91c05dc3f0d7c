"""Your own artists: `style-components dataset OUT --images FOLDER` (one sub-folder per artist),
then the same train / evaluate / pca / atlas commands as for the icon themes, through the real CLI."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from icon_fixture import STYLES, SUBJECTS, draw_icon, tiny_encoder_args
from style_components import cli
from style_components.extract import Extractor
from style_components.space import StyleSpace
from style_components.train import dataset

TINY = tiny_encoder_args(3)


def _artwork(shape, style, size=40, wide=False):
    """A drawn picture on an opaque background (artworks rarely have alpha), some not square."""
    icon = draw_icon(shape, style, size)
    canvas = Image.new("RGB", (size * 3 // 2 if wide else size, size), (240, 235, 220))
    canvas.paste(icon, (0, 0), icon)
    return canvas


@pytest.fixture(scope="module")
def artists(tmp_path_factory):
    """my_images/<artist>/: three artists drawing 14 subjects each (as PNG and JPEG; carol's in a
    linked folder, bob's half in a year sub-folder), plus what a real folder holds: a copy of one
    picture in another artist's folder, a picture saved twice in one folder, a broken file, a
    hidden folder, pictures left in the root, and an artist with a single picture."""
    root = tmp_path_factory.mktemp("my_images")
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    for artist, style in zip(("alice", "bob", "carol"), list(STYLES.values())):
        folder = elsewhere / artist if artist == "carol" else root / artist
        folder.mkdir()
        for i, shape in enumerate(SUBJECTS.values()):
            suffix = ".jpg" if i % 3 == 0 else ".png"
            sub = folder / "2019" if artist == "bob" and i >= 7 else folder
            sub.mkdir(exist_ok=True)
            _artwork(shape, style, wide=i % 4 == 0).save(sub / f"picture {i:02d}{suffix}", quality=95)
    (root / "carol").symlink_to(elsewhere / "carol", target_is_directory=True)
    _artwork("disc", STYLES["Alpha"]).save(root / "loose.png")
    (root / "bob" / "picture 01.png").replace(root / "bob" / "from alice.png")
    Image.open(root / "alice" / "picture 01.png").save(root / "bob" / "from alice.png")   # the same pixels as alice's
    Image.open(root / "carol" / "picture 02.png").save(root / "carol" / "picture 02 (copy).png")
    (root / "carol" / "loop").symlink_to(root, target_is_directory=True)  # a link back up: read once
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
    # dave (one picture), .cache and the root's loose picture are not artists; bob/2019 is bob's
    assert data.themes == ["alice", "bob", "carol"]
    assert stats["skipped_artists"] == ["dave"] and stats["skipped_unreadable"] == [str(artists / "carol/broken.png")]
    assert stats["skipped_loose_images"] == [str(artists / "loose.png")]
    assert stats["dropped_identical_across_themes"] == 2       # alice's picture 01 and bob's copy of it
    assert stats["dropped_copies_within_theme"] == 1           # carol's picture 02, saved twice
    names = {(data.themes[t], n) for t, n in zip(data.labels, data.names)}
    assert ("alice", "alice/picture 01") not in names and ("bob", "bob/from alice") not in names
    assert ("bob", "bob/2019/picture 10") in names and ("carol", "carol/picture 03") in names
    assert stats["images_per_theme"] == {"alice": 13, "bob": 13, "carol": 14} and stats["images"] == 40
    # pixels: each picture fitted whole in the square on the background, as iconN extraction fits a reference
    row = next(r for r in data.rows if r["theme"] == "alice" and r["name"] == "alice/picture 00")  # a wide one
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
    assert report["encoder"]["content_probe"]["accuracy"] is None  # names are per artist: no shared subject
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
    assert cli.main(["dataset", str(out), "--images", str(lone), "--heldout-every", "1"]) == 2
    assert "every image would be held out" in capsys.readouterr().err
    assert not np.any([p.exists() for p in (out / "manifest.jsonl", out / "shards")])


def test_pictures_are_read_as_extraction_reads_a_reference(tmp_path):
    """Found in review: the icon rasteriser clipped 16-bit pictures to white and ignored EXIF
    turns, where extraction (load_image) scales and turns them."""
    from style_components.extract import fit_icon, load_image
    from style_components.train.config import BACKGROUND
    ramp = Image.fromarray((np.linspace(0, 65535, 40 * 40).reshape(40, 40)).astype(np.uint16))
    ramp.save(tmp_path / "grey16.png")
    turned = _artwork("arrow", STYLES["Alpha"], wide=True)  # 60 x 40
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: turn 90 degrees to view
    turned.save(tmp_path / "turned.jpg", exif=exif, quality=95)
    for name in ("grey16.png", "turned.jpg"):
        ours = dataset._artwork(tmp_path / name, 32)
        assert np.array_equal(ours, np.asarray(fit_icon(load_image(tmp_path / name), 32, BACKGROUND)))
    assert 100 < dataset._artwork(tmp_path / "grey16.png", 32).mean() < 160  # a ramp, not white
    upright = dataset._artwork(tmp_path / "turned.jpg", 32)
    assert (upright[:, 0] == 255).all() and not (upright[0] == 255).all()  # tall once turned: side bars
