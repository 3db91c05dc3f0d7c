"""Style datasets: freedesktop icon themes as "artists" drawing the same named subjects, or
your own artists' images, one sub-folder each.

Build it (reads installed themes, installs nothing; see tools/install_icon_themes.sh):

    python -m style_components.train.dataset OUT_DIR [--root /usr/share/icons] [--size 64]
    style-components dataset OUT_DIR ...
    style-components dataset OUT_DIR --images my_images/ --size 128   # my_images/<artist>/*.png

From folders: the sub-folder of --images that an image is in (at any depth) is its artist, as
the adapter trainer's `--reference group` reads them; each image is read and fitted whole in
the square on the background as `iconN` extraction reads a reference; identical images are
dropped as for icons; every `heldout_every`-th image of an artist, in the order of the files'
hashes, is held out for evaluation: there is no shared subject to hold out by name.

Rules (each measured to matter on the Debian themes):
- a package installs several theme folders (dark/light variants inheriting from the main one):
  its main folder is the one its siblings inherit from, else the one with most own icons;
- only a theme's own files count (no `Inherits=`, no symlinks leading out of its folder);
- symbolic (monochrome) icons are skipped, so are HiDPI (`Scale=2`) copies;
- per icon name, the source closest to the target size is rasterised (exact size, then
  scalable SVG, then the smallest larger PNG, then the largest smaller one), SVG with
  `rsvg-convert`, PNG with Pillow, composited on a fixed background;
- images whose pixels occur in more than one theme are dropped everywhere (derived themes
  ship identical files); within a theme, an image shared by aliases is kept once;
- only names drawn by at least `min_themes` themes are kept, so content is shared.

Output: `manifest.jsonl` (one row per image: theme, name, family, heldout, path, source
sha256, shard, index), `shards/images_NNNNN.npy` (uint8 [n, S, S, 3]), `dataset.json` (stats).
"""

from __future__ import annotations

import argparse
import configparser
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
from PIL import Image

from ..errors import StyleComponentsError, UsageError
from ..extract import fit_icon
from ..presets import IMAGE_SUFFIXES
from . import config

EXTENSIONS = (".svg", ".png")


# --- index.theme ---------------------------------------------------------------------------

@dataclass(frozen=True)
class ThemeIndex:
    folder: Path
    name: str
    inherits: tuple[str, ...]
    directories: dict  # subdir -> {"size": int, "type": str, "scale": int, "context": str}


def read_index(folder: Path) -> ThemeIndex | None:
    """Parse `folder/index.theme`; None when the folder is not an icon theme."""
    path = Path(folder) / "index.theme"
    if not path.is_file():
        return None
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # keys are case-sensitive in the spec
    try:
        parser.read_string(path.read_text(encoding="utf-8", errors="replace"))
    except configparser.Error:
        return None
    if not parser.has_section("Icon Theme"):
        return None
    head = parser["Icon Theme"]
    inherits = tuple(s.strip() for s in head.get("Inherits", "").split(",") if s.strip())
    subdirs = [s.strip() for s in head.get("Directories", "").split(",") if s.strip()]
    directories = {}
    for sub in subdirs:
        sec = parser[sub] if parser.has_section(sub) else {}
        try:
            size = int(sec.get("Size", "0"))
            scale = int(sec.get("Scale", "1"))
        except ValueError:
            continue
        directories[sub] = {"size": size, "type": sec.get("Type", "Threshold"), "scale": scale,
                            "context": sec.get("Context", "")}
    return ThemeIndex(Path(folder), head.get("Name", Path(folder).name), inherits, directories)


def package_folders(package: str, root: Path) -> list[Path]:
    """Theme folders (with an index.theme) that a Debian package installs under `root`."""
    out = subprocess.run(["dpkg-query", "-L", package], capture_output=True, text=True)
    if out.returncode != 0:
        raise UsageError(f"package {package} is not installed (run tools/install_icon_themes.sh)")
    folders = []
    for line in out.stdout.splitlines():
        p = Path(line)
        if p.name == "index.theme" and p.parent.parent == Path(root):
            folders.append(p.parent)
    return sorted(folders)


