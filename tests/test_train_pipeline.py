"""Training pipeline on the drawn fixture, through the real CLI: train (with resume), evaluate,
pca, atlas; plus the PCA round trip through StyleSpace and the atlas files."""

import json
import os

import numpy as np
import pytest
import torch

from icon_fixture import own_accelerator_state, tiny_encoder_args
from style_components import cli
from style_components.extract import Extractor
from style_components.space import StyleSpace
from style_components.train import atlas, config, dataset, encoder, pca

TINY = tiny_encoder_args()


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    """3 steps through `style-components train`, stopped after the first and resumed."""
    run = tmp_path_factory.mktemp("run")
    args = ["train", str(data_dir), str(run), "--steps", "3", "--eval-every", "2", "--save-every", "1", *TINY]
    assert cli.main(args + ["--max-minutes", "1e-9"]) == 0            # stops after step 1, resumable
    first = json.loads((run / "history.json").read_text())
    assert first["step"] == [1] and not (run / "extractor.safetensors").exists()
    assert cli.main(args) == 0                                          # resumes: steps 2 and 3
    return run


def test_train_resumes_and_exports_a_loadable_extractor(trained, data_dir):
    history = json.loads((trained / "history.json").read_text())
    assert history["step"] == [1, 2, 3] and all(np.isfinite(history["loss"]))
    assert history["eval_step"] == [2, 3] and all(0 <= a <= 1 for a in history["eval"])
    assert (trained / "loss.png").stat().st_size > 1000
    ex = Extractor.load(trained / "extractor.safetensors")
    assert ex.dim == 16 and ex.preprocess == config.PREPROCESS_NAME
    data = dataset.load(data_dir)
    e = ex.embed_one(data.images[0])
    assert e.shape == (16,) and torch.isfinite(e).all()
    # the exported weights are the trained ones (fp16-rounded), not a fresh model
    state = torch.load(trained / "checkpoint.pt", weights_only=True)["model"]
    w = "head.weight"
    assert torch.allclose(ex.model.state_dict()[w], state[w].float(), atol=1e-2)


