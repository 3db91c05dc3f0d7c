"""scripts/style_components.py run by the A1111 v1.10 stand-in over the real ldm SD1.5 UNet.

8x8 latents, 1-2 Euler steps. Every UNet call is recorded (inputs and output) and replayed
through the core directly, `inject.apply(..., rows=<the rows the test expects for that layout>)`:
the extension must have derived the same rows from A1111's callbacks alone. Styles differ per
image (seed -1: each image's own seed), and `test_a_wrong_row_label_is_visible` shows that any
other label on any row changes the output far beyond the 1e-5 tolerance.
"""

from __future__ import annotations

import pytest
import torch

from a1111_env import args, assert_unet_clean, build_env, close, generate, replay, reset, restore, styles_for
from style_components.inject import NULL as N

LONG = " ".join(f"w{i}" for i in range(80))  # 80 words: 154 tokens against the negative's 77


@pytest.fixture(scope="module")
def env(sd15_ldm, tmp_path_factory):
    return build_env(sd15_ldm, tmp_path_factory)


@pytest.fixture(autouse=True)
def clean_state(env):
    saved = reset(env)
    yield
    restore(env, saved)


LAYOUTS = {
    "batch 1: [c0, u0]": (dict(batch_size=1), {}, [[0, N]]),
    "batch 2: [c0, c1, u0, u1]": (dict(batch_size=2), {}, [[0, 1, N, N]]),
    "batch_cond_uncond off: [c0, c1] then [u0, u1]": (dict(batch_size=2), {"batch_cond_uncond": False},
                                                      [[0, 1], [N, N]]),
    "different prompt lengths: [c0] then [u0]": (dict(batch_size=1, prompt=LONG), {}, [[0], [N]]),
    "different prompt lengths, padded: [c0, c1, u0, u1]": (dict(batch_size=2, prompt=LONG),
                                                          {"pad_cond_uncond": True}, [[0, 1, N, N]]),
    "different prompt lengths, padded (v0): [c0, u0]": (dict(batch_size=1, prompt=LONG),
                                                       {"pad_cond_uncond_v0": True}, [[0, N]]),
    "NGMS skips uncond: [c0, c1]": (dict(batch_size=2, s_min_uncond=100.0), {"s_min_uncond_all": True},
                                    [[0, 1]]),
    # AND prompt on image 0 only: cond rows [c0, c0', c1]; calls of batch_size rows in order over x_in
    "AND prompt, batch_cond_uncond off: [c0, c0'], [c1, u0], [u1]": (
        dict(batch_size=2, prompt=["a castle AND a moat", "a tower"], negative_prompt=["blurry", "blurry"]),
        {"batch_cond_uncond": False}, [[0, 0], [1, N], [N]]),
}


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_style_goes_to_the_right_rows_in_every_layout(env, name):
    p_kw, opts, expected = LAYOUTS[name]
    env["shared"].opts.data.update(opts)
    calls = []
    p, res = generate(env, args(random=True, seed=-1, strength=1.5), record=calls, **p_kw)
    assert not env["errors"].reported
    assert [c[0].shape[0] for c in calls] == [len(r) for r in expected], "the stand-in's layout changed"
    assert all(c[4] for c in calls)
    styles = styles_for(env, p.all_seeds)
    groups = {}  # calls with the same shapes are replayed in one forward
    for call, rows in zip(calls, expected):
        groups.setdefault(tuple(call[2].shape[1:]), []).append((call, rows))
    for group in groups.values():
        wants = replay(env, [c for c, _ in group], styles, [r for _, r in group], strength=1.5)
        for (call, rows), want in zip(group, wants):
            assert close(call[3], want), rows
    assert_unet_clean(env)


def test_a_wrong_row_label_is_visible(env):
    """Non-vacuity of the layout test: with these styles, giving any row another label (image 0 <-> 1,
    cond <-> null) changes that row's output far beyond the tolerance."""
    g = torch.Generator().manual_seed(9)
    call = (torch.randn(4, 4, 8, 8, generator=g), torch.full((4,), 700), torch.randn(4, 77, 768, generator=g),
            None, None)
    styles = styles_for(env, [1000, 1001])
    right, wrong = replay(env, [call, call], styles, [[0, 1, N, N], [1, 0, 0, 1]], strength=1.5)
    for i in range(4):
        assert not close(right[i], wrong[i], tol=1e-3), i


def _probe(env):
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        return env["unet"](torch.randn(1, 4, 8, 8, generator=g), torch.full((1,), 400),
                           context=torch.randn(1, 77, 768, generator=g))