@dataclass(frozen=True)
class Source:
    name: str        # icon name (file stem)
    path: Path
    size: int        # nominal size of its directory
    scalable: bool


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def own_icons(index: ThemeIndex) -> list[Source]:
    """The theme's own, non-symbolic, scale-1 icon files listed in its index.theme."""
    sources = []
    for sub, info in index.directories.items():
        if info["scale"] != 1 or "symbolic" in sub.lower():
            continue
        d = index.folder / sub
        if not d.is_dir():
            continue
        for f in sorted(d.iterdir()):
            if f.suffix.lower() not in EXTENSIONS or f.stem.endswith("-symbolic"):
                continue
            if not f.exists() or not _inside(f, index.folder):  # dangling, or another theme's file
                continue
            scalable = info["type"] == "Scalable" or f.suffix.lower() == ".svg"
            sources.append(Source(f.stem, f, info["size"], scalable))
    return sources


def choose_main(folders: Sequence[Path]) -> Path:
    """The main theme folder among those one package installs.

    The folder its siblings inherit from (most often); else the one with most own icons
    (dark/light variants are mostly symlinks into the main one); ties: shortest name.
    """
    indexes = [i for i in (read_index(f) for f in folders) if i is not None]
    if not indexes:
        raise UsageError(f"no index.theme in {', '.join(map(str, folders))}" if folders else "no theme folders")
    names = {i.folder.name: i for i in indexes}
    inherited = Counter(p for i in indexes for p in i.inherits if p in names and p != i.folder.name)
    if inherited:
        top = max(inherited.values())
        return names[sorted((n for n, c in inherited.items() if c == top), key=lambda n: (len(n), n))[0]].folder
    counts = {i.folder.name: len(own_icons(i)) for i in indexes}
    best = max(counts.values())
    return names[sorted((n for n, c in counts.items() if c == best), key=lambda n: (len(n), n))[0]].folder


def pick_source(candidates: Iterable[Source], size: int) -> Source:
    """Exact size first, then scalable SVG, then the smallest larger PNG, then the largest smaller."""
    def rank(s: Source):
        if s.size == size and not (s.scalable and s.path.suffix.lower() == ".svg" and s.size < size):
            return (0, 0, str(s.path))
        if s.scalable and s.path.suffix.lower() == ".svg":
            return (1, -s.size, str(s.path))
        if s.size > size:
            return (2, s.size, str(s.path))
        return (3, -s.size, str(s.path))
    return min(candidates, key=rank)


# --- rasterising ---------------------------------------------------------------------------

def rasterise(path: Path, size: int, background=config.BACKGROUND) -> np.ndarray:
    """Icon file -> uint8 [size, size, 3]: fitted in the square, centred, on `background`."""
    if path.suffix.lower() == ".svg":
        exe = shutil.which("rsvg-convert")
        if exe is None:
            raise StyleComponentsError("rsvg-convert not found: install librsvg2-bin (tools/install_icon_themes.sh)")
        out = subprocess.run([exe, "-w", str(size), "-h", str(size), "--keep-aspect-ratio", str(path)],
                             capture_output=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"rsvg-convert failed on {path}: {out.stderr.decode(errors='replace')[:200]}")
        image = Image.open(io.BytesIO(out.stdout))
    else:
        image = Image.open(path)
    image.load()
    return np.asarray(fit_icon(image, size, background), dtype=np.uint8)


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# --- building ------------------------------------------------------------------------------

