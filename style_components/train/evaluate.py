"""Held-out evaluation of a style extractor on the icon dataset, beside a hand-made baseline.

    style-components evaluate DATA_DIR EXTRACTOR [--out report.json]

Protocol: the gallery is every training-family image, the queries every held-out-family
image (families = first word of the icon name, never seen in training). Reported:
- 1-NN and 5-NN (cosine) top-1 theme accuracy, with and without test-time augmentation;
- per-theme recall and the most confused (true, predicted) pairs of the primary metric;
- content leak: a linear probe (logistic regression) predicting the icon *name* from the
  embedding of held-out images, trained on half of the themes and tested on the other half
  (lower is better; chance and the same probe on raw pixels are given for scale);
- the hand-made baseline (colour histogram + statistics, standardised, 1-NN) on the same split.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from . import config, dataset


# --- the hand-made baseline ----------------------------------------------------------------

def handmade_features(images_u8: np.ndarray, background=config.BACKGROUND) -> np.ndarray:
    """Colour histogram + statistics of the icon's pixels (the background excluded).

    Joint RGB histogram (4 levels per channel, 64 bins) and a 12-bin hue histogram weighted by
    saturation, both of foreground pixels; mean and std of R, G, B, saturation and value;
    foreground fraction; mean gradient magnitude and the fraction of dark (outline) pixels.
    """
    x = images_u8.astype(np.float32) / 255.0
    n = x.shape[0]
    bg = np.array(background, np.float32) / 255.0
    fg = np.abs(x - bg).sum(-1) > 0.03                                   # [N, H, W]
    w = fg.reshape(n, -1).astype(np.float32)
    wsum = np.maximum(w.sum(1, keepdims=True), 1.0)
    flat = x.reshape(n, -1, 3)
    q = np.minimum((flat * 4).astype(np.int64), 3)
    bins = q[..., 0] * 16 + q[..., 1] * 4 + q[..., 2]
    rgb_hist = np.stack([np.bincount(bins[i], weights=w[i], minlength=64) for i in range(n)]) / wsum
    mx, mn = flat.max(-1), flat.min(-1)
    sat = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-6), 0)
    delta = np.maximum(mx - mn, 1e-6)
    r, g, b = flat[..., 0], flat[..., 1], flat[..., 2]
    hue = np.where(mx == r, ((g - b) / delta) % 6, np.where(mx == g, (b - r) / delta + 2, (r - g) / delta + 4)) / 6
    hb = np.minimum((hue * 12).astype(np.int64), 11)
    hue_hist = np.stack([np.bincount(hb[i], weights=w[i] * sat[i], minlength=12) for i in range(n)]) / wsum
    chans = np.concatenate([flat, sat[..., None], mx[..., None]], -1)     # R G B S V
    mean = (chans * w[..., None]).sum(1) / wsum
    std = np.sqrt(np.maximum(((chans - mean[:, None]) ** 2 * w[..., None]).sum(1) / wsum, 0))
    gray = x.mean(-1)
    gy, gx = np.abs(np.diff(gray, axis=1))[:, :, :-1], np.abs(np.diff(gray, axis=2))[:, :-1, :]
    grad = (gx + gy).reshape(n, -1).mean(1, keepdims=True)
    dark = ((mx < 0.25) * w).sum(1, keepdims=True) / wsum
    return np.concatenate([np.sqrt(rgb_hist), np.sqrt(hue_hist), mean, std, w.mean(1, keepdims=True),
                           grad, dark], 1).astype(np.float32)


def standardise(train: np.ndarray, *others: np.ndarray):
    mu, sd = train.mean(0), train.std(0) + 1e-6
    return [(a - mu) / sd for a in (train, *others)]


# --- metrics -------------------------------------------------------------------------------

def knn_predict(gallery: np.ndarray, gallery_y: np.ndarray, query: np.ndarray, k: int = 1,
                metric: str = "cosine") -> np.ndarray:
    g, q = torch.as_tensor(gallery, dtype=torch.float32), torch.as_tensor(query, dtype=torch.float32)
    if metric == "cosine":
        g, q = torch.nn.functional.normalize(g, dim=1), torch.nn.functional.normalize(q, dim=1)
        sims = q @ g.T
    else:
        sims = -torch.cdist(q, g)
    idx = sims.topk(min(k, len(g)), dim=1).indices.numpy()
    votes = np.asarray(gallery_y)[idx]
    if k == 1:
        return votes[:, 0]
    out = []
    for row in votes:  # majority, ties to the nearest
        c = Counter(row.tolist())
        top = max(c.values())
        out.append(next(v for v in row if c[v] == top))
    return np.array(out)


def per_theme(y_true: np.ndarray, y_pred: np.ndarray, themes: list[str]) -> dict:
    return {t: float((y_pred[y_true == i] == i).mean()) for i, t in enumerate(themes) if (y_true == i).any()}


def confusions(y_true: np.ndarray, y_pred: np.ndarray, themes: list[str], top: int = 8) -> list[dict]:
    c = Counter((int(a), int(b)) for a, b in zip(y_true, y_pred) if a != b)
    return [{"true": themes[a], "predicted": themes[b], "count": n} for (a, b), n in c.most_common(top)]


def content_probe(features: np.ndarray, labels: np.ndarray, names: list[str], seed: int = 0,
                  splits: int = 20) -> dict:
    """Linear probe: icon name from features, trained on half of the themes, tested on the rest;
    the mean (and sd) over `splits` random halves: one split's figure ranged 0.04-0.13 for one encoder."""
    one = [_content_probe_once(features, labels, names, seed + i) for i in range(splits)]
    done = [r for r in one if r["accuracy"] is not None]
    if not done:
        return {"accuracy": None, "chance": None, "splits": 0}
    acc = np.array([r["accuracy"] for r in done])
    return {"accuracy": float(acc.mean()), "sd": float(acc.std()), "chance": float(np.mean([r["chance"] for r in done])),
            "splits": len(done), "names": float(np.mean([r["names"] for r in done]))}