def test_evaluate_pca_and_atlas_commands(trained, data_dir, tmp_path):
    ext = str(trained / "extractor.safetensors")
    assert cli.main(["evaluate", str(data_dir), ext, "--out", str(tmp_path / "report.json")]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    data = dataset.load(data_dir)  # the gallery is the training families only (found by mutation: unchecked)
    assert report["split"]["gallery_images"] == int((~data.heldout).sum()) > 0
    assert report["split"]["query_images"] == int(data.heldout.sum()) > 0
    for key in ("encoder", "encoder_tta", "baseline_handmade"):
        assert 0 <= report[key]["top1_1nn"] <= 1
        assert set(report[key]["per_theme_recall"]) <= set(dataset.load(data_dir).themes)
    assert "accuracy" in report["encoder"]["content_probe"]
    space_path = tmp_path / "space.safetensors"
    assert cli.main(["pca", str(data_dir), ext, str(space_path), "--max-k", "4"]) == 0
    space = StyleSpace.load(space_path)
    assert 1 <= space.k <= 4 and space.d == 16 and len(space.labels) == space.k
    assert all("\u2194" in label for label in space.labels)
    assert json.loads(space_path.with_suffix(".json").read_text())["k"] == space.k
    assert cli.main(["pca", str(data_dir), ext, str(tmp_path / "k99.safetensors"), "--k", "99"]) == 2  # not an IndexError
    assert cli.main(["atlas", str(data_dir), ext, str(space_path), str(tmp_path / "atlas"), "--n", "3"]) == 0
    pngs = sorted(p.name for p in (tmp_path / "atlas").glob("*.png"))
    assert pngs == [f"component_{i + 1:02d}.png" for i in range(space.k)] + ["explained_variance.png"]


def test_train_at_128_px_saves_its_rule_and_the_commands_embed_at_it(data_dir, tmp_path, capsys):
    run = tmp_path / "run128"
    assert cli.main(["train", str(data_dir), str(run), "--steps", "1", "--eval-every", "0", "--size", "128", *TINY]) == 0
    path = run / "extractor.safetensors"
    ex = Extractor.load(path)
    model, size = encoder.load(path)
    assert ex.preprocess == "icon128" and size == 128
    images = dataset.load(data_dir).images                       # 32 px rasters
    embedded = torch.from_numpy(pca.embed_dataset(dataset.load(data_dir), path))   # pca, atlas
    assert torch.equal(embedded, encoder.embed(model, images, size=128, normalize=False))
    assert not torch.allclose(embedded, encoder.embed(model, images, size=64, normalize=False), rtol=0.01)
    # the run-time extractor (PIL cover-and-crop to 128) gives what training saw (torch bicubic), within 3 %
    at_run_time = ex.embed_each(list(images)).float()
    assert ((embedded - at_run_time).norm(dim=1) / at_run_time.norm(dim=1)).max() < 0.03
    capsys.readouterr()
    assert cli.main(["train", str(data_dir), str(tmp_path / "r96"), "--steps", "1", "--size", "96", *TINY]) == 2
    assert capsys.readouterr().err == "style-components: error: --size 96: an icon encoder takes 64, 128, 192 px\n"


def test_train_at_192_px_saves_its_rule(data_dir, tmp_path):
    """192 px (added 2026-12-03: it led 128 px by ~0.05 held-out 1-NN over a 200-step probe, model card)."""
    run = tmp_path / "run192"
    assert cli.main(["train", str(data_dir), str(run), "--steps", "1", "--eval-every", "0", "--size", "192", *TINY]) == 0
    model, size = encoder.load(run / "extractor.safetensors")
    assert Extractor.load(run / "extractor.safetensors").preprocess == "icon192" and size == 192
    images = dataset.load(data_dir).images
    assert encoder.embed(model, images, size=192).shape == (len(images), 16)


def test_pca_round_trip_through_style_space(tmp_path):
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.normal(size=(12, 12)))[0][:4]
    emb = (rng.normal(size=(300, 4)) * [5, 3, 2, 1]) @ basis + rng.normal(size=12) + rng.normal(size=(300, 12)) * 0.01
    fitted, k = pca.fit(emb.astype(np.float32), variance=0.99, max_k=10)
    assert k == 4  # four real directions, the rest is noise
    space = pca.to_space(fitted, k, labels=["a", "b", "c", "d"], extractor="x", name="test")
    space.save(tmp_path / "s.safetensors")
    loaded = StyleSpace.load(tmp_path / "s.safetensors")
    assert loaded.labels == ("a", "b", "c", "d") and (loaded.extractor, loaded.name) == ("x", "test")
    for field in ("mean", "components", "std"):
        assert torch.equal(getattr(loaded, field), getattr(space, field))
    e = torch.tensor(emb, dtype=torch.float32)
    z = loaded.to_components(e)
    # unit variance per slider, sklearn's transform divided by std, and back to the embeddings
    assert torch.allclose(z.std(0), torch.ones(4), atol=0.02)
    assert np.allclose(z.numpy() * loaded.std.numpy(), fitted.transform(emb)[:, :4], atol=1e-3)
    assert torch.allclose(loaded.to_embedding(z), e, atol=0.05)


def test_choose_k_and_labels():
    assert pca.choose_k(np.array([0.5, 0.3, 0.15, 0.05]), 0.9, 30) == 3
    assert pca.choose_k(np.array([0.5, 0.3, 0.15, 0.05]), 0.9, 2) == 2
    assert pca.choose_k(np.array([0.5, 0.4, 0.1]), 0.9, 30) == 2  # exactly the target is enough
    scores = np.array([[-2.0], [-1.0], [1.0], [2.0]])
    stats = np.array([[0.1, 0, 0, 0, 0, 0], [0.2, 0, 0, 0, 0, 0], [0.7, 0, 0, 0, 0, 0], [0.9, 0, 0, 0, 0, 0]])
    labels = pca.component_labels(scores, np.array([0, 0, 1, 1]), ["dark-icon-theme", "light-icon-theme"], stats)
    assert labels == ["dark \u2194 light (more brightness)"]