def build(out_dir, themes: Mapping[str, Sequence[Path]], size: int = config.IMAGE_SIZE,
          min_themes: int = config.MIN_THEMES, workers: int = 2, shard_size: int = config.SHARD_SIZE,
          log=print) -> dict:
    """Build the dataset from `themes`: label -> the theme folders its package installs.

    Returns the stats written to dataset.json.
    """
    out_dir = Path(out_dir)
    mains = {}
    for label, folders in themes.items():
        try:
            mains[label] = choose_main(folders)
        except UsageError as e:
            raise UsageError(f"theme {label!r}: {e}") from None
    per_theme: dict[str, dict[str, Source]] = {}
    for label, folder in mains.items():
        by_name = defaultdict(list)
        for s in own_icons(read_index(folder)):
            by_name[s.name].append(s)
        per_theme[label] = {n: pick_source(c, size) for n, c in by_name.items()}
        log(f"{label}: main folder {folder} ({len(per_theme[label])} own non-symbolic names)")

    # Pre-filter: a name must at least be present in min_themes themes before any rendering.
    present = Counter(n for names in per_theme.values() for n in names)
    wanted = [(label, n, src) for label, names in sorted(per_theme.items())
              for n, src in sorted(names.items()) if present[n] >= min_themes]
    log(f"rasterising {len(wanted)} icons ({sum(1 for c in present.values() if c >= min_themes)} names "
        f"in >= {min_themes} themes before dropping duplicates)")

    if any(src.path.suffix.lower() == ".svg" for _, _, src in wanted) and shutil.which("rsvg-convert") is None:
        # before rendering: without it every SVG would be skipped one by one, and the themes drawn
        # in SVG would silently vanish from the dataset
        raise UsageError("rsvg-convert not found, and these themes draw in SVG: install librsvg2-bin "
                         f"(tools/install_icon_themes.sh); nothing written to {out_dir}")
    rows, unreadable = _render([(label, n, src.path) for label, n, src in wanted],
                               lambda path: rasterise(path, size), workers, log)
    rows, dropped_shared = _drop_shared(rows)
    # Names drawn (distinctly from other themes) by at least min_themes themes: the shared content.
    count = Counter(r["name"] for r in rows)
    rows = [r for r in rows if count[r["name"]] >= min_themes]
    # Within a theme, aliases drawn with one image: keep one copy, a held-out name first (so that no
    # evaluation image is also a training image), then the most widely drawn name.
    rows.sort(key=lambda r: (r["theme"], not config.is_heldout(r["name"]), -count[r["name"]], r["name"]))
    seen, kept, dropped_alias = set(), [], 0
    for r in rows:
        key = (r["theme"], r["pixel_sha256"])
        if key in seen:
            dropped_alias += 1
            continue
        seen.add(key)
        kept.append(r)
    rows = sorted(kept, key=lambda r: (r["theme"], r["name"]))
    if not rows:  # before anything in OUT is replaced: a mistyped --theme must not wipe a dataset
        raise UsageError(f"no icon name is drawn by {min_themes} or more of the {len(mains)} themes "
                         f"(--min-themes); nothing written to {out_dir}")
    for r in rows:
        r["family"], r["heldout"] = config.family(r["name"]), config.is_heldout(r["name"])

    names = sorted({r["name"] for r in rows})
    stats = {
        "size": size, "min_themes": min_themes, "background": list(config.BACKGROUND),
        "themes": {label: str(folder) for label, folder in mains.items()},
        "images": len(rows), "names": len(names),
        "families": len({config.family(n) for n in names}),
        "heldout_names": sum(config.is_heldout(n) for n in names),
        "heldout_families": len({config.family(n) for n in names if config.is_heldout(n)}),
        "heldout_images": sum(r["heldout"] for r in rows),
        "images_per_theme": dict(sorted(Counter(r["theme"] for r in rows).items())),
        "dropped_identical_across_themes": dropped_shared, "dropped_aliases_within_theme": dropped_alias,
        "names_in_at_least_16_themes": sum(1 for c in Counter(r["name"] for r in rows).values() if c >= 16),
        "skipped_unreadable": sorted(unreadable),
    }
    _write(out_dir, rows, stats, shard_size)
    log(f"wrote {out_dir}: {stats['images']} images, {stats['names']} names, {stats['families']} families "
        f"({stats['heldout_families']} held out, {stats['heldout_images']} images)"
        + (f"; {len(unreadable)} unreadable files skipped (dataset.json lists them)" if unreadable else ""))
    return stats


