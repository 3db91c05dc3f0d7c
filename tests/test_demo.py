"""The main job on the shipped demo models (models/demo): `demo`, `generate`, and the
properties a user relies on: determinism per seed, strength 0 == base bit for bit, a slider
that moves what it says it moves."""

import numpy as np
import pytest
import torch
from PIL import Image

from style_components import cli, demo
from style_components.demo import DEMO_DIR, NAMES, DemoModels
from style_components.generate import generate, scheduler


@pytest.fixture(scope="module")
def models():
    return DemoModels()


def test_demo_command_writes_the_grid(tmp_path, capsys):
    out = tmp_path / "demo.png"
    assert cli.main(["demo", "--out", str(out), "--steps", "8"]) == 0
    assert str(out.resolve()) in capsys.readouterr().out
    image = Image.open(out)
    refs = len([d for d in (DEMO_DIR / "references").iterdir() if d.is_dir()])
    columns = 1 + refs + 1 + 5  # base, themes, random, 5-step sweep
    cell = 32 * 2 + 2
    assert image.size == (100 + columns * cell + 2, 16 + len(NAMES) * cell + 2)
    pixels = np.asarray(image)
    assert pixels.std() > 10  # icons drawn, not a blank sheet


def test_demo_and_generate_read_another_models_folder(tmp_path, capsys):
    """A world trained by the user: the same four files in another folder, its own references."""
    import shutil
    folder = tmp_path / "my_world"
    folder.mkdir()
    for name in ("icon_world", "icon_style_adapter", "icon_style_extractor", "icon_style_space"):
        (folder / f"{name}.safetensors").symlink_to(DEMO_DIR / f"{name}.safetensors")
    theme = sorted(d for d in (DEMO_DIR / "references").iterdir() if d.is_dir())[0]
    shutil.copytree(theme, folder / "references" / "my-theme")
    out = tmp_path / "demo.png"
    assert cli.main(["demo", "--models", str(folder), "--out", str(out), "--steps", "2"]) == 0
    cell = 32 * 2 + 2
    assert Image.open(out).size[0] == 100 + (1 + 1 + 1 + 5) * cell + 2  # base, my-theme, random, sweep
    assert cli.main(["generate", "folder", "--models", str(folder), "--n", "1", "--steps", "2",
                     "--out", str(tmp_path / "g.png")]) == 0
    capsys.readouterr()
    assert cli.main(["demo", "--models", str(tmp_path / "nothing"), "--out", str(out)]) != 0
    assert "icon_world.safetensors: file not found" in capsys.readouterr().err


def test_the_reference_icons_draw_other_subjects_than_the_rows():
    """A style column must show a theme's manner on new subjects, not a copy of its reference."""
    references = sorted((DEMO_DIR / "references").glob("*/*.png"))
    assert len(references) >= 10
    assert not {p.stem for p in references} & set(NAMES)


def test_demo_strength_reaches_every_styled_column(tmp_path):
    """--strength 0: every styled cell is the base cell of its row; the default differs. The base
    column is drawn in a batch of its own (6 icons, the styled ones in one of 66), and batch maths
    may round differently by a level on some CPUs (seen 2026-12-02: 11 of 66 cells off by 1), so
    this allows one level; test_strength_zero_is_the_base_bit_for_bit holds the bits in one batch."""
    cell, grids = 32 * 2 + 2, {}
    for strength in ("0", None):
        out = tmp_path / f"demo_{strength}.png"
        args = ["demo", "--out", str(out), "--steps", "4"] + (["--strength", strength] if strength else [])
        assert cli.main(args) == 0
        pixels = np.asarray(Image.open(out))[16:, 100:]
        columns = (pixels.shape[1] - 2) // cell
        grids[strength] = [pixels[:, c * cell:(c + 1) * cell + 2] for c in range(columns)]
    assert all(np.abs(col.astype(int) - grids["0"][0]).max() <= 1 for col in grids["0"][1:])
    assert np.array_equal(grids[None][0], grids["0"][0])            # the base column ignores strength
    assert all(np.abs(col.astype(int) - grids[None][0]).mean() > 1 for col in grids[None][1:])