def test_atlas_files(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 255, size=(20, 16, 16, 3), dtype=np.uint8)
    emb = torch.tensor(rng.normal(size=(20, 6)), dtype=torch.float32)
    fitted, k = pca.fit(emb.numpy(), k=3)
    space = pca.to_space(fitted, k, labels=["first", "", "third"])
    files = atlas.make(images, emb, space, tmp_path, n=4, names=[f"n{i}" for i in range(20)])
    assert [f.name for f in files] == ["component_01.png", "component_02.png", "component_03.png",
                                       "explained_variance.png", "atlas.json"]
    from PIL import Image
    with Image.open(files[0]) as im:
        assert im.size[0] == 2 * 4 * 16 + 16
    shown = json.loads(files[-1].read_text())
    z = space.to_components(emb).numpy()
    assert [r["index"] for r in shown[0]["low"]] == list(np.argsort(z[:, 0])[:4])
    assert shown[1]["label"] == "Style component 2"


def test_small_metrics_found_unguarded_by_mutation():
    from style_components.train import evaluate, fit, loop
    # 1-NN takes the most similar gallery image
    assert fit.knn_top1(torch.eye(2), [0, 1], torch.eye(2), [0, 1]) == 1.0
    assert fit.knn_top1(torch.eye(2), [0, 1], torch.tensor([[0.9, 0.1]]), [1]) == 0.0
    # confusions list only the wrong predictions
    assert evaluate.confusions(np.array([0, 1]), np.array([0, 0]), ["a", "b"]) == \
        [{"true": "b", "predicted": "a", "count": 1}]
    # each step and process draws its own batch; the same step draws the same one (resume)
    draw = lambda *a: loop.batch_rng(*a).integers(1 << 30, size=8)  # noqa: E731
    assert not np.array_equal(draw(0, 0), draw(0, 1)) and not np.array_equal(draw(0, 1), draw(0, 1, 1))
    assert np.array_equal(draw(3, 5, 1), draw(3, 5, 1))


def test_training_draws_no_held_out_image(data_dir, tmp_path, monkeypatch):
    """Found by mutation: nothing checked that the encoder's batches come from the training
    families only (held-out families are the evaluation's queries)."""
    from style_components.train import fit
    seen, real = [], fit.balanced_batch
    monkeypatch.setattr(fit, "balanced_batch", lambda rng, by_theme, *a: seen.append(
        sum(len(b) for b in by_theme)) or real(rng, by_theme, *a))
    assert cli.main(["train", str(data_dir), str(tmp_path / "run"), "--steps", "1", "--fp32", *TINY]) == 0
    data = dataset.load(data_dir)
    assert seen == [int((~data.heldout).sum())] and data.heldout.any()


def test_augment_keeps_colours_and_background():
    x = encoder.to_input(np.full((2, 16, 16, 3), 255, np.uint8))
    out = encoder.augment(x, torch.Generator().manual_seed(0))
    assert torch.allclose(out, x, atol=1e-5)  # an all-background image stays background
    icon = np.full((1, 16, 16, 3), 255, np.uint8)
    icon[0, 4:12, 4:12] = (200, 30, 30)
    y = encoder.augment(encoder.to_input(icon), torch.Generator().manual_seed(1), scale=(1.0, 1.0), shift=0.0,
                        flip=1.0)
    assert torch.allclose(y, encoder.to_input(icon[:, :, ::-1].copy()), atol=1e-4)  # a pure flip
    # a zoom grows the icon in both directions (found by mutation: the vertical one was unchecked)
    z = encoder.augment(encoder.to_input(icon), torch.Generator().manual_seed(1), scale=(2.0, 2.0), shift=0.0,
                        flip=0.0)
    coloured = (z - encoder.to_input(np.full((1, 16, 16, 3), 255, np.uint8))).abs().sum(1)[0] > 0.5
    rows, cols = coloured.any(1).sum().item(), coloured.any(0).sum().item()
    assert rows > 8 and cols > 8 and abs(rows - cols) <= 1


