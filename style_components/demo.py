"""`style-components demo`: the shipped demo models steer generated icons, in one picture.

Rows are icon names; columns are the base model alone, styles extracted from reference
icons of several themes (models/demo/references/THEME/*.png), a seeded random style and a
sweep of one component. Every cell of a row shares its seed, so only the style differs.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .errors import UsageError

DEMO_DIR = Path(__file__).resolve().parent.parent / "models" / "demo"
NAMES = ("folder", "computer", "system-search", "printer", "go-next", "media-record")
SWEEP = (-2.0, -1.0, 0.0, 1.0, 2.0)
CELL = 2  # pixel zoom of the 32 px icons
# At its trained scale (1) the shipped adapter steers faintly (retrieval 0.125). 1.5 retrieves as
# well as 2 (0.184 vs 0.181) and keeps content better (0.780 vs 0.684, base 0.688): 2 broke some
# subjects' shapes (MODEL_CARD.md, the strength rows).
STRENGTH = 1.5


class DemoModels:
    """The four shipped files: world (base), adapter, extractor, style space."""

    def __init__(self, folder: Path = DEMO_DIR):
        from .adapter import Adapter
        from .extract import Extractor
        from .space import StyleSpace
        from .world import IconWorld

        self.folder = Path(folder)
        self.world = IconWorld.load(self.folder / "icon_world.safetensors")
        self.adapter = Adapter.load(self.folder / "icon_style_adapter.safetensors")
        self.extractor = Extractor.load(self.folder / "icon_style_extractor.safetensors")
        self.space = StyleSpace.load(self.folder / "icon_style_space.safetensors")

    def references(self) -> dict[str, list[Path]]:
        """references/THEME/*.png (any case of .png), one column per theme; hidden folders skipped."""
        root = self.folder / "references"
        if not root.is_dir():
            print(f"note: {root} not found: no reference style columns")
            return {}
        themes = {}
        for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            themes[d.name] = sorted(p for p in d.iterdir() if p.suffix.lower() == ".png" and p.is_file())
            if not themes[d.name]:
                raise UsageError(f"{d}: no .png reference icons in this theme folder")
        return themes

    def components_of(self, images: Sequence) -> torch.Tensor:
        """Style components of reference images (their mean embedding), as the UI's Extract does."""
        return self.space.to_components(self.extractor.embed(list(images)))


def columns(models: DemoModels, seed: int, sweep_component: int) -> list[tuple[str, torch.Tensor | None]]:
    from .params import random_components
    if not 0 <= sweep_component < models.space.k:  # (0-based here; the CLI's --component counts from 1)
        raise UsageError(f"component {sweep_component + 1}: the style space has components 1 to {models.space.k}")

    k = models.space.k
    cols: list[tuple[str, torch.Tensor | None]] = [("base", None)]
    for theme, paths in models.references().items():
        cols.append((theme.replace("-icon-theme", ""), models.components_of(paths)))
    cols.append((f"random {seed}", torch.tensor(random_components(seed, k))))
    for v in SWEEP:
        z = torch.zeros(k)
        z[sweep_component] = v
        cols.append((f"c{sweep_component + 1} {v:+g}", z))
    return cols


def render(models: DemoModels, names: Sequence[str] = NAMES, seed: int = 0, sweep_component: int = 0,
           steps: int = 20, strength: float = STRENGTH) -> tuple[np.ndarray, list[str]]:
    """uint8 grid [rows = names, columns = styles] and the column titles."""
    from .generate import generate

    cols = columns(models, seed, sweep_component)
    styled = [(title, z) for title, z in cols if z is not None]
    row_seeds = [seed + r for r in range(len(names))]
    base = generate(models.world, names, row_seeds, steps=steps)
    flat_names = [n for n in names for _ in styled]
    flat_seeds = [s for s in row_seeds for _ in styled]
    flat_styles = torch.stack([z for _ in names for _, z in styled])
    images = generate(models.world, flat_names, flat_seeds, steps=steps, adapter=models.adapter,
                      styles=flat_styles, strength=strength)
    cells = np.concatenate([base[:, None], images.reshape(len(names), len(styled), *images.shape[1:])], axis=1)
    return cells, [title for title, _ in cols]


def picture(cells: np.ndarray, titles: Sequence[str], names: Sequence[str], zoom: int = CELL):
    """Labelled grid PIL image: column titles on top, icon names on the left."""
    from PIL import Image, ImageDraw

    from .generate import grid
    rows, cols = cells.shape[:2]
    body = Image.fromarray(grid(cells.reshape(-1, *cells.shape[2:]), cols, scale=zoom))
    cell_w = (body.width - 2) // cols
    left, top = 100, 16
    canvas = Image.new("RGB", (body.width + left, body.height + top), "white")
    canvas.paste(body, (left, top))
    draw = ImageDraw.Draw(canvas)
    for c, title in enumerate(titles):
        draw.text((left + 2 + c * cell_w, 2), title[:11], fill="black")
    cell_h = (body.height - 2) // rows
    for r, name in enumerate(names):
        draw.text((2, top + 2 + r * cell_h + cell_h // 2 - 6), name[:16], fill="black")
    return canvas


def run(out="style_components_demo.png", seed: int = 0, sweep_component: int = 0, steps: int = 20,
        names: Sequence[str] = NAMES, folder: Path = DEMO_DIR, strength: float = STRENGTH) -> Path:
    t0 = time.time()
    models = DemoModels(folder)
    cells, titles = render(models, names, seed, sweep_component, steps, strength)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    picture(cells, titles, names).save(out)
    print(f"wrote {out.resolve()} ({len(names)} icon names x {len(titles)} styles, strength {strength:g}, "
          f"{time.time() - t0:.1f} s)")
    return out