def test_same_seed_same_icon_whatever_the_batch(models):
    a = generate(models.world, ["folder", "user-trash"], [3, 4], steps=6)
    b = generate(models.world, ["folder", "user-trash"], [3, 4], steps=6)
    assert np.array_equal(a, b)
    c = generate(models.world, ["computer", "folder"], [9, 3], steps=6)
    assert np.abs(c[1].astype(int) - a[0].astype(int)).max() <= 2  # batch maths may round differently
    assert np.abs(a[0].astype(int) - a[1].astype(int)).mean() > 5   # and seeds/names do matter


@pytest.mark.parametrize("kind", ["dpm", "ddim"])
def test_each_sampler_returns_the_latent_an_exact_denoiser_knows(kind):
    # the world's latents have unit variance, so many values lie outside [-1, 1]: a sampler that
    # clips its x0 estimate there (DDIM's default, meant for pixels) flattens every sample
    x0 = 2 * torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    sched = scheduler(kind)
    sched.set_timesteps(10)
    latents = sched.add_noise(x0, noise, sched.timesteps[:1]) if kind == "ddim" else noise * sched.init_noise_sigma
    for t in sched.timesteps:
        # v of the one trajectory that starts at noise and ends at x0
        ab = sched.alphas_cumprod[t]
        eps = (latents - ab.sqrt() * x0) / (1 - ab).sqrt()
        latents = sched.step(ab.sqrt() * eps - (1 - ab).sqrt() * x0, t, latents).prev_sample
    assert torch.allclose(latents, x0, atol=1e-3)


def test_strength_zero_is_the_base_bit_for_bit(models):
    z = torch.ones(2, models.space.k)
    base = generate(models.world, ["folder", "computer"], [1, 2], steps=6)
    off = generate(models.world, ["folder", "computer"], [1, 2], steps=6, adapter=models.adapter, styles=z,
                   strength=0.0)
    on = generate(models.world, ["folder", "computer"], [1, 2], steps=6, adapter=models.adapter, styles=z)
    assert np.array_equal(base, off)
    assert np.abs(on.astype(int) - base.astype(int)).mean() > 2


def test_generate_command_from_components_and_references(tmp_path, capsys):
    out = tmp_path / "g.png"
    assert cli.main(["generate", "folder", "printer", "--components", "1.5, -1", "--n", "2", "--steps", "4",
                     "--out", str(out)]) == 0
    grid = np.asarray(Image.open(out))
    assert grid.shape[:2] == (2 * 66 + 2, 2 * 66 + 2)
    assert differ(grid[:67], grid[67:]) > 1  # --n 2: the second row has its own seed (found by mutation)
    assert "components: 1.50, -1.00, 0.00" in capsys.readouterr().out
    refs = sorted((DEMO_DIR / "references").iterdir())[0].glob("*.png")
    assert cli.main(["generate", "folder", "--ref", *map(str, refs), "--n", "1", "--steps", "4",
                     "--preset", "style", "--start", "0.2", "--out", str(out)]) == 0
    assert cli.main(["generate", "folder", "--components", "1", "--ref", "x.png", "--out", str(out)]) == 2


STEPS = 3  # the style is switched per step, at progress 0, 1/3, 2/3


@pytest.fixture(scope="module")
def icon(models, tmp_path_factory):
    """`generate folder` (one icon, seed 0, no zoom) with extra arguments -> the icon's pixels;
    the CLI runs on the module's loaded models (loading them is test_demo_command's), each
    argument list once."""
    folder, drawn = tmp_path_factory.mktemp("generate"), {}

    def run(*args: str) -> np.ndarray:
        if args not in drawn:
            out = folder / f"icon{len(drawn)}.png"
            argv = ["generate", "folder", "--n", "1", "--steps", str(STEPS), "--zoom", "1", *args, "--out", str(out)]
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(demo, "DemoModels", lambda *_: models)
                assert cli.main(argv) == 0
            drawn[args] = np.asarray(Image.open(out))[2:-2, 2:-2]  # the 32 px icon inside the grid's padding
        return drawn[args]
    return run


def differ(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(int) - b.astype(int)).mean())


