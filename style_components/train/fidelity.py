"""Measure that a style adapter works: `style-components evaluate DATA EXTRACTOR --world W --adapter A --space S`.

On held-out icon names (families the adapter never trained on), for each training theme,
generate with the style extracted from that theme's reference icons (its training-split
icons), and with the base alone from the same seeds. Reported (JSON + PNG):

- style retrieval: nearest real-theme centroid of each generated image's embedding is the
  theme whose style was asked for (chance 1/themes); adapter vs base;
- Fréchet distance per theme between generated and real held-out icons, in the style space
  (K dims: with ~16 images per theme the 128-d embedding covariance would be rank-deficient),
  beside the same score for as many of the theme's *real* icons of other names: what drawing
  the theme's style perfectly, but not these subjects, would score;
- slider monotonicity: component k set to -2..2 (others 0) moves the generated images'
  measured component k (mean over every held-out name and seed); Spearman rho per top-5 component,
  and the response gain (least-squares slope of measured on set: 1 = the slider moves the
  picture as far as it asks). The same again as a user moves a slider: component k of each
  theme's extracted style offset by -2..2 (`sweep_around_styles`);
- style separability: are the generated styles distinct from *each other*, whatever the real
  icons look like? Theme centroids of one seed's images classify the other seed's (chance 1/themes);
- trained-pair selection, a judge no model trained: for names the adapter trained on, generate
  each (name, theme) icon from its own components and ask whose drawing of that name it is
  nearest in pixels (chance 1/themes drawing the name; the round trip scores ~0.96). It tells a
  weak style signal (low here too) from one that does not reach new subjects (high here only);
- content kept: a pixel classifier of icon names (trained on real held-out icons of all
  themes) on adapter outputs vs base outputs.

Real icons pass through the same 32 px size as generated ones, so both look alike to the encoder.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .. import world as world_lib
from ..generate import generate

SWEEP = (-2.0, -1.0, 0.0, 1.0, 2.0)


def at_world_size(images: np.ndarray) -> np.ndarray:
    """Real 64 px icons -> the 32 px the world generates (area average), uint8."""
    return world_lib.to_uint8(world_lib.to_pixels(images))


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to rows of a and b."""
    from scipy import linalg
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = np.real(linalg.sqrtm(cov_a @ cov_b))
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


def spearman(x, y) -> float:
    from scipy.stats import spearmanr
    return float(spearmanr(x, y).statistic)


def slope(x, y) -> float:
    """Least-squares slope of y on x."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return float(((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum())


def unit(e: np.ndarray) -> np.ndarray:
    return e / np.linalg.norm(e, axis=-1, keepdims=True)


def nearest_mean(e: np.ndarray, real: np.ndarray, labels: np.ndarray, icons: np.ndarray | None = None) -> np.ndarray:
    """The label whose real embeddings' mean direction is nearest each row of e. `icons` (indices
    into real) says which real icon each row is, or comes from: its own label's mean is then taken
    without it, so that a real icon is not judged against a mean that holds itself."""
    sums = np.stack([real[labels == t].sum(0) for t in range(labels.max() + 1)])
    scores = unit(e) @ unit(sums).T
    if icons is not None:
        own = labels[icons]
        scores[np.arange(len(e)), own] = (unit(e) * unit(sums[own] - real[icons])).sum(1)
    return scores.argmax(1)


def separability(embeddings: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> float:
    """Leave-one-group-out nearest-centroid (cosine) accuracy: centroids of the labels from every
    other group classify this group's rows. Groups are seeds: distinct styles score high."""
    hits = []
    for g in np.unique(groups):
        rest = groups != g
        centroids = {lab: unit(embeddings[rest & (labels == lab)].mean(0)) for lab in np.unique(labels[rest])}
        keys = np.array(list(centroids))
        pred = keys[(unit(embeddings[~rest]) @ np.stack(list(centroids.values())).T).argmax(1)]
        hits.append(pred == labels[~rest])
    return float(np.concatenate(hits).mean())


def nearest_drawing(images: np.ndarray, names, gallery: np.ndarray, gallery_names, gallery_labels) -> np.ndarray:
    """For each image, the label of the nearest (pixel L2) gallery image with the same name."""
    gallery_names, flat = np.asarray(gallery_names), gallery.reshape(len(gallery), -1).astype(np.float32)
    out = []
    for image, name in zip(images.reshape(len(images), -1).astype(np.float32), names):
        idx = np.flatnonzero(gallery_names == name)
        out.append(gallery_labels[idx[((flat[idx] - image) ** 2).sum(1).argmin()]])
    return np.array(out)


