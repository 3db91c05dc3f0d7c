"""Component atlas: what each slider does, shown with the dataset's own icons.

    style-components atlas DATA_DIR EXTRACTOR SPACE OUT_DIR [--n 8]

Writes `component_01.png` ... (one strip per component: the N icons scoring lowest on the
left, the N scoring highest on the right, the component's label on top),
`explained_variance.png` (per-component and cumulative explained variance of the space's
own components, from the dataset) and `atlas.json` (the icons shown, their scores).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..space import StyleSpace
from . import dataset


def strip(low: np.ndarray, high: np.ndarray, title: str, scale: int = 1, gap: int = 16) -> Image.Image:
    """Low icons | gap | high icons, under a title line."""
    size = low.shape[1] * scale if len(low) else high.shape[1] * scale
    n = max(len(low), len(high))
    head = 18
    w = 2 * n * size + gap
    canvas = Image.new("RGB", (w, size + head), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    draw.text((2, 3), title.replace("\u2194", "<->"), fill=(0, 0, 0))  # the default bitmap font is ASCII
    for i, im in enumerate(low):
        canvas.paste(Image.fromarray(im).resize((size, size), Image.Resampling.NEAREST), (i * size, head))
    for i, im in enumerate(high):
        canvas.paste(Image.fromarray(im).resize((size, size), Image.Resampling.NEAREST), (n * size + gap + i * size, head))
    draw.rectangle([n * size + gap // 2 - 1, head, n * size + gap // 2, head + size], fill=(200, 0, 0))
    return canvas


def variance_plot(variances: np.ndarray, total: float, path, k: int) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratio = variances / total
    fig, ax = plt.subplots(figsize=(7, 3.5))
    idx = np.arange(1, len(ratio) + 1)
    ax.bar(idx, ratio, color="C0", label="per component")
    ax.plot(idx, np.cumsum(ratio), "o-", color="C3", ms=3, label="cumulative")
    ax.set_xlabel("style component")
    ax.set_ylabel("fraction of embedding variance")
    ax.set_ylim(0, 1)
    ax.set_title(f"explained variance of the {k} style components")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def make(images_u8: np.ndarray, embeddings: torch.Tensor, space: StyleSpace, out_dir, n: int = 8,
         names=None, themes=None, scale: int = 1) -> list[Path]:
    """Write the atlas for `space` from dataset images and their embeddings; returns the files."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    z = space.to_components(torch.as_tensor(embeddings, dtype=torch.float32)).numpy()   # [N, K]
    written, shown = [], []
    n = min(n, len(z) // 2) or 1
    for j in range(space.k):
        order = np.argsort(z[:, j])
        low, high = order[:n], order[::-1][:n][::-1]
        title = f"{j + 1}: {space.label(j)}   (low  |  high)"
        path = out_dir / f"component_{j + 1:02d}.png"
        strip(images_u8[low], images_u8[high], title, scale).save(path)
        written.append(path)
        shown.append({"component": j + 1, "label": space.label(j),
                      "low": [{"index": int(i), "score": float(z[i, j]), "name": names[i] if names else None,
                               "theme": themes[i] if themes else None} for i in low],
                      "high": [{"index": int(i), "score": float(z[i, j]), "name": names[i] if names else None,
                                "theme": themes[i] if themes else None} for i in high]})
    e = torch.as_tensor(embeddings, dtype=torch.float32)
    total = float(((e - e.mean(0)) ** 2).sum(1).mean())
    variances = (z * space.std.numpy()) .var(0, ddof=1)
    path = out_dir / "explained_variance.png"
    variance_plot(variances, total, path, space.k)
    written.append(path)
    (out_dir / "atlas.json").write_text(json.dumps(shown, indent=1) + "\n")
    written.append(out_dir / "atlas.json")
    return written


def run(args: argparse.Namespace) -> list[Path]:
    from . import pca

    data = dataset.load(args.data)
    space = StyleSpace.load(args.space)
    emb = pca.embed_dataset(data, args.extractor)
    files = make(data.images, torch.from_numpy(emb), space, args.out, n=args.n, names=data.names,
                 themes=[data.themes[i] for i in data.labels], scale=args.scale)
    print(f"wrote {len(files)} files to {args.out}")
    return files


def main(argv=None) -> int:
    from .commands import atlas_arguments, module_main
    return module_main(__spec__.name, __doc__, atlas_arguments, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