def test_generate_references_give_their_own_style(icon, models):
    """--ref is the style of those images: two themes draw differently, and --ref equals its own
    component values typed into --components, bit for bit."""
    themes = sorted(d for d in (DEMO_DIR / "references").iterdir() if d.is_dir())
    refs = [sorted(map(str, d.glob("*.png"))) for d in (themes[0], themes[-1])]
    base = icon()
    first, last = icon("--ref", *refs[0]), icon("--ref", *refs[1])
    assert first.shape == (32, 32, 3)
    assert differ(first, last) > 1 and differ(first, base) > 1 and differ(last, base) > 1
    z = models.space.to_components(models.extractor.embed(refs[0], [1.0] * len(refs[0])))  # as --ref computes it
    assert np.array_equal(icon("--components", ", ".join(repr(v) for v in z.tolist())), first)
    # IMG:WEIGHT weighs that image (found by mutation: only equal weights were checked)
    a, b = refs[0][0], refs[1][0]
    weighted = icon("--ref", a + ":3", b)
    z = models.space.to_components(models.extractor.embed([a, b], [3.0, 1.0]))
    assert np.array_equal(icon("--components", ", ".join(repr(v) for v in z.tolist())), weighted)
    assert differ(weighted, icon("--ref", a, b)) > 0.2


def test_generate_start_end_and_preset_act_on_the_sampling(icon, models):
    """--end 0.6 turns the style off for the last steps; --start 1 never turns it on (the base, bit for
    bit); --preset style is the style on the up.1 blocks only, as generate() draws it."""
    style = ["--components", "2, -1.5, 1"]
    base, full = icon(), icon(*style)
    assert differ(full, base) > 1
    early = icon(*style, "--end", "0.6")  # off for the last step
    assert differ(early, full) > 0.2 and differ(early, base) > 0.2
    assert np.array_equal(icon(*style, "--start", "1"), base)
    preset = icon(*style, "--preset", "style")
    assert differ(preset, full) > 0.2 and differ(preset, base) > 0.2
    from style_components.demo import STRENGTH
    from style_components.generate import grid
    from style_components.layers import find_attn2
    up1 = [1.0 if layer.block.startswith("up.1.") else 0.0 for layer in find_attn2(models.world.unet)]
    assert 0 < sum(up1) < len(up1)
    z = torch.zeros(1, models.space.k)
    z[0, :3] = torch.tensor([2.0, -1.5, 1.0])
    typed = generate(models.world, ["folder"], [0], steps=STEPS, adapter=models.adapter, styles=z,
                     strength=STRENGTH, weights=up1)
    assert np.array_equal(grid(typed, 1)[2:-2, 2:-2], preset)


def test_the_schedule_and_the_sweep_are_what_they_say(models, monkeypatch):
    """Found by mutation: generate's progress (what start/end read) and demo's --component were
    only checked against themselves."""
    from style_components.inject import StyleHandle
    seen, real = [], StyleHandle.set_progress
    monkeypatch.setattr(StyleHandle, "set_progress", lambda self, f: seen.append(f) or real(self, f))
    generate(models.world, ["folder"], [0], steps=3, adapter=models.adapter, styles=torch.ones(1, models.space.k))
    assert seen == [0.0, 1 / 3, 2 / 3]
    sweep = [z for title, z in demo.columns(models, 0, 2) if title.startswith("c3 ")]
    assert len(sweep) == len(demo.SWEEP)
    assert all(z[2] == v and z.abs().sum() == abs(v) for z, v in zip(sweep, demo.SWEEP))


def test_a_slider_moves_what_it_measures(models):
    """Component 1 (paper <-> moka) set to -2, 0, +2 (others 0) at the demo's strength: the style
    encoder measures component 1 of the generated icons rising (evaluate --adapter at strength 1.5:
    Spearman 0.9 over 8 held-out names x 2 seeds; here -1.37, -1.21, -1.13). At strength 1 these
    four names measure -1.30, -1.20, -1.32: the slider is monotone there only over the held-out
    protocol (fidelity.json), so the test holds the product's default. Tolerance: the +2 mean
    exceeds the -2 mean by 0.2 and the middle lies between, on 4 names. (Until the default moved
    from 2 to 1.5 on 2026-12-03 the margin was 0.25; at 2 these names measure -1.44, -1.23, -1.05.)"""
    from style_components.demo import STRENGTH

    k, names = 0, ["folder", "computer", "printer", "go-next"]
    measured = []
    for value in (-2.0, 0.0, 2.0):
        z = torch.zeros(len(names), models.space.k)
        z[:, k] = value
        images = generate(models.world, names, range(len(names)), steps=20, adapter=models.adapter, styles=z,
                          strength=STRENGTH)
        measured.append(float(models.space.to_components(models.extractor.embed_each(list(images)))[:, k].mean()))
    low, mid, high = measured
    assert low < mid < high and high - low > 0.2, measured