def test_hooks_gone_after_success_exception_and_interruption(env):
    base = _probe(env)

    seen = []  # success
    generate(env, args(components=[2.0] * 30), record=seen)
    assert seen[0][4], "the style was not hooked during sampling"
    assert_unet_clean(env)

    calls = {"n": 0}  # an exception inside the UNet while sampling: hooks are gone when it propagates

    def fail(module, a, out):
        calls["n"] += 1
        assert module._forward_pre_hooks, "the style was not hooked during sampling"
        raise RuntimeError("boom")
    h = env["unet"].register_forward_hook(fail)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            generate(env, args(components=[2.0] * 30), steps=2)
    finally:
        h.remove()
    assert calls["n"] == 1
    assert_unet_clean(env)

    from modules import script_callbacks  # interruption after the first step

    def interrupt(params):
        if params.denoiser.step == 0:  # the next step's denoiser call raises InterruptedException
            env["shared"].state.interrupted = True
    script_callbacks.on_cfg_denoiser(interrupt)
    record = []
    try:
        generate(env, args(components=[2.0] * 30), record=record, steps=3)
    finally:
        script_callbacks.remove_callbacks_for_function(interrupt)
    assert len(record) == 1 and record[0][4]
    assert_unet_clean(env)
    assert torch.equal(_probe(env), base)


def test_hires_pass_is_styled_with_start_end_per_pass(env):
    calls = []
    generate(env, args(components=[1.5] * 30, start=0.0, end=0.5), record=calls, steps=2,
             enable_hr=True, hr_scale=2.0, hr_second_pass_steps=2, denoising_strength=0.75)
    # first pass 2 steps (8x8), hires pass int(0.75 * 2) + 1 = 2 steps (16x16); progress 0, 0.5 in each
    assert [c[0].shape[-1] for c in calls] == [8, 8, 16, 16]
    styles = env["space"].to_embedding(torch.tensor([[1.5] * 30]))
    for size in (8, 16):
        on, off = [c for c in calls if c[0].shape[-1] == size]
        assert on[4] and off[4]  # hooked for the whole pass; inert once progress >= end
        styled = replay(env, [on], styles, [[0, N]])[0]
        plain_on, plain_off = replay(env, [on, off])
        assert close(on[3], styled) and not close(on[3], plain_on, tol=1e-3)
        assert close(off[3], plain_off)
    assert_unet_clean(env)


def test_img2img_is_styled(env):
    calls = []
    init = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    generate(env, args(components=[1.0] * 30), record=calls, img2img=True, init_latent=init, steps=1,
             denoising_strength=0.9)
    styles = env["space"].to_embedding(torch.tensor([[1.0] * 30]))
    assert len(calls) == 1 and close(calls[0][3], replay(env, calls, styles, [[0, N]])[0])
    assert_unet_clean(env)


@pytest.mark.parametrize("batch_cond_uncond", [True, False])
def test_instruct_pix2pix_batches_style_only_the_cond_rows(env, batch_cond_uncond):
    """An edit model (cond_stage_key "edit", Image CFG scale != 1) stacks [cond, uncond text + image,
    uncond text + zero image] (v1.10 CFGDenoiser.forward): both uncond groups take the null style,
    so the style, like the text, is scaled by the text CFG."""
    env["shared"].opts.data["batch_cond_uncond"] = batch_cond_uncond
    model = env["processing"].StandinSDModel(env["unet"], context_dim=env["context_dim"])
    model.cond_stage_key = "edit"
    init = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    calls = []
    p, _ = generate(env, args(random=True, seed=-1, strength=1.5), record=calls, img2img=True, init_latent=init,
                    steps=1, denoising_strength=0.9, batch_size=2, image_cfg_scale=1.5, sd_model=model)
    assert not env["errors"].reported
    expected = [[0, 1, N, N, N, N]] if batch_cond_uncond else [[0, 1], [N, N], [N, N]]
    assert [c[0].shape[0] for c in calls] == [len(r) for r in expected], "the stand-in's layout changed"
    wants = replay(env, calls, styles_for(env, p.all_seeds), expected, strength=1.5)
    assert all(close(c[3], want) for c, want in zip(calls, wants))
    # non-vacuous: the image-conditioned uncond rows styled instead would differ
    wrong = replay(env, calls, styles_for(env, p.all_seeds), [[0, 1, 0, 1, N, N]] if batch_cond_uncond
                   else [[0, 1], [0, 1], [N, N]], strength=1.5)
    assert not all(close(c[3], w, tol=1e-3) for c, w in zip(calls, wrong))
    assert_unet_clean(env)


