"""A fake /usr/share/icons tree drawn with Pillow: a few "themes" (distinct palettes, outline
widths, shading) drawing the same named subjects. No rsvg, no apt packages needed."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

from PIL import Image, ImageDraw

# subjects: name -> shape; families: folder, user, printer, document, mail, edit, go, media
SUBJECTS = {
    "folder": "rect", "folder-open": "rect_open", "user-trash": "bin", "user-home": "house",
    "printer": "printer", "document-new": "page", "document-open": "page_open", "mail-send": "envelope",
    "edit-copy": "two_pages", "edit-cut": "cross", "go-home": "house", "go-next": "arrow",
    "media-record": "disc", "media-eject": "triangle",
}

STYLES = {  # theme folder -> (fill, second colour, outline colour, outline width, highlight)
    "Alpha": ((220, 60, 40), (250, 180, 60), (90, 20, 10), 3, True),
    "Beta": ((40, 110, 220), (120, 200, 250), (10, 30, 80), 1, False),
    "Gamma": ((60, 170, 80), (200, 240, 120), (20, 60, 20), 2, True),
    "Delta": ((150, 150, 150), (230, 230, 230), (0, 0, 0), 4, False),
}


def draw_icon(shape: str, style, size: int = 48) -> Image.Image:
    fill, second, outline, width, highlight = style
    im = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    d = ImageDraw.Draw(im)
    s = size
    box = (s * 0.15, s * 0.2, s * 0.85, s * 0.85)
    if shape in ("rect", "rect_open"):
        d.rectangle(box, fill=fill, outline=outline, width=width)
        if shape == "rect_open":
            d.polygon([(s * .15, s * .5), (s * .9, s * .5), (s * .8, s * .85), (s * .15, s * .85)], fill=second,
                      outline=outline)
    elif shape in ("page", "page_open", "two_pages"):
        d.rectangle((s * .3, s * .1, s * .75, s * .9), fill=second, outline=outline, width=width)
        if shape != "page":
            d.rectangle((s * .2, s * .2, s * .65, s * .95), fill=fill, outline=outline, width=width)
    elif shape in ("disc",):
        d.ellipse(box, fill=fill, outline=outline, width=width)
    elif shape in ("triangle", "arrow"):
        d.polygon([(s * .2, s * .8), (s * .5, s * .2), (s * .8, s * .8)] if shape == "triangle"
                  else [(s * .2, s * .35), (s * .55, s * .35), (s * .55, s * .15), (s * .9, s * .5),
                        (s * .55, s * .85), (s * .55, s * .65), (s * .2, s * .65)], fill=fill, outline=outline)
    elif shape == "house":
        d.polygon([(s * .1, s * .5), (s * .5, s * .1), (s * .9, s * .5)], fill=second, outline=outline)
        d.rectangle((s * .2, s * .5, s * .8, s * .9), fill=fill, outline=outline, width=width)
    elif shape == "envelope":
        d.rectangle((s * .1, s * .25, s * .9, s * .75), fill=second, outline=outline, width=width)
        d.line([(s * .1, s * .25), (s * .5, s * .55), (s * .9, s * .25)], fill=outline, width=width)
    elif shape == "cross":
        d.line([(s * .2, s * .2), (s * .8, s * .8)], fill=fill, width=width + 4)
        d.line([(s * .8, s * .2), (s * .2, s * .8)], fill=second, width=width + 4)
    elif shape == "bin":
        d.rectangle((s * .25, s * .3, s * .75, s * .9), fill=fill, outline=outline, width=width)
        d.rectangle((s * .2, s * .2, s * .8, s * .3), fill=second, outline=outline)
    elif shape == "printer":
        d.rectangle((s * .1, s * .4, s * .9, s * .75), fill=fill, outline=outline, width=width)
        d.rectangle((s * .3, s * .15, s * .7, s * .4), fill=second, outline=outline)
    if highlight:
        d.ellipse((s * .2, s * .15, s * .35, s * .3), fill=(255, 255, 255, 200))
    return im


def index_theme(name: str, inherits: str = "", dirs=("48x48/apps",), extra_sections: str = "") -> str:
    text = f"[Icon Theme]\nName={name}\nComment=fixture\n"
    if inherits:
        text += f"Inherits={inherits}\n"
    text += f"Directories={','.join(dirs)}\n\n"
    for d in dirs:
        size = int(d.split("x")[0]) if d[0].isdigit() else 48
        scale = 2 if "@2" in d else 1
        typ = "Scalable" if d.startswith("scalable") else "Fixed"
        text += f"[{d}]\nSize={size}\nScale={scale}\nType={typ}\nContext=Applications\n\n"
    return text + extra_sections


def make_icon_tree(root: Path) -> dict:
    """Write the fake tree; returns {label: [theme folders]} as the builder expects.

    - Alpha (main) + Alpha-Dark (inherits Alpha, only a few files): the builder must pick Alpha.
    - Gamma copies two of Beta's files byte for byte (derived theme): those images must be dropped.
    - Every theme has a `-symbolic` icon and a symbolic folder: skipped.
    - Delta has a symlink to one of Alpha's files (not its own): skipped; and a Scale=2 folder: skipped.
    - Beta has an alias (symlink inside its own folder): kept once.
    """
    root = Path(root)
    dirs = ("48x48/apps", "symbolic/apps", "48x48@2/apps")
    for theme, style in STYLES.items():
        base = root / theme
        (base / "48x48/apps").mkdir(parents=True)
        (base / "symbolic/apps").mkdir(parents=True)
        (base / "48x48@2/apps").mkdir(parents=True)
        (base / "index.theme").write_text(index_theme(theme, "hicolor", dirs))
        for name, shape in SUBJECTS.items():
            draw_icon(shape, style).save(base / "48x48/apps" / f"{name}.png")
            draw_icon(shape, style, 96).save(base / "48x48@2/apps" / f"{name}.png")
        draw_icon("disc", style).save(base / "48x48/apps" / "folder-symbolic.png")
        draw_icon("disc", style).save(base / "symbolic/apps" / "only-symbolic.png")
    # a dark variant of Alpha inheriting it, with a couple of its own files
    dark = root / "Alpha-Dark"
    (dark / "48x48/apps").mkdir(parents=True)
    (dark / "index.theme").write_text(index_theme("Alpha Dark", "Alpha", ("48x48/apps",)))
    for name in ("folder", "printer"):
        draw_icon(SUBJECTS[name], ((30, 30, 30), (60, 60, 60), (200, 200, 200), 2, False)).save(
            dark / "48x48/apps" / f"{name}.png")
    # Gamma ships two of Beta's files unchanged
    for name in ("folder", "printer"):
        (root / "Gamma/48x48/apps" / f"{name}.png").write_bytes((root / "Beta/48x48/apps" / f"{name}.png").read_bytes())
    # Delta: a symlink leading into another theme, standing in for one of its own subjects
    os.remove(root / "Delta/48x48/apps/edit-cut.png")
    os.symlink(root / "Alpha/48x48/apps/edit-cut.png", root / "Delta/48x48/apps/edit-cut.png")
    # Beta: an alias inside its own folder (same image under another name)
    os.symlink("folder.png", root / "Beta/48x48/apps/inode-directory.png")
    return {"alpha-icon-theme": [root / "Alpha", root / "Alpha-Dark"], "beta-icon-theme": [root / "Beta"],
            "gamma-icon-theme": [root / "Gamma"], "delta-icon-theme": [root / "Delta"]}


def tiny_encoder_args(batch_themes: int = 4) -> list[str]:
    """`train` options for a style encoder small enough to train in seconds on the fixture."""
    return ["--width", "8", "--dim", "16", "--batch-themes", str(batch_themes), "--per-theme", "2",
            "--no-progress", "--cpu"]


@contextmanager
def own_accelerator_state():
    """accelerate keeps one precision per process (a command is one); a test that runs commands of
    two precisions gives each a fresh state, and leaves none behind."""
    from accelerate.state import AcceleratorState
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        yield
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