@pytest.mark.parametrize("argv, message", [
    (["demo", "--component", "15"], "component 15: the style space has components 1 to 14"),
    (["demo", "--component", "0"], "argument --component: 0 is not a whole number of 1 or more"),
    (["generate", "folder", "--n", "0"], "argument --n: 0 is not a whole number of 1 or more"),
    (["generate", "folder", "--preset", "bogus"], "argument --preset: invalid choice: 'bogus'"),
    (["generate", "folder", "--out", "x.jpgx"], "x.jpgx: not an image file name Pillow can write"),
    (["generate", "folder", "--components", "1", "--start", "0.8", "--end", "0.2", "--steps", "1"],
     "style range 0.8-0.2: need 0 <= start <= end <= 1"),
    # found in review: without a style these were ignored and the base drawn, exit 0
    (["generate", "folder", "--strength", "2"], "--strength: only with a style (give --components or --ref)"),
    (["generate", "folder", "--preset", "style", "--end", "0.5"],
     "--preset, --end: only with a style (give --components or --ref)"),
])
def test_wrong_demo_and_generate_arguments_are_one_line(argv, message, tmp_path, capsys):
    """Found in review: each of these was a traceback (or, for --component 0, a sweep of the last
    component labelled c0), some after generating for a while."""
    out = [] if "--out" in argv else ["--out", str(tmp_path / "x.png")]
    try:
        code = cli.main(argv + out)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "x.png").exists()


def test_generate_writes_into_a_new_folder_and_ctrl_c_is_one_line(tmp_path, capsys, monkeypatch):
    """Found in review: `generate --out results/a.png` failed after generating when results/ did not
    exist; Ctrl-C printed a 75-line traceback."""
    out = tmp_path / "results" / "a.png"
    assert cli.main(["generate", "folder", "--n", "1", "--steps", "1", "--out", str(out)]) == 0 and out.exists()
    import style_components.generate as gen_module

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(gen_module, "generate", interrupted)
    capsys.readouterr()
    assert cli.main(["generate", "folder", "--n", "1", "--steps", "1", "--out", str(tmp_path / "b.png")]) == 130
    assert capsys.readouterr().err == "style-components: interrupted\n"


@pytest.mark.parametrize("argv, message", [
    (["generate", "folder", "--guidance", "nan"], "argument --guidance: nan is not a finite number"),
    (["generate", "folder", "--steps", "2000"], "argument --steps: 2000: at most 1000"),
])
def test_sampler_arguments_a_model_cannot_take_are_refused(argv, message, capsys):
    """Found in review: --guidance nan drew a black image with exit 0; --steps 2000 ran every step, then crashed."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_reference_folders_read_as_a_user_lays_them_out(tmp_path, capsys):
    """Found in review: a hidden folder (.ipynb_checkpoints) became a column and, empty, stopped the
    demo with "no images given"; icons named *.PNG were not read."""
    import shutil
    folder = tmp_path / "models"
    shutil.copytree(DEMO_DIR, folder, ignore=shutil.ignore_patterns("references", "*.png", "*.json", "*.md", "atlas"))
    theme = next(p for p in (DEMO_DIR / "references").iterdir() if p.is_dir())
    (folder / "references" / theme.name).mkdir(parents=True, exist_ok=True)
    for i, png in enumerate(sorted(theme.glob("*.png"))):
        shutil.copy(png, folder / "references" / theme.name / f"icon{i}.PNG")
    (folder / "references" / ".ipynb_checkpoints").mkdir()
    assert list(DemoModels(folder).references()) == [theme.name]
    (folder / "references" / "empty-theme").mkdir()
    with pytest.raises(ValueError, match="empty-theme: no .png reference icons"):
        DemoModels(folder).references()