def build_from_folders(out_dir, images_dir, size: int = config.IMAGE_SIZE, heldout_every: int = 10,
                       workers: int = 2, shard_size: int = config.SHARD_SIZE, log=print) -> dict:
    """Build the dataset from your own artists: `images_dir/<artist>/...` (module docstring)."""
    images_dir, out_dir = Path(images_dir), Path(out_dir)
    if heldout_every < 2:
        raise UsageError(f"--heldout-every {heldout_every}: every image would be held out, none left to train on")
    paths = image_files(images_dir)
    loose = {p for p in paths if artist_of(p, images_dir) is None}
    if loose:
        log(f"skipped {len(loose)} images directly in {images_dir}: an artist's images go in its sub-folder")
    rows, unreadable = _render([(artist_of(p, images_dir), p.relative_to(images_dir).with_suffix("").as_posix(), p)
                                for p in paths if p not in loose], lambda path: _artwork(path, size), workers, log)
    rows, dropped_shared = _drop_shared(rows)
    by_artist, seen, dropped_copies = defaultdict(list), set(), 0
    for r in sorted(rows, key=lambda r: (r["theme"], r["source_sha256"], r["path"])):
        if (r["theme"], r["pixel_sha256"]) in seen:
            dropped_copies += 1  # the same image twice in one artist's folder: once is enough
            continue
        seen.add((r["theme"], r["pixel_sha256"]))
        by_artist[r["theme"]].append(r)
    lone = sorted(a for a, rs in by_artist.items() if len(rs) < 2)
    if lone:
        log(f"skipped artists with fewer than 2 images (nothing to train on beside a held-out one): {', '.join(lone)}")
    rows = []
    for artist, kept in sorted(by_artist.items()):
        if artist in lone:
            continue
        for i, r in enumerate(kept):  # in the order of the files' hashes: the same files, the same split
            r["family"], r["heldout"] = r["name"], i % heldout_every == 0
            rows.append(r)
    artists = sorted({r["theme"] for r in rows})
    if len(artists) < 2:  # before anything in OUT is replaced
        raise UsageError(f"{images_dir}: {len(artists)} artist folder(s) with 2 or more distinct images; a style "
                         f"encoder needs 2 or more (one sub-folder per artist); nothing written to {out_dir}")
    stats = {
        "size": size, "background": list(config.BACKGROUND), "images_dir": str(images_dir),
        "heldout_every": heldout_every, "themes": {a: str(images_dir / a) for a in artists},
        "images": len(rows), "heldout_images": sum(r["heldout"] for r in rows),
        "images_per_theme": dict(Counter(r["theme"] for r in rows)),
        "dropped_identical_across_themes": dropped_shared, "dropped_copies_within_theme": dropped_copies,
        "skipped_artists": lone, "skipped_loose_images": sorted(map(str, loose)),
        "skipped_unreadable": sorted(unreadable),
    }
    _write(out_dir, sorted(rows, key=lambda r: (r["theme"], r["name"])), stats, shard_size)
    log(f"wrote {out_dir}: {stats['images']} images of {len(artists)} artists ({stats['heldout_images']} held out)"
        + (f"; {len(unreadable)} unreadable files skipped (dataset.json lists them)" if unreadable else ""))
    return stats


def artist_of(path, root) -> str | None:
    """An image's artist: the sub-folder of `root` it is in, at any depth (`root/alice/2019/x.png`
    is alice's); None for an image in `root` itself."""
    parts = Path(path).relative_to(root).parts
    return parts[0] if len(parts) > 1 else None