def slider_response(draw, measure, start: torch.Tensor, components: int) -> dict:
    """Move component k (< `components`) of each start style by each SWEEP value, one k at a time.

    draw(styles [V*N, K]) -> images, value-major; measure(images) -> their components [V*N, K].
    Per k: the measured component minus the start's, averaged per value; Spearman rho and gain.
    """
    means = {}
    for k in range(components):
        z = start.repeat(len(SWEEP), 1)
        z[:, k] += torch.tensor(SWEEP, dtype=z.dtype).repeat_interleave(len(start))
        got = measure(draw(z))[:, k] - start[:, k].repeat(len(SWEEP)).numpy()
        means[f"c{k + 1}"] = got.reshape(len(SWEEP), -1).mean(1)
    return {"measured": {k: [round(float(v), 3) for v in m] for k, m in means.items()},
            "spearman": {k: spearman(SWEEP, m) for k, m in means.items()},   # unrounded: no false ties
            "gain": {k: slope(SWEEP, m) for k, m in means.items()}}


def goals(retrieval: float, themes: int, frechet_ratio: float, rhos: dict) -> dict:
    """The issue's three goals. Spearman over the five sweep values moves in steps of 0.05, and
    scipy computes 0.8 as 0.7999999999999999: compared with a tolerance, or it fails a met goal."""
    tol = 1e-9
    return {"retrieval >= 5x chance": retrieval >= 5 / themes - tol,
            "frechet adapter <= 0.5x base": frechet_ratio <= 0.5 + tol,
            "spearman >= 0.8 on top-5": all(r >= 0.8 - tol for r in rhos.values())}


def most_drawn(data, n: int, heldout: bool = True) -> list[str]:
    """The n names drawn by the most themes, among the held-out (or the training) names."""
    counts: dict[str, int] = {}
    for name, held in zip(data.names, data.heldout):
        if held == heldout:
            counts[name] = counts.get(name, 0) + 1
    return sorted(counts, key=lambda k: (-counts[k], k))[:n]