def test_low_res_views_are_the_icon_shrunk_and_scaled_back_as_to_input_scales_a_small_icon():
    rng = np.random.default_rng(0)
    icons = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    x = encoder.to_input(icons, 32)
    assert torch.equal(encoder.low_res(x, torch.Generator().manual_seed(0), p=0.0), x)
    # every view at half the side: exactly what `to_input` makes of the 16 px area average
    halved = torch.from_numpy(icons).permute(0, 3, 1, 2).float()
    halved = torch.nn.functional.avg_pool2d(halved, 2).permute(0, 2, 3, 1).numpy()
    shrunk = encoder.low_res(x, torch.Generator().manual_seed(0), p=1.0, smallest=16)
    assert torch.allclose(shrunk, encoder.to_input(halved, 32), atol=1e-5)
    # a fraction of the views, each at a side in [smallest, S/2], within to_input's range
    x = encoder.to_input(rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8), 32)
    some = encoder.low_res(x, torch.Generator().manual_seed(3), p=0.5, smallest=8)
    changed = (some != x).flatten(1).any(1)
    assert 0 < changed.sum() < len(x) and torch.equal(some[~changed], x[~changed])
    lo, hi = encoder.to_input(np.zeros((1, 1, 1, 3), np.uint8), 1), encoder.to_input(np.full((1, 1, 1, 3), 255, np.uint8), 1)
    assert (some >= lo - 1e-6).all() and (some <= hi + 1e-6).all()


def test_train_low_res_option_is_wired_and_checked(data_dir, tmp_path, capsys):
    losses = {}
    for p in ("0", "1"):
        run = tmp_path / p
        with own_accelerator_state():
            assert cli.main(["train", str(data_dir), str(run), "--steps", "2", "--eval-every", "0", "--fp32",
                             "--low-res", p, *TINY]) == 0
        losses[p] = json.loads((run / "history.json").read_text())["loss"]
    assert losses["0"] != losses["1"]          # the same batches, other views
    with own_accelerator_state():              # a resume must not change the views' rule
        assert cli.main(["train", str(data_dir), str(tmp_path / "1"), "--steps", "3", "--eval-every", "0",
                         "--fp32", *TINY]) == 2
    assert "low_res" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["train", str(data_dir), str(tmp_path / "x"), "--low-res", "1.5", *TINY])


@pytest.mark.parametrize("argv, message", [
    (["pca", "d", "e.safetensors", "o.safetensors", "--variance", "90"], "90.0 is not a fraction between 0 and 1"),
    (["train-base", "d", "r", "--autoencoder", "a", "--caption-dropout", "1.5"], "1.5 is not a fraction"),
    (["train", "d", "r", "--temperature", "0"], "0.0 is not a number above 0"),
    (["train", "d", "r", "--temperature", "nan"], "nan is not a number above 0"),
])
def test_fractions_and_divisors_are_checked_when_parsed(argv, message, capsys):
    """Found in review: `--variance 90` (meaning 90 %) kept max-k components, `--caption-dropout 1.5`
    trained a base that never saw a name, `--temperature 0` divided by zero: all without a word."""
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(argv)
    assert message in capsys.readouterr().err


def test_style_statnet_is_a_timm_model_pooling_statistics():
    import timm
    assert timm.is_model(encoder.ARCHITECTURE)
    model = encoder.build(encoder.ARCHITECTURE, encoder.model_kwargs(dim=8, width=4, depth=1)).eval()
    assert model.num_classes == 8 and model.num_features == 2 * (3 + 4 + 8 + 16 + 32)
    x = torch.randn(3, 3, 32, 32)
    assert model(x).shape == (3, 8)
    # the first six pooled values are the input's per-channel mean and std (through the eval BatchNorm)
    feats = model.forward_features(x)
    raw = torch.cat([x.flatten(2).mean(-1), x.flatten(2).std(-1, unbiased=False)], 1)
    bn = model.norm
    want = (raw - bn.running_mean[:6]) / torch.sqrt(bn.running_var[:6] + bn.eps) * bn.weight[:6] + bn.bias[:6]
    assert torch.allclose(feats[:, :6], want, atol=1e-4)
    # statistics pool over positions: a horizontally flipped image gives the same input statistics
    assert torch.allclose(model.forward_features(x.flip(-1))[:, :6], feats[:, :6], atol=1e-5)