@pytest.mark.parametrize("tile_batch,ngms", [(1, False), (2, False), (1, True), (2, True)])
def test_tiled_sampling_styles_every_tile(env, monkeypatch, tile_batch, ngms):
    """Tiled Diffusion (tile_methods/multidiffusion.py, MultiDiffusion.kdiff_forward) replaces the
    sampler's inner model: the latent is cut in tiles and the UNet called on `tile_batch` tiles
    at a time, stacked along the batch, each with all of the step's rows. Found in review: only
    the first tile got the style (tile batch 1), or none (tile batch > 1). With negative guidance
    minimum sigma the uncond rows are dropped before the tiles are cut: the second tile's cond
    rows must not be read as the first one's uncond rows."""
    if ngms:
        env["shared"].opts.data["s_min_uncond_all"] = True
    from modules import sd_samplers
    original = sd_samplers.create_sampler

    def create_sampler(name, model):
        sampler = original(name, model)
        # as Tiled Diffusion does: replace the forward of the k-diffusion denoiser (the CFG
        # denoiser's inner_model, sd_samplers_kdiffusion.CFGDenoiserKDiffusion) on the instance
        denoiser = sampler.model_wrap_cfg.inner_model
        inner = denoiser.forward

        def kdiff_forward(x, sigma, cond):  # two tiles: the halves of the latent's width
            n, half = x.shape[0], x.shape[-1] // 2
            tiles, out = [slice(0, half), slice(half, None)], torch.zeros_like(x)
            for group in (tiles[i:i + tile_batch] for i in range(0, len(tiles), tile_batch)):
                stacked = {k: [torch.cat([v[0]] * len(group))] for k, v in cond.items()}
                y = inner(torch.cat([x[..., s] for s in group]), sigma.repeat(len(group)), cond=stacked)
                for i, s in enumerate(group):
                    out[..., s] = y[i * n:(i + 1) * n]
            return out
        denoiser.forward = kdiff_forward
        return sampler
    monkeypatch.setattr(sd_samplers, "create_sampler", create_sampler)
    calls = []
    p, _ = generate(env, args(random=True, seed=-1, strength=1.5), record=calls, batch_size=2, width=128, height=64,
                    s_min_uncond=100.0 if ngms else 0.0)
    assert not env["errors"].reported and not p.comments
    expected = [([0, 1] if ngms else [0, 1, N, N]) * tile_batch] * (2 // tile_batch)
    assert [c[0].shape[0] for c in calls] == [len(r) for r in expected], "the stand-in's layout changed"
    wants = replay(env, calls, styles_for(env, p.all_seeds), expected, strength=1.5)
    assert all(close(c[3], want) for c, want in zip(calls, wants))
    assert_unet_clean(env)


def test_rows_reordered_by_a_later_callback_keep_their_images_style(env):
    """Regional Prompter's latent mode (scripts/latent.py, denoiser_callback_s) turns
    batch_cond_uncond off and, in its own on_cfg_denoiser callback, registered after ours,
    reorders the cond rows in place from image-major [b1a1, b1a2, b2a1, b2a2] to area-major
    [b1a1, b2a1, b1a2, b2a2]. Rows are labelled at the step's first UNet call, by which image's
    latent each cond row holds, so each image keeps its own style."""
    from modules import script_callbacks
    env["shared"].opts.data["batch_cond_uncond"] = False

    def area_major(params):
        batch = params.text_uncond.shape[0]
        areas = params.x.shape[0] // batch - 1
        for t in (params.x, params.image_cond, params.sigma, params.text_cond):
            old = t.clone()
            for a in range(areas):
                for b in range(batch):
                    t[b + a * batch] = old[a + b * areas]
    script_callbacks.on_cfg_denoiser(area_major)
    calls = []
    try:
        p, _ = generate(env, args(random=True, seed=-1, strength=1.5), record=calls, batch_size=2,
                        prompt=["a castle AND a moat"] * 2, negative_prompt=["blurry"] * 2)
    finally:
        script_callbacks.remove_callbacks_for_function(area_major)
    assert not env["errors"].reported and not p.comments
    expected = [[0, 1], [0, 1], [N, N]]
    assert [c[0].shape[0] for c in calls] == [len(r) for r in expected], "the stand-in's layout changed"
    wants = replay(env, calls, styles_for(env, p.all_seeds), expected, strength=1.5)
    assert all(close(c[3], want) for c, want in zip(calls, wants))
    assert_unet_clean(env)
