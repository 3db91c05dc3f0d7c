"""Fit the style space: scikit-learn PCA over the extractor's embeddings of the dataset.

    style-components pca DATA_DIR EXTRACTOR OUT.safetensors [--k K | --variance 0.9]

Embeddings are the extractor's raw outputs (what `Extractor.embed` returns at run time).
K: the smallest number of components explaining `--variance` of the variance, at most
`--max-k` (the SD1 release used 30), unless --k is given. Each component gets a label when
it has an obvious meaning: the themes at its two ends and, when one is strongly correlated
(|r| >= 0.5), a plain image statistic (brightness, saturation, outline darkness, ...).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from ..errors import UsageError
from ..space import StyleSpace
from . import dataset

STAT_NAMES = ("brightness", "saturation", "icon area", "outline darkness", "edge density", "warmth")


def image_statistics(images_u8: np.ndarray, background=(255, 255, 255)) -> np.ndarray:
    """[N, 6] plain statistics of the foreground pixels, named by STAT_NAMES."""
    x = images_u8.astype(np.float32) / 255.0
    n = len(x)
    fg = (np.abs(x - np.array(background, np.float32) / 255).sum(-1) > 0.03).reshape(n, -1).astype(np.float32)
    wsum = np.maximum(fg.sum(1), 1)
    flat = x.reshape(n, -1, 3)
    mx, mn = flat.max(-1), flat.min(-1)
    sat = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-6), 0)
    gray = x.mean(-1)
    edges = (np.abs(np.diff(gray, axis=1))[:, :, :-1] + np.abs(np.diff(gray, axis=2))[:, :-1, :]).reshape(n, -1)
    return np.stack([(gray.reshape(n, -1) * fg).sum(1) / wsum, (sat * fg).sum(1) / wsum, fg.mean(1),
                     ((mx < 0.25) * fg).sum(1) / wsum, edges.mean(1),
                     ((flat[..., 0] - flat[..., 2]) * fg).sum(1) / wsum], 1)


def choose_k(explained_ratio: np.ndarray, variance: float, max_k: int) -> int:
    cum = np.cumsum(explained_ratio)
    return int(min(max_k, np.searchsorted(cum, variance) + 1, len(explained_ratio)))


def component_labels(scores: np.ndarray, labels: np.ndarray, themes: list[str], stats: np.ndarray) -> list[str]:
    """'low theme <-> high theme' per component, plus a strongly correlated statistic when there is one."""
    out = []
    short = [t.replace("-icon-theme", "").replace("-theme", "") for t in themes]
    for j in range(scores.shape[1]):
        s = scores[:, j]
        means = np.array([s[labels == t].mean() if (labels == t).any() else np.nan for t in range(len(themes))])
        lo, hi = int(np.nanargmin(means)), int(np.nanargmax(means))
        r = np.array([np.corrcoef(s, stats[:, i])[0, 1] if stats[:, i].std() > 0 else 0 for i in range(stats.shape[1])])
        label = f"{short[lo]} \u2194 {short[hi]}"
        i = int(np.nanargmax(np.abs(r)))
        if abs(r[i]) >= 0.5:
            label += f" ({'more' if r[i] > 0 else 'less'} {STAT_NAMES[i]})"
        out.append(label)
    return out


def fit(embeddings: np.ndarray, k: int | None = None, variance: float = 0.9, max_k: int = 30):
    """PCA (whiten=False) -> (sklearn PCA with all components, chosen K)."""
    from sklearn.decomposition import PCA

    pca = PCA(n_components=min(embeddings.shape), svd_solver="full", whiten=False).fit(embeddings)
    if k is not None and k > pca.n_components_:
        raise UsageError(f"K={k}: {len(embeddings)} embeddings of {embeddings.shape[1]} dims have at most "
                         f"{pca.n_components_} components")
    k = k or choose_k(pca.explained_variance_ratio_, variance, max_k)
    return pca, k


def to_space(pca, k: int, labels=(), extractor: str = "", name: str = "") -> StyleSpace:
    """The first k components as a StyleSpace: z = ((e - mean) @ C^T) / std."""
    return StyleSpace(torch.tensor(pca.mean_, dtype=torch.float32),
                      torch.tensor(pca.components_[:k], dtype=torch.float32),
                      torch.tensor(np.sqrt(pca.explained_variance_[:k]), dtype=torch.float32),
                      tuple(labels), extractor, name)


def embed_dataset(data: dataset.IconData, extractor_path) -> np.ndarray:
    from . import encoder

    model, size = encoder.load(extractor_path)
    return encoder.embed(model, data.images, size=size, normalize=False).numpy()


def run(args: argparse.Namespace) -> StyleSpace:
    data = dataset.load(args.data)
    emb = embed_dataset(data, args.extractor)
    pca, k = fit(emb, args.k, args.variance, args.max_k)
    scores = (emb - pca.mean_) @ pca.components_[:k].T
    labels = component_labels(scores, data.labels, data.themes, image_statistics(data.images))
    extractor_name = Path(args.extractor).stem
    space = to_space(pca, k, labels, extractor=extractor_name, name=args.name or Path(args.out).stem)
    space.save(args.out)
    cum = np.cumsum(pca.explained_variance_ratio_)
    info = {"k": k, "d": int(emb.shape[1]), "images": int(len(emb)), "variance_kept": float(cum[k - 1]),
            "explained_variance_ratio": pca.explained_variance_ratio_[:max(k, 40)].tolist(),
            "rule": f"smallest K reaching {args.variance:.0%} of the variance, at most {args.max_k}"
            if not args.k else "given", "labels": labels}
    Path(args.out).with_suffix(".json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"wrote {args.out}: K={k} of {emb.shape[1]} ({cum[k - 1]:.1%} of the variance); "
          f"first labels: {labels[:3]}")
    return space


def main(argv=None) -> int:
    from .commands import pca_arguments, module_main
    return module_main(__spec__.name, __doc__, pca_arguments, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