def test_statnet_convolves_channels_last_with_the_same_result(monkeypatch):
    """Channels-last is a speed setting (benchmarks/encoder_step.py): the stages run in it, and the
    embedding is the contiguous layout's to float rounding, in training and in eval mode."""
    from style_components import stylenet
    model = encoder.build(encoder.ARCHITECTURE, encoder.model_kwargs(dim=8, width=4, depth=1))
    x = torch.randn(4, 3, 32, 32)
    layouts = []
    model.stages[0].register_forward_hook(
        lambda m, i, out: layouts.append(out.is_contiguous(memory_format=torch.channels_last)))
    for train in (True, False):
        model.train(train)
        fast = model(x)
        monkeypatch.setattr(stylenet, "MEMORY_FORMAT", torch.contiguous_format)
        plain = model(x)
        monkeypatch.setattr(stylenet, "MEMORY_FORMAT", torch.channels_last)
        assert torch.allclose(fast, plain, atol=1e-5) and not torch.equal(fast, torch.zeros_like(fast))
    assert layouts == [True, False, True, False]


def test_train_in_bf16_autocast_on_the_cpu(data_dir, tmp_path):
    """`--mixed-precision bf16`: the encoder's convolutions in bf16 (1.5x a step on a CPU with
    avx512_bf16, benchmarks/encoder_step.py), the loss and the exported extractor in float."""
    losses = {}
    for precision in ("bf16", "no"):
        run = tmp_path / precision
        args = ["train", str(data_dir), str(run), "--steps", "2", "--eval-every", "2", "--mixed-precision", precision, *TINY]
        with own_accelerator_state():
            assert cli.main(args) == 0
        history = json.loads((run / "history.json").read_text())
        assert all(np.isfinite(history["loss"])) and 0 <= history["eval"][0] <= 1
        losses[precision] = np.array(history["loss"])
    # the same seed's batches: bf16 rounding moves the loss (so autocast ran), a little
    assert not np.array_equal(losses["bf16"], losses["no"])
    assert np.allclose(losses["bf16"], losses["no"], rtol=0.05)
    run = tmp_path / "bf16"
    ex = Extractor.load(run / "extractor.safetensors")
    assert torch.isfinite(ex.embed_one(dataset.load(data_dir).images[0])).all()


def test_statnet_mlp_head_saves_and_loads_through_the_extractor_format(tmp_path):
    kwargs = encoder.model_kwargs(dim=8, width=4, depth=1, hidden=12)
    assert kwargs["hidden"] == 12 and "hidden" not in encoder.model_kwargs(dim=8, width=4, depth=1)
    model = encoder.build(encoder.ARCHITECTURE, kwargs).eval()
    assert [type(m).__name__ for m in model.head] == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert model.head[0].out_features == 12 and model(torch.randn(2, 3, 32, 32)).shape == (2, 8)
    Extractor.save(model, tmp_path / "e.safetensors", encoder.ARCHITECTURE, kwargs, config.PREPROCESS_NAME)
    loaded = Extractor.load(tmp_path / "e.safetensors")
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(loaded.model(x), model(x), atol=1e-5)
    # the training commands embed icons only with an icon encoder's rule: another is named, not guessed
    Extractor.save(model, tmp_path / "v02.safetensors", encoder.ARCHITECTURE, kwargs, "v0.2")
    with pytest.raises(ValueError, match=r"preprocessing 'v0.2' is not an icon encoder's \(icon64, icon128, icon192\)"):
        encoder.load(tmp_path / "v02.safetensors")


# --- evaluate.py's metrics on data built so that the answer is known ------------------------