def image_files(folder) -> list[Path]:
    """Image paths (sorted), following linked folders; hidden files and folders (.ipynb_checkpoints,
    ...) are skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"{folder}: not a folder")
    paths, visited = [], set()
    for here, dirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(here)
        if real in visited:  # a link back up the tree
            dirs.clear()
            continue
        visited.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        paths += [Path(here) / n for n in names if not n.startswith(".") and Path(n).suffix.lower() in IMAGE_SUFFIXES]
    if not paths:
        raise UsageError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return sorted(paths)


def _artwork(path: Path, size: int) -> np.ndarray:
    """An artist's image as extraction reads a reference (EXIF turn; 16-bit, alpha to RGB on white),
    fitted whole in the square."""
    from ..extract import load_image
    try:
        image = load_image(path)
    except StyleComponentsError as e:  # here the file's fault: skip it, as a broken icon is
        raise ValueError(str(e)) from None
    return np.asarray(fit_icon(image, size, config.BACKGROUND), dtype=np.uint8)


def _render(wanted, rasterise_path, workers: int, log) -> tuple[list[dict], list[str]]:
    """Rows (label, name, path, hashes, pixels) of every (label, name, path) that renders; the
    paths that do not (a broken file must not stop a build of thousands)."""
    unreadable = []

    def render(item):
        path = item[2]
        try:
            return rasterise_path(path), _sha256(path)
        except StyleComponentsError:  # the machine's fault, not the file's (no rsvg-convert): stop
            raise
        except Exception as e:
            log(f"skipped {path}: {e}")
            unreadable.append(str(path))
            return None, None

    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        def tqdm(x, **k):
            return x
    with ThreadPoolExecutor(max(1, workers)) as pool:
        rendered = list(tqdm(pool.map(render, wanted), total=len(wanted), desc="rasterise",
                             disable=len(wanted) < 200, file=sys.stderr))
    rows = [{"theme": label, "name": n, "path": str(path), "source_sha256": sha, "pixels": pixels,
             "pixel_sha256": hashlib.sha256(pixels.tobytes()).hexdigest()}
            for (label, n, path), (pixels, sha) in zip(wanted, rendered) if pixels is not None]
    return rows, unreadable


def _drop_shared(rows: list[dict]) -> tuple[list[dict], int]:
    """Identical pixels under several labels: the label would be a coin toss -> drop every copy."""
    labels_of = defaultdict(set)
    for r in rows:
        labels_of[r["pixel_sha256"]].add(r["theme"])
    shared = {h for h, t in labels_of.items() if len(t) > 1}
    return [r for r in rows if r["pixel_sha256"] not in shared], sum(1 for r in rows if r["pixel_sha256"] in shared)


def _write(out_dir: Path, rows: list[dict], stats: dict, shard_size: int) -> None:
    shard_dir = out_dir / "shards"
    if shard_dir.exists():
        shutil.rmtree(shard_dir)
    shard_dir.mkdir(parents=True)
    with open(out_dir / "manifest.jsonl", "w") as f:
        for start in range(0, max(len(rows), 1), shard_size):
            chunk = rows[start:start + shard_size]
            if not chunk:
                break
            shard = f"shards/images_{start // shard_size:05d}.npy"
            np.save(out_dir / shard, np.stack([r["pixels"] for r in chunk]))
            for i, r in enumerate(chunk):
                f.write(json.dumps({"theme": r["theme"], "name": r["name"], "family": r["family"],
                                    "heldout": bool(r["heldout"]), "path": r["path"],
                                    "source_sha256": r["source_sha256"], "shard": shard, "index": i}) + "\n")
    (out_dir / "dataset.json").write_text(json.dumps(stats, indent=2) + "\n")


# --- reading -------------------------------------------------------------------------------

@dataclass
class IconData:
    images: np.ndarray       # uint8 [N, S, S, 3]
    themes: list[str]        # label names, index = class id
    labels: np.ndarray       # int64 [N]
    names: list[str]         # icon name per image
    heldout: np.ndarray      # bool [N]
    rows: list[dict]

    @property
    def families(self) -> list[str]:
        """The held-out unit per image: a name family for icons, the image itself for artists' folders."""
        return [r.get("family") or config.family(n) for r, n in zip(self.rows, self.names)]

    def subset(self, mask: np.ndarray) -> "IconData":
        idx = np.flatnonzero(mask)
        return IconData(self.images[idx], self.themes, self.labels[idx], [self.names[i] for i in idx],
                        self.heldout[idx], [self.rows[i] for i in idx])


def load(data_dir) -> IconData:
    data_dir = Path(data_dir)
    rows = [json.loads(line) for line in (data_dir / "manifest.jsonl").read_text().splitlines() if line]
    if not rows:
        raise UsageError(f"{data_dir}: empty manifest")
    shards = {s: np.load(data_dir / s) for s in sorted({r["shard"] for r in rows})}
    images = np.stack([shards[r["shard"]][r["index"]] for r in rows])
    themes = sorted({r["theme"] for r in rows})
    labels = np.array([themes.index(r["theme"]) for r in rows], dtype=np.int64)
    return IconData(images, themes, labels, [r["name"] for r in rows],
                    np.array([bool(r["heldout"]) for r in rows]), rows)


# --- command line --------------------------------------------------------------------------

def run(args: argparse.Namespace) -> dict:
    if args.images:
        if args.theme:
            raise UsageError("--images and --theme: give one source of artists")
        return build_from_folders(args.out, args.images, size=args.size, heldout_every=args.heldout_every,
                                  workers=args.workers)
    root = Path(args.root)
    if args.theme:
        themes = {}
        for spec in args.theme:
            label, _, folders = spec.partition("=")
            if not label or not folders:
                raise UsageError(f"--theme {spec}: give LABEL=FOLDER[,FOLDER...], folders under {root}")
            themes[label] = [root / f for f in folders.split(",") if f]
    else:
        themes = {pkg: package_folders(pkg, root) for pkg in config.THEME_PACKAGES}
    return build(args.out, themes, size=args.size, min_themes=args.min_themes, workers=args.workers)


def main(argv=None) -> int:
    from .commands import dataset_arguments, module_main
    return module_main(__spec__.name, __doc__, dataset_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