def _content_probe_once(features: np.ndarray, labels: np.ndarray, names: list[str], seed: int) -> dict:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    themes = np.unique(labels)
    half = set(rng.permutation(themes)[: len(themes) // 2].tolist())
    tr = np.array([lab in half for lab in labels])
    names = np.asarray(names)
    both = set(names[tr]) & set(names[~tr])
    keep = np.array([n in both for n in names])
    tr_m, te_m = tr & keep, ~tr & keep
    if tr_m.sum() == 0 or te_m.sum() == 0 or len(both) < 2:
        return {"accuracy": None, "chance": None, "names": len(both)}
    xtr, xte = standardise(features[tr_m], features[te_m])
    clf = LogisticRegression(max_iter=2000, C=1.0)
    clf.fit(xtr, names[tr_m])
    acc = float((clf.predict(xte) == names[te_m]).mean())
    chance = float(max(Counter(names[te_m].tolist()).values()) / te_m.sum())
    return {"accuracy": acc, "chance": chance, "names": len(both)}


def _block(gallery, gy, query, qy, themes, metric="cosine") -> dict:
    out = {}
    for k in (1, 5):
        pred = knn_predict(gallery, gy, query, k, metric)
        out[f"top1_{k}nn"] = float((pred == qy).mean())
        if k == 1:
            out["per_theme_recall"] = per_theme(qy, pred, themes)
            out["confusions"] = confusions(qy, pred, themes)
    return out


def evaluate(data: dataset.IconData, extractor_path=None, model=None, seed: int = 0,
             size: int = config.INPUT_SIZE) -> dict:
    """The JSON report (see the module docstring). `model` (a torch module taking `size` px) or `extractor_path`."""
    from . import encoder

    if model is None:
        model, size = encoder.load(extractor_path)
    train_part, held = data.subset(~data.heldout), data.subset(data.heldout)
    themes = data.themes
    report = {"split": {"gallery_images": int(len(train_part.labels)), "query_images": int(len(held.labels)),
                        "heldout_families": sorted(set(held.families)),
                        "themes": len(themes), "chance": 1 / len(themes)}}
    for tta in (False, True):
        g = encoder.embed(model, train_part.images, tta=tta, size=size).numpy()
        q = encoder.embed(model, held.images, tta=tta, size=size).numpy()
        report["encoder_tta" if tta else "encoder"] = _block(g, train_part.labels, q, held.labels, themes)
        if not tta:
            report["encoder"]["content_probe"] = content_probe(q, held.labels, held.names, seed)
    hg, hq = standardise(handmade_features(train_part.images), handmade_features(held.images))
    report["baseline_handmade"] = _block(hg, train_part.labels, hq, held.labels, themes, metric="euclidean")
    report["baseline_handmade"]["content_probe"] = content_probe(hq, held.labels, held.names, seed)
    raw_g = train_part.images.reshape(len(train_part.labels), -1)[:, ::7].astype(np.float32)
    raw_q = held.images.reshape(len(held.labels), -1)[:, ::7].astype(np.float32)
    report["baseline_raw_pixels"] = {"top1_1nn": float((knn_predict(raw_g, train_part.labels, raw_q, 1, "euclidean")
                                                        == held.labels).mean())}
    report["baseline_raw_pixels"]["content_probe"] = content_probe(raw_q, held.labels, held.names, seed)
    return report


def summary(report: dict) -> str:
    e, t, b = report["encoder"], report["encoder_tta"], report["baseline_handmade"]
    lines = [f"held-out: {report['split']['query_images']} queries vs {report['split']['gallery_images']} "
             f"gallery images, {report['split']['themes']} themes (chance {report['split']['chance']:.3f})",
             f"encoder      1-NN {e['top1_1nn']:.3f}  5-NN {e['top1_5nn']:.3f}",
             f"encoder+TTA  1-NN {t['top1_1nn']:.3f}  5-NN {t['top1_5nn']:.3f}",
             f"hand-made    1-NN {b['top1_1nn']:.3f}  5-NN {b['top1_5nn']:.3f}",
             f"raw pixels   1-NN {report['baseline_raw_pixels']['top1_1nn']:.3f}",
             "content probe (name from embedding, lower is better; mean of theme splits): encoder "
             f"{_probe(e)}, hand-made {_probe(b)}, raw pixels {_probe(report['baseline_raw_pixels'])}, "
             f"chance {_probe(e, 'chance')}"]
    return "\n".join(lines)


def _probe(block: dict, key: str = "accuracy") -> str:
    value = block["content_probe"][key]
    return "n/a" if value is None else f"{value:.3f}"


def run(args: argparse.Namespace) -> dict:
    if getattr(args, "adapter", None):
        if not (args.world and args.space):
            raise SystemExit("evaluate --adapter needs --world and --space")
        if args.names < 2:  # the content classifier needs two names to tell apart
            raise SystemExit(f"evaluate --adapter --names {args.names}: at least 2 held-out names")
        from . import fidelity
        return fidelity.run(args)
    report = evaluate(dataset.load(args.data), args.extractor)
    print(summary(report))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")
    return report


def main(argv=None) -> int:
    from .commands import evaluate_arguments, module_main
    return module_main(__spec__.name, __doc__, evaluate_arguments, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