def clusters(n_per: int, centres: np.ndarray, spread: float, seed: int):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(centres)), n_per)
    return (centres[labels] + spread * rng.normal(size=(len(labels), centres.shape[1]))).astype(np.float32), labels


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_knn_predict_finds_the_nearest_neighbours(metric):
    from style_components.train.evaluate import knn_predict
    centres = 10 * np.eye(4, 6)  # four directions, far apart in angle and in distance
    gallery, gy = clusters(10, centres, 0.5, seed=0)
    query, qy = clusters(5, centres, 0.5, seed=1)
    for k in (1, 5):
        assert np.array_equal(knn_predict(gallery, gy, query, k, metric), qy)  # well separated: all right
    # one query beside one gallery image of label 0, far from the four of label 1: the nearest decides 1-NN,
    # the majority 5-NN
    gallery = np.array([[1.0, 0.0], [0.0, 1.0], [0.05, 1.0], [0.1, 1.0], [0.15, 1.0]], np.float32)
    gy, query = np.array([0, 1, 1, 1, 1]), np.array([[1.0, 0.02]], np.float32)
    assert knn_predict(gallery, gy, query, 1, metric).tolist() == [0]
    assert knn_predict(gallery, gy, query, 5, metric).tolist() == [1]
    # a tie (one vote each) goes to the nearest; k above the gallery size uses the whole gallery
    tie_g, tie_y = np.array([[0.0, 1.0], [1.0, 0.1], [1.0, 0.5]], np.float32), np.array([7, 8, 9])
    assert knn_predict(tie_g, tie_y, np.array([[1.0, 0.0]], np.float32), 3, metric).tolist() == [8]
    assert knn_predict(tie_g, tie_y, np.array([[1.0, 0.0]], np.float32), 50, metric).tolist() == [8]


def test_knn_cosine_ignores_length_euclidean_does_not():
    from style_components.train.evaluate import knn_predict
    gallery, gy = np.array([[1.0, 0.0], [10.0, 1.0]], np.float32), np.array([0, 1])
    query = np.array([[10.0, 0.0]], np.float32)  # same direction as label 0, nearer in space to label 1
    assert knn_predict(gallery, gy, query, 1, "cosine").tolist() == [0]
    assert knn_predict(gallery, gy, query, 1, "euclidean").tolist() == [1]


def names_and_themes(themes: int, names: int):
    """Every theme draws every name once: labels (themes) and names are independent."""
    labels = np.repeat(np.arange(themes), names)
    return labels, [f"name{i}" for i in np.tile(np.arange(names), themes)]


def test_content_probe_reads_names_only_from_features_that_carry_them():
    from style_components.train.evaluate import content_probe
    labels, names = names_and_themes(20, 8)
    name_ids = np.array([int(n[4:]) for n in names])
    rng = np.random.default_rng(0)
    # features that draw the name (one-hot + noise): the probe reads it on themes it never saw
    carry = np.eye(8)[name_ids] + 0.1 * rng.normal(size=(len(names), 8))
    got = content_probe(carry, labels, names)
    assert got["accuracy"] == 1.0 and got["sd"] == 0.0 and got["names"] == 8 and got["splits"] == 20
    assert got["chance"] == pytest.approx(1 / 8)
    # features of the theme alone (and noise), independent of the name: chance level
    theme_only = np.eye(20)[labels] + 0.1 * rng.normal(size=(len(names), 20))
    blind = content_probe(theme_only, labels, names)
    assert blind["chance"] == pytest.approx(1 / 8) and blind["accuracy"] <= blind["chance"] + 0.15
    noise = content_probe(rng.normal(size=(len(names), 8)), labels, names)
    assert noise["accuracy"] <= noise["chance"] + 0.15
    # a name drawn by one theme only cannot be tested on unseen themes
    assert content_probe(carry[:8], labels[:8], names[:8]) == {"accuracy": None, "chance": None, "splits": 0}
    # found in review: one split of the themes is one draw (0.04 to 0.13 for the shipped encoder):
    # the figure is the mean over splits, each split one draw of it
    from style_components.train.evaluate import _content_probe_once
    half = 0.3 * carry + rng.normal(size=carry.shape)
    once = [_content_probe_once(half, labels, names, seed)["accuracy"] for seed in range(20)]
    assert content_probe(half, labels, names)["accuracy"] == pytest.approx(np.mean(once)) and np.std(once) > 0