def evaluate(data, world, adapter, extractor, space, n_names: int = 8, seeds_per_name: int = 2,
             references: int = 16, steps: int = 20, seed: int = 0, strength: float = 1.0, weights="all",
             log=print) -> dict:
    from sklearn.linear_model import LogisticRegression

    themes = data.themes
    names = most_drawn(data, n_names)
    small = at_world_size(data.images)
    emb = lambda images: extractor.embed_each(list(images)).numpy()
    real = emb(small)
    real_z = space.to_components(torch.from_numpy(real)).numpy()
    nearest_theme = lambda e, icons=None: nearest_mean(e, real, data.labels, icons)  # noqa: E731

    # the style each theme asks for: mean embedding of its training-split reference icons
    rng = np.random.default_rng(seed)
    styles = []
    for t in range(len(themes)):
        idx = np.flatnonzero((data.labels == t) & ~data.heldout)
        idx = rng.choice(idx, min(references, len(idx)), replace=False)
        styles.append(space.to_components(torch.from_numpy(emb(data.images[idx]).mean(0))))
    styles = torch.stack(styles)

    jobs = [(t, n, seed + 1000 * j + s) for t in range(len(themes)) for j, n in enumerate(names)
            for s in range(seeds_per_name)]
    job_names, job_seeds = [n for _, n, _ in jobs], [s for _, _, s in jobs]
    log(f"generating {len(jobs)} styled + {len(jobs)} base icons ({len(names)} held-out names x {len(themes)} themes)")

    def draw_styled(names_: list, seeds_: list, z: torch.Tensor) -> np.ndarray:
        """Every styled draw of the report, at one inference setting (strength, block weights)."""
        return generate(world, names_, seeds_, steps=steps, adapter=adapter, styles=z, strength=strength,
                        weights=weights)

    styled = draw_styled(job_names, job_seeds, styles[[t for t, _, _ in jobs]])
    base = generate(world, job_names, job_seeds, steps=steps)
    asked = np.array([t for t, _, _ in jobs])
    e_styled, e_base = emb(styled), emb(base)

    report: dict = {"themes": themes, "heldout_names": names, "images_per_theme": len(names) * seeds_per_name,
                    "chance": 1 / len(themes), "steps": steps, "strength": strength, "weights": weights}
    pred_s, pred_b = nearest_theme(e_styled), nearest_theme(e_base)
    held = data.heldout
    # two ceilings: the encoder on real held-out icons at the world's size, and on the same icons
    # after the world's autoencoder (what the best possible latent diffusion could deliver)
    round_trip = world_lib.to_uint8(world.decode(world.encode(world_lib.to_pixels(data.images[held]))))
    held_idx = np.flatnonzero(held)
    report["retrieval_top1"] = {
        "adapter": float((pred_s == asked).mean()), "base": float((pred_b == asked).mean()),
        "real_icons": float((nearest_theme(real[held], held_idx) == data.labels[held]).mean()),
        "autoencoded_icons": float((nearest_theme(emb(round_trip), held_idx) == data.labels[held]).mean())}
    # the base draws one icon per (name, seed) for every theme alike: the controls it gives are fixed
    report["base_note"] = ("the base's icons are the same for all themes asked: its retrieval and trained-pair "
                           "figures are chance by construction, its separability is decided by ties")
    report["retrieval_per_theme"] = {themes[t]: float((pred_s[asked == t] == t).mean()) for t in range(len(themes))}
    if seeds_per_name > 1:  # groups: which of a name's seeds each job is (the innermost loop above)
        seed_index = np.tile(np.arange(seeds_per_name), len(jobs) // seeds_per_name)
        report["style_separability"] = {"adapter": separability(e_styled, asked, seed_index),
                                        "base": separability(e_base, asked, seed_index)}

    z_styled = space.to_components(torch.from_numpy(e_styled)).numpy()
    z_base = space.to_components(torch.from_numpy(e_base)).numpy()
    # a reference a generator could at best hope for: as many of the theme's real icons (other,
    # training-split names), scored the same way (mean of 10 draws)
    fd = {"adapter": [], "base": [], "real_icons": []}
    for t in range(len(themes)):
        target = real_z[(data.labels == t) & data.heldout]
        pool = np.flatnonzero((data.labels == t) & ~data.heldout)
        if len(target) < 3 or len(pool) < 3:
            continue
        fd["adapter"].append(frechet(z_styled[asked == t], target))
        fd["base"].append(frechet(z_base[asked == t], target))
        draws = [rng.choice(pool, min(report["images_per_theme"], len(pool)), replace=False) for _ in range(10)]
        fd["real_icons"].append(np.mean([frechet(real_z[d], target) for d in draws]))
    report["frechet_style_space"] = fds = {k: float(np.mean(v)) for k, v in fd.items()}
    report["frechet_ratio"] = fds["adapter"] / fds["base"]
    report["frechet_ratio_real_icons"] = fds["real_icons"] / fds["base"]

    # slider monotonicity: one component at a time, the others at 0; every name and seed at each value
    per_value = len(job_names) // len(themes)

    def sliders(start: torch.Tensor, sweep_names: list, sweep_seeds: list) -> dict:
        draw = lambda z: draw_styled(sweep_names * len(SWEEP), sweep_seeds * len(SWEEP), z)
        measure = lambda images: space.to_components(torch.from_numpy(emb(images))).numpy()
        return slider_response(draw, measure, start, min(5, space.k))

    alone = sliders(torch.zeros(per_value, space.k), job_names[:per_value], job_seeds[:per_value])
    report["sweep_values"] = list(SWEEP)
    report["sweep_measured"] = alone["measured"]
    report["monotonicity_spearman"] = rhos = alone["spearman"]
    report["sweep_gain"] = alone["gain"]
    # as a user moves them: from each theme's extracted style (one name/seed pair per theme, in turn)
    pairs = [t % per_value for t in range(len(themes))]
    around = sliders(styles.float(), [job_names[i] for i in pairs], [job_seeds[i] for i in pairs])
    report["sweep_around_styles"] = {"measured_offset": around["measured"], "spearman": around["spearman"],
                                     "gain": around["gain"]}

    # trained-pair selection: training names, each real icon's own components, nearest drawing in pixels
    trained = np.flatnonzero(np.isin(np.array(data.names), most_drawn(data, n_names, heldout=False)))
    pair_names = [data.names[i] for i in trained] * seeds_per_name
    pair_seeds = [seed + s for s in range(seeds_per_name) for _ in trained]
    own = space.to_components(torch.from_numpy(emb(data.images[trained]))).repeat(seeds_per_name, 1)
    truth = np.tile(data.labels[trained], seeds_per_name)
    pick = lambda images: float((nearest_drawing(images, pair_names, small, data.names, data.labels) == truth).mean())
    report["trained_pair_selection"] = {
        "adapter": pick(draw_styled(pair_names, pair_seeds, own)),
        "base": pick(generate(world, pair_names, pair_seeds, steps=steps)),
        "chance": float(np.mean([1 / data.names.count(n) for n in pair_names])), "pairs": len(trained)}

    # content: icon-name classifier on pixels (16 px grey), trained on real held-out icons
    def features(images):
        x = world_lib.to_pixels(images, 16).mean(1).flatten(1).numpy()
        return x
    mask = np.isin(np.array(data.names), names)
    clf = LogisticRegression(max_iter=2000, C=0.5).fit(features(small[mask]), np.array(data.names)[mask])
    truth = np.array(job_names)
    report["content_accuracy"] = {"adapter": float((clf.predict(features(styled)) == truth).mean()),
                                  "base": float((clf.predict(features(base)) == truth).mean()),
                                  "chance": 1 / len(names)}
    report["goals"] = goals(report["retrieval_top1"]["adapter"], len(themes), report["frechet_ratio"], rhos)
    report["_images"] = {"styled": styled, "base": base, "asked": asked, "names": job_names}
    return report


def summary_png(report: dict, path) -> None:
    """Left: a styled icon per theme (rows) and held-out name; right: the numbers."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..generate import grid
    imgs = report["_images"]
    themes, names = report["themes"], report["heldout_names"]
    per = report["images_per_theme"]
    cells = imgs["styled"].reshape(len(themes), per, *imgs["styled"].shape[1:])[:, ::max(1, per // len(names))]
    base_row = imgs["base"][:per:max(1, per // len(names))]
    picture = grid(np.concatenate([base_row[None], cells]).reshape(-1, 32, 32, 3), cells.shape[1])
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 8), gridspec_kw={"width_ratios": [1, 1]})
    a.imshow(picture)
    a.set_yticks([2 + 34 * i + 16 for i in range(len(themes) + 1)])
    a.set_yticklabels(["base"] + [t.replace("-icon-theme", "") for t in themes], fontsize=7)
    a.set_xticks([2 + 34 * i + 16 for i in range(cells.shape[1])])
    a.set_xticklabels(names[:cells.shape[1]], rotation=60, fontsize=6)
    a.set_title("held-out names, style of each theme")
    r = report
    listed = lambda values: ", ".join(f"{k} {v:.2f}" for k, v in values.items())
    text = (f"style retrieval top-1: adapter {r['retrieval_top1']['adapter']:.2f}, base {r['retrieval_top1']['base']:.2f} "
            f"(chance {r['chance']:.2f}, real icons {r['retrieval_top1']['real_icons']:.2f}, "
            f"through the autoencoder {r['retrieval_top1']['autoencoded_icons']:.2f})\n"
            f"Frechet (style space): adapter {r['frechet_style_space']['adapter']:.2f}, "
            f"base {r['frechet_style_space']['base']:.2f} (ratio {r['frechet_ratio']:.2f}; "
            f"real icons of other names {r['frechet_ratio_real_icons']:.2f})\n"
            f"content accuracy: adapter {r['content_accuracy']['adapter']:.2f}, base {r['content_accuracy']['base']:.2f}\n"
            "slider Spearman: " + listed(r["monotonicity_spearman"]) +
            "\n  around the styles: " + listed(r["sweep_around_styles"]["spearman"]) +
            "\nslider gain: " + listed(r["sweep_gain"]) +
            "\n  around the styles: " + listed(r["sweep_around_styles"]["gain"]) +
            f"\ntrained-pair selection: adapter {r['trained_pair_selection']['adapter']:.2f}, "
            f"base {r['trained_pair_selection']['base']:.2f} (chance {r['trained_pair_selection']['chance']:.2f})" +
            (f"\nstyle separability: adapter {r['style_separability']['adapter']:.2f}"
             if "style_separability" in r else ""))
    b.axis("off")
    b.text(0, 0.95, text, va="top", fontsize=9, family="monospace", wrap=True)
    inset = b.inset_axes([0.1, 0.1, 0.8, 0.5])
    for k, vals in r["sweep_measured"].items():
        inset.plot(r["sweep_values"], vals, "o-", label=k)
    inset.set_xlabel("component set to")
    inset.set_ylabel("measured on generated icons")
    inset.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args) -> dict:
    from ..adapter import Adapter
    from ..extract import Extractor
    from ..space import StyleSpace
    from . import dataset

    data = dataset.load(args.data)
    report = evaluate(data, world_lib.IconWorld.load(args.world), Adapter.load(args.adapter),
                      Extractor.load(args.extractor), StyleSpace.load(args.space),
                      n_names=args.names, steps=args.steps, strength=args.strength, weights=args.preset)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        summary_png(report, out.with_suffix(".png"))
    report.pop("_images")
    if args.out:
        out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k not in ("retrieval_per_theme", "themes")}, indent=1))
    return report