def test_handmade_features_measure_colour_size_and_outline():
    from style_components.train.evaluate import handmade_features
    images = np.full((4, 32, 32, 3), 255, np.uint8)      # white: the background, excluded
    images[0, 8:24, 8:24] = (255, 0, 0)                  # red 16x16 square
    images[1, 8:24, 8:24] = (0, 0, 255)                  # the same square in blue
    images[2, 4:28, 4:28] = (255, 0, 0)                  # a bigger red square
    images[3, 8:24, 8:24] = (0, 0, 0)                    # a black (outline-dark) square
    f = handmade_features(images)
    rgb, hue = f[:, :64], f[:, 64:76]
    mean, std, (fg, grad, dark) = f[:, 76:81], f[:, 81:86], f[:, 86:89].T
    assert f.shape == (4, 89) and np.isfinite(f).all()
    # the colour is seen: all red pixels in the red bin (3, 0, 0), blue in (0, 0, 3); hue red = bin 0, blue = bin 8
    assert rgb[0, 48] == pytest.approx(1.0) and rgb[0].sum() == pytest.approx(1.0)
    assert rgb[1, 3] == pytest.approx(1.0) and rgb[1].sum() == pytest.approx(1.0)
    assert hue[0, 0] == pytest.approx(1.0) and hue[1, 8] == pytest.approx(1.0) and hue[3].sum() == 0
    assert mean[0].tolist() == pytest.approx([1, 0, 0, 1, 1]) and mean[1].tolist() == pytest.approx([0, 0, 1, 1, 1])
    assert std[:3] == pytest.approx(0, abs=1e-6)          # flat squares, background excluded
    # the size is seen: foreground fraction, and the colour features ignore it
    assert fg.tolist() == pytest.approx([0.25, 0.25, 24 * 24 / 1024, 0.25])
    assert f[2, :86] == pytest.approx(f[0, :86]) and grad[2] > 0 and grad[2] != pytest.approx(grad[0])
    # dark (outline) pixels: the black square only
    assert dark.tolist() == pytest.approx([0, 0, 0, 1])
    # an icon of background alone has no colour at all
    assert handmade_features(np.full((1, 8, 8, 3), 255, np.uint8))[0, :86] == pytest.approx(0)


def test_device_script_packs_the_dataset_trains_stops_and_resumes_from_returned_files(data_dir, tmp_path):
    """tools/device_encoder.sh is the one prepared call for a lent GPU: the dataset travels packed,
    a run stopped by MINUTES comes back as files and resumes from them in a later call. Here on the
    CPU with the fixture (the recipe's options overridden after it)."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path
    repo = tmp_path / "repo"
    (repo / "tools").mkdir(parents=True)
    script = repo / "tools" / "device_encoder.sh"
    shutil.copy(Path(__file__).parents[1] / "tools" / "device_encoder.sh", script)
    env = {**os.environ, "PYTHON": sys.executable, "TMPDIR": str(tmp_path),
           "PYTHONPATH": str(Path(__file__).parents[1])}

    def call(*args, out=None):
        if out is not None:
            out.mkdir()
        return subprocess.run(["bash", str(script), *args], capture_output=True, text=True,
                              env={**env, **({"OUT": str(out)} if out else {})})

    assert call("pack", str(data_dir)).returncode == 0
    assert (repo / ".gpu" / "dataset.tar.xz").stat().st_size > 0
    assert call("pack", str(tmp_path)).returncode == 2                 # no dataset there: usage, no archive
    tiny = ["--size", "64", "--eval-every", "1", "--fp32", *TINY]
    first = call("train", "3", "1e-9", *tiny, out=tmp_path / "out1")  # stops after step 1
    assert first.returncode == 0, first.stderr
    assert "stopped after --max-minutes at step 1/3" in first.stdout
    returned = {p.name for p in (tmp_path / "out1").iterdir()}
    assert returned == {"history.json", "loss.png", "checkpoint.pt"}, returned
    shutil.copytree(tmp_path / "out1", repo / ".gpu" / "run")
    second = call("train", "3", "60", *tiny, out=tmp_path / "out2")
    assert second.returncode == 0, second.stderr
    assert "resumed from" in second.stdout and "at step 1" in second.stdout
    history = json.loads((tmp_path / "out2" / "history.json").read_text())
    assert history["step"] == [1, 2, 3] and history["eval_step"] == [1, 2, 3]
    extractor = Extractor.load(tmp_path / "out2" / "extractor.safetensors")
    assert extractor.dim == 16 and extractor.preprocess == config.PREPROCESS_NAME   # the 64 px rule
    failed = call("train", "3", "60", "--width", "0", out=tmp_path / "out3")
    assert failed.returncode == 2 and "--width" in failed.stderr     # the command's own code comes back
