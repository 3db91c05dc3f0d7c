"""Host-agnostic pieces of the A1111 extension: row layouts, model discovery, script arguments,
the session lifecycle and the sampler wrapper (no UNet forwards: fast)."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
import torch
from hypothesis import given, strategies as st

from style_components import models, script_args as sargs
from style_components.inject import NULL as N
from style_components.params import StyleParams
from style_components.rows import RowTracker, infer_repeats, split_calls, step_labels
from style_components.session import ArgumentError, sampling_progress, wrap_sampling


# -- rows ----------------------------------------------------------------------------------------

def test_step_labels_and_split_calls_for_a1111_layouts():
    assert step_labels([1]) == [0, N]
    assert step_labels([1, 1]) == [0, 1, N, N]
    assert step_labels([2, 1]) == [0, 0, 1, N, N]
    labels = step_labels([1, 1])
    assert split_calls(labels, [4]) == [[0, 1, N, N]]
    assert split_calls(labels, [2, 2]) == [[0, 1], [N, N]]
    assert split_calls(labels, [2]) == [[0, 1]]  # uncond skipped
    assert split_calls(step_labels([2, 1]), [2, 2, 1]) == [[0, 0], [1, N], [N]]
    with pytest.raises(ValueError, match="do not fit"):
        split_calls(labels, [3, 2])


@given(st.lists(st.integers(1, 3), min_size=1, max_size=4), st.data())
def test_tracker_hands_out_successive_slices(repeats, data):
    labels = step_labels(repeats)
    sizes, left = [], len(labels)
    while left:
        n = data.draw(st.integers(1, left))
        sizes.append(n)
        left -= n
    tracker = RowTracker()
    tracker.new_step(labels)
    assert [tracker.next_call(n) for n in sizes] == split_calls(labels, sizes)
    assert tracker.next_call(1) is None  # a call beyond the announced batch gets no style
    assert tracker.next_call(1) is None and tracker.unknown_calls == 2


def test_tracker_gives_whole_batch_calls_the_labels_once_per_stacked_copy():
    """Tiled Diffusion's MultiDiffusion calls the UNet per tile batch: tiles stacked along the
    batch, each with every row of the step (one tile per call, or several)."""
    labels = step_labels([1, 1])
    tracker = RowTracker()
    tracker.new_step(labels)
    assert tracker.next_call(8) == labels * 2 and tracker.next_call(4) == labels
    assert tracker.next_call(12) == labels * 3
    assert tracker.next_call(2) is None  # a part of a batch after whole ones: not a slice of the step
    tracker.new_step(labels)
    assert tracker.next_call(2) == [0, 1] and tracker.next_call(4) is None  # mid-batch: no guess
    assert tracker.unknown_calls == 2


def test_tracker_reads_lazy_labels_at_the_first_call():
    asked = []
    tracker = RowTracker()
    tracker.new_step(lambda: asked.append(1) or [0, N])
    assert asked == []  # not before a UNet call: later callbacks may still rearrange the rows
    assert tracker.next_call(1) == [0] and tracker.next_call(1) == [N] and asked == [1]
    tracker.new_step(lambda: None)  # rows no rule explains: the step is unknown
    assert tracker.next_call(2) is None and tracker.unknown_calls == 1


def test_tracker_without_an_announced_step_gives_nothing():
    assert RowTracker().next_call(2) is None


@given(st.lists(st.integers(1, 3), min_size=1, max_size=5))
def test_infer_repeats_from_latent_copies(repeats):
    owner = [i for i, r in enumerate(repeats) for _ in range(r)]
    assert infer_repeats(len(owner) + len(repeats), len(repeats), lambda row, i: owner[row] == i) == repeats


def test_infer_repeats_with_identical_latents_and_errors():
    assert infer_repeats(4, 2) == [1, 1]
    assert infer_repeats(5, 2, lambda r, i: True) == [2, 1]  # ambiguous: earlier images take the rows
    with pytest.raises(ValueError, match="cannot tell"):
        infer_repeats(5, 2)
    with pytest.raises(ValueError, match="cannot hold"):
        infer_repeats(3, 2)


# -- models --------------------------------------------------------------------------------------

def _write(path, fmt=None, **meta):
    from style_components import files
    files.write(path, {"x": torch.zeros(1)}, {"format": fmt, **meta} if fmt else meta)


def test_scan_groups_by_metadata_and_name(tmp_path):
    a = tmp_path / "a"
    _write(a / "anime.adapter.safetensors")                         # by name, no metadata (original release)
    _write(a / "anime_space.safetensors", "style-components-space")
    _write(a / "anime-extractor.safetensors", "style-components-extractor")
    _write(a / "second.safetensors", "style-components-adapter")     # by metadata: shares the lone space
    _write(a / "notes.safetensors")                                  # neither: ignored
    b = tmp_path / "b"
    _write(b / "anime.adapter.safetensors")                         # same name in a later folder: first wins
    _write(b / "x" / "photo.ip-adapter.safetensors")
    _write(b / "demo" / "icons.adapter.safetensors", "style-components-adapter", base="style-components-icon-world")
    found = models.scan([a, b, tmp_path / "missing"])  # the demo world's adapter is not for the WebUI
    assert sorted(found) == ["anime", "photo", "second"]
    assert found["anime"].adapter == a / "anime.adapter.safetensors"
    assert found["anime"].space == a / "anime_space.safetensors"
    assert found["anime"].extractor == a / "anime-extractor.safetensors"
    assert found["second"].space == a / "anime_space.safetensors"
    assert found["photo"].space is None and found["photo"].extractor is None


def test_a_style_word_before_the_kind_groups_every_file(tmp_path):
    """Found in review: "anime_style_space" grouped as "anime" but "anime_style_adapter" as
    "anime_style", so with two models in a folder neither found its space."""
    for name in ("anime", "real"):
        for kind in ("adapter", "space", "extractor"):
            _write(tmp_path / f"{name}_style_{kind}.safetensors")
    found = models.scan([tmp_path])
    assert sorted(found) == ["anime", "real"]
    for name in ("anime", "real"):
        assert found[name].space.name == f"{name}_style_space.safetensors"
        assert found[name].extractor.name == f"{name}_style_extractor.safetensors"
    assert models.classify("style.adapter.safetensors") == ("adapter", "style")  # "style" alone is a name


def test_an_embedding_adapter_without_its_space_is_a_clear_error(tmp_path, sd15_ldm_meta_adapter):
    """An adapter taking 768-d embeddings has no sliders without its space: before, 64 sliders
    drove the first 64 embedding dimensions, silently."""
    from style_components.adapter import Adapter
    from style_components.errors import StyleComponentsError
    adapter, space = sd15_ldm_meta_adapter
    wide = Adapter(768, adapter.cross_dim, adapter.inner_dims, tokens=1)
    wide.save(tmp_path / "wide.adapter.safetensors")
    with pytest.raises(StyleComponentsError, match=r"768-d embeddings and no style space .* wide.space.safetensors"):
        models.Registry([tmp_path]).load("wide")
    adapter.save(tmp_path / "narrow.adapter.safetensors")  # 30 components, taken directly: fine alone
    assert models.Registry([tmp_path]).load("narrow").k == adapter.d_in


def test_model_files_found_wrong_in_review(tmp_path, sd15_ldm_meta_adapter):
    """The original release's adapter name (kind word first, no metadata) was not listed; an adapter
    named 'workspace' became model 'work'; 'Anime.adapter' did not pair with 'anime.space'; a folder's
    lone space was paired with an adapter of another size, breaking a model that worked alone; linked
    folders were not searched (A1111's own lists follow them)."""
    import os
    import safetensors.torch
    import a1111_env
    adapter, space = sd15_ldm_meta_adapter
    original = tmp_path / "sdxl" / "ip-adapter-style_sdxl_amix_v0.1.0_fp16.safetensors"
    original.parent.mkdir()
    safetensors.torch.save_file({k: v.contiguous() for k, v in adapter.state_dict().items()}, str(original))  # no metadata
    adapter.save(tmp_path / "a" / "workspace.safetensors")
    adapter.save(tmp_path / "b" / "Anime.adapter.safetensors")
    space.save(tmp_path / "b" / "anime.space.safetensors")
    adapter.save(tmp_path / "c" / "icons.adapter.safetensors")       # takes 30 components ...
    a1111_env.make_space(20, 64).save(tmp_path / "c" / "other.space.safetensors")  # ... this space has 20
    store = tmp_path.parent / f"{tmp_path.name}-store"
    adapter.save(store / "shared.adapter.safetensors")
    os.symlink(store, tmp_path / "linked")
    os.symlink(tmp_path, tmp_path / "a" / "loop")  # a link back up is searched once
    found = models.scan([tmp_path])
    assert sorted(found) == ["Anime", "icons", "sdxl_amix_v0.1.0_fp16", "shared", "workspace"]
    assert found["Anime"].space == tmp_path / "b" / "anime.space.safetensors"
    assert found["icons"].space is None
    assert models.Registry([tmp_path]).load("icons").k == 30


def test_both_original_release_sets_in_one_folder_pair_by_the_adapters_model_name(tmp_path, sd15_ldm_meta_adapter):
    """README's layout for the original release's two sets (adapter v0.1.0 goes with pca-v0.2.1,
    v0.3.0 with pca-v0.3.0): spaces converted under the adapters' model names pair with them."""
    import safetensors.torch
    import a1111_env
    adapter, _ = sd15_ldm_meta_adapter
    for version, seed in (("0.1.0", 1), ("0.3.0", 2)):
        name = f"sdxl_amix_v{version}_fp16"
        safetensors.torch.save_file({k: v.contiguous() for k, v in adapter.state_dict().items()},
                                    str(tmp_path / f"ip-adapter-style_{name}.safetensors"))
        a1111_env.make_space(30, 64, seed=seed).save(tmp_path / f"{name}.space.safetensors")
    found = models.scan([tmp_path])
    assert sorted(found) == ["sdxl_amix_v0.1.0_fp16", "sdxl_amix_v0.3.0_fp16"]
    for name, info in found.items():
        assert info.space == tmp_path / f"{name}.space.safetensors"


def test_name_of_drops_only_its_kinds_word():
    """Found in review: converting an extractor to 'landscape.safetensors' named it 'land' ('space'
    is a style space's word, not an extractor's)."""
    assert models.name_of("landscape.safetensors", "extractor") == "landscape"
    assert models.name_of("dir/anime.space.safetensors", "space") == "anime"
    assert models.name_of("ip-adapter-style_sdxl_amix_v0.3.0_fp16.safetensors", "adapter") == "sdxl_amix_v0.3.0_fp16"


def test_a_model_file_replaced_in_place_is_loaded_again(tmp_path, sd15_ldm_meta_adapter):
    """Found in review: after retraining into the same file, the old weights stayed loaded until a restart."""
    adapter, _ = sd15_ldm_meta_adapter
    adapter.save(tmp_path / "demo.adapter.safetensors")
    reg = models.Registry([tmp_path])
    before = reg.load("demo")
    import copy
    retrained = copy.deepcopy(adapter)
    with torch.no_grad():
        retrained.layer(1).to_v_ip.weight.add_(1.0)
    retrained.save(tmp_path / "demo.adapter.safetensors")
    after = reg.load("demo")
    assert after is not before and torch.equal(after.adapter.layer(1).to_v_ip.weight, retrained.layer(1).to_v_ip.weight)
    assert after.info.hash != before.info.hash


def test_metadata_is_read_from_the_header_only(tmp_path):
    _write(tmp_path / "m.safetensors", "style-components-space")
    assert models.read_metadata(tmp_path / "m.safetensors") == {"format": "style-components-space"}
    (tmp_path / "junk.safetensors").write_bytes(b"\xff" * 20)
    assert models.read_metadata(tmp_path / "junk.safetensors") == {}


def test_registry_refresh_find_by_hash_and_unload(tmp_path, sd15_ldm_meta_adapter):
    adapter, space = sd15_ldm_meta_adapter
    adapter.save(tmp_path / "demo.adapter.safetensors")
    reg = models.Registry([tmp_path])
    assert reg.names() == ["demo"]
    loaded = reg.load("demo")
    assert loaded.k == 30 and reg.load("demo") is loaded  # loaded once
    info = reg.find("", model_hash=loaded.info.hash.upper())
    assert info is loaded.info
    # two copies of one file: the infotext's name picks among them (found by mutation: untested)
    import shutil
    for copy in ("a-copy", "z-copy"):
        shutil.copy(tmp_path / "demo.adapter.safetensors", tmp_path / f"{copy}.adapter.safetensors")
    reg.refresh()
    assert [reg.find(n, model_hash=info.hash).name for n in ("z-copy", "demo", "a-copy")] == ["z-copy", "demo", "a-copy"]
    for copy in ("a-copy", "z-copy"):
        (tmp_path / f"{copy}.adapter.safetensors").unlink()
    reg.refresh()
    with pytest.raises(Exception, match="style model 'other' not found \\(known: demo\\)"):
        reg.load("other")
    reg.unload()
    assert reg.loaded is None
    again = reg.load("demo")  # a fresh load from the file, not the model unload dropped
    assert again is not loaded and reg.loaded is again and again.k == 30
    assert torch.equal(again.adapter.layer(1).to_v_ip.weight, loaded.adapter.layer(1).to_v_ip.weight)
    (tmp_path / "demo.adapter.safetensors").unlink()
    assert reg.refresh() == [] and reg.loaded is None
    reg.unload()
    assert reg.loaded is None


def test_space_layout_reads_k_and_labels_from_the_header_only(tmp_path):
    import a1111_env
    space = a1111_env.make_space(10, 64)
    space.save(tmp_path / "s.space.safetensors")
    assert models.space_layout(tmp_path / "s.space.safetensors") == (10, space.labels)
    # found in review: K came from the metadata's "k", which loading never checks: 40 sliders for 10
    from style_components import files
    tensors, meta = files.read(tmp_path / "s.space.safetensors")
    files.write(tmp_path / "k40.space.safetensors", tensors, {**meta, "k": "40"})
    assert models.space_layout(tmp_path / "k40.space.safetensors") == (10, space.labels)
    (tmp_path / "bad.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    assert models.space_layout(tmp_path / "bad.safetensors") is None
    assert models.space_layout(tmp_path / "missing.safetensors") is None


@pytest.fixture(scope="module")
def sd15_ldm_meta_adapter():
    from factories import adapter_for
    from unets import ldm_unet
    import a1111_env
    return adapter_for(ldm_unet(device="meta"), d_in=30, hidden=None), a1111_env.make_space(30, 64)


def test_style_inputs_through_space_or_direct(sd15_ldm_meta_adapter, monkeypatch):
    adapter, space = sd15_ldm_meta_adapter
    info = models.ModelInfo("m", adapter=None)
    direct = models.LoadedModel(info, adapter, None)
    z = torch.randn(2, 30)
    assert torch.equal(direct.style_inputs(z), z)
    assert torch.equal(direct.style_inputs(z[:, :5]), torch.nn.functional.pad(z[:, :5], (0, 25)))  # the rest 0
    import a1111_env
    from factories import adapter_for
    from unets import ldm_unet
    wide = adapter_for(ldm_unet(device="meta"), d_in=64, hidden=None)
    via_space = models.LoadedModel(info, wide, space)
    assert torch.allclose(via_space.style_inputs(z), space.to_embedding(z))
    # an image's input does not depend on the other images of its batch (bit for bit): one row
    # at a time through the space (found by mutation: on this CPU a batched matmul of this size
    # happens to round the same, so the equality alone could not tell)
    batch = torch.randn(7, 30, generator=torch.Generator().manual_seed(5))
    rows, real = [], type(space).to_embedding
    monkeypatch.setattr(type(space), "to_embedding", lambda self, x: rows.append(x.shape[0]) or real(self, x))
    assert torch.equal(via_space.style_inputs(batch)[6:], via_space.style_inputs(batch[6:]))
    assert rows == [1] * 8


# -- script arguments ----------------------------------------------------------------------------

def test_defaults_parse_to_disabled_default_params():
    parsed = sargs.parse(sargs.defaults())
    assert parsed.enabled is False and parsed.params == StyleParams()
    assert sargs.parse([]) == parsed  # A1111 may send fewer arguments than the UI has


def test_an_infotext_with_more_components_than_sliders_pastes_with_a_problem():
    n = sargs.MAX_COMPONENTS
    controls, problems = sargs.controls_from_infotext("components: " + "0.1 " * (n + 1) + "0.5")
    assert controls[f"c{n}"] == 0.1 and controls["enabled"] is True
    assert problems == [f"{n + 2} components, the UI has {n} sliders: the last 2 are not restored"]


def test_the_switch_is_read_on_its_own():
    values = dict(zip(sargs.ALL_NAMES, sargs.defaults())) | {"seed": None, "strength": "strong"}
    assert sargs.enabled(list(values.values())) is False and sargs.enabled([]) is False
    assert sargs.enabled([{"enabled": True, "strength": "strong"}]) is True
    with pytest.raises(ArgumentError, match="enabled"):
        sargs.enabled(["yes"])


def test_positional_round_trip_through_params():
    params = StyleParams(model="m", components=(0.5, -1.25, 0.0, 2.0), multiplier=0.5, strength=1.5,
                         blocks="custom", block_weights=tuple(float(i % 2) for i in range(16)),
                         start=0.2, end=0.8, seed=42, refs="r")
    assert sargs.parse(sargs.to_positional(params)).params == params
    controls, problems = sargs.controls_from_infotext(params.to_infotext())
    assert problems == [] and [controls[n] for n in sargs.ALL_NAMES] == sargs.to_positional(params)


@pytest.mark.parametrize("args, message", [
    # an int too large for a float was an OverflowError, not an argument error
    ([{"strength": 10 ** 400}], "strength: expected a finite number, got an int of 1329 bits"),
    ([{"strength": 10 ** 5000}], "strength: expected a finite number, got an int of 16610 bits"),  # str() refuses it
    ([{"seed": 10 ** 400, "random": True}], "seed: expected a whole number, got an int of 1329 bits"),
    ([{"components": [10 ** 400]}], "components: value 1 is an int of 1329 bits"),
    ([{"ref_weights": [1, 10 ** 400]}], "ref_weights: an int of 1329 bits is not a finite number"),
    # text numbers as strictly as the infotext reads them: '1_0' is not 10, nor a non-ASCII digit 1
    ([{"ref_weights": "1_0"}], "ref_weights: '1_0' is not a finite number"),
    ([{"block_weights": "\u0661", "blocks": "custom"}], "block_weights: '\u0661' is not a finite number"),
    # ControlNet's habit of one dict per unit: the second was silently ignored
    ([{"strength": 0.5}, {"strength": 0.7}], "takes one dict of arguments"),
    ([{"components": [1.0], "c1": 2.0}], "components and c1 both given"),
    # a seed a browser and A1111's paste (float) cannot hold exactly
    ([{"random": True, "seed": 2 ** 53}], "nor a seed from 0 to 9007199254740991"),
    # found by mutation, untested until then: booleans are not numbers, weights fit the images
    ([{"strength": True}], "strength: expected a finite number, got True"),
    ([{"components": [True]}], "components: value 1 is True, not a finite number"),
    ([{"random": True, "seed": True}], "seed: expected a whole number, got True"),
    ([{"ref_images": ["aGk=", "aGk="], "ref_weights": [1]}], "ref_weights: 1 weights for 2 reference images"),
])
def test_api_arguments_found_wrong_in_review_are_refused_clearly(args, message):
    with pytest.raises(ArgumentError, match=re.escape(message)):
        sargs.parse(args)


def test_a_dict_followed_by_the_uis_defaults_is_read():
    """A1111 fills the script's other positions with its UI defaults after an API dict."""
    parsed = sargs.parse([{"strength": 0.7}, *sargs.defaults()[1:]])
    assert parsed.enabled and parsed.params.strength == 0.7


def test_block_weights_are_ignored_unless_custom():
    parsed = sargs.parse([{"enabled": True, "blocks": "style", "block_weights": "1 2"}])
    assert parsed.params.block_weights == ()


def test_overrides_for_xyz():
    p = StyleParams(components=(1.0,))
    q = sargs.apply_overrides(p, {"strength": "0.5", "component 3": 2, "model": "x"})
    assert q.strength == 0.5 and q.components == (1.0, 0.0, 2.0) and q.model == "x" and q.seed is None
    with pytest.raises(ArgumentError, match="unknown override"):
        sargs.apply_overrides(p, {"colour": 1})


def test_a_component_axis_moves_the_random_style_of_a_fixed_seed():
    """Found in review: the axis dropped the random style and moved the (stale) slider values."""
    from style_components.params import random_components
    p = StyleParams(components=(1.0,), seed=5, multiplier=0.5)
    q = sargs.apply_overrides(p, {"component 3": 2}, k=4)
    drawn = random_components(5, 4)
    assert q.components == drawn[:2] + (2.0,) + drawn[3:] and q.seed is None and q.multiplier == 0.5
    assert sargs.apply_overrides(p, {"strength": 2}, k=4).seed == 5  # other axes keep the draw per image
    with pytest.raises(ArgumentError, match="style seed -1 draws each image's own"):
        sargs.apply_overrides(replace(p, seed=-1), {"component 3": 2}, k=4)


def test_denoiser_calls_past_the_announced_steps_keep_the_style_to_the_end():
    """DPM adaptive and Restart call the denoiser more often than A1111's step count (v1.10
    SamplerData.total_steps): those calls are the last step's, inside end = 1, outside end < 1."""
    steps = 10
    assert [sampling_progress(s, steps) for s in (0, 5, 9)] == [0.0, 0.5, 0.9]
    for s in (10, 17, 3 * steps):
        progress = sampling_progress(s, steps)
        assert 0.0 <= progress < 1.0                  # inside start 0 .. end 1 (end is exclusive)
        assert not progress < 0.9                     # outside end 0.9: the style stays off
    assert sampling_progress(3, None) == 0.0 and sampling_progress(3, 0) == 0.0


# -- sampler wrapper -----------------------------------------------------------------------------

class _Sampler:
    def sample(self, x):
        if x == "boom":
            raise RuntimeError("boom")
        return x * 2

    def sample_img2img(self, x):
        return x


def test_wrap_sampling_runs_after_once_on_return_and_on_error():
    s, ended = _Sampler(), []
    wrap_sampling(s, ["sample", "sample_img2img"], None, lambda: ended.append(1))
    assert s.sample(2) == 4 and ended == [1]
    assert s.sample(2) == 4 and ended == [1]  # restored: the wrapper ran once
    assert "sample" not in s.__dict__
    wrap_sampling(s, ["sample"], None, lambda: ended.append(2))
    with pytest.raises(RuntimeError):
        s.sample("boom")
    assert ended == [1, 2] and "sample" not in s.__dict__


def test_wrap_sampling_restores_an_instances_own_method_and_leaves_later_wrappers():
    """Found by mutation: restoring was only tested on class methods."""
    s = _Sampler()
    own = lambda x: x + 100  # noqa: E731 (an instance attribute, as another extension may set)
    s.sample = own
    wrap_sampling(s, ["sample"], None, lambda: None)
    assert s.sample(1) == 101 and s.sample is own
    ended = []
    wrap_sampling(s, ["sample"], None, lambda: ended.append(1))
    ours = s.sample
    other = lambda x: ours(x) + 1  # noqa: E731 (another extension wrapping on top of ours, calling it)
    s.sample = other
    assert s.sample(1) == 102 and ended == [1]
    assert s.sample is other  # ours, on its way out, left the later wrapper in place


def test_wrap_sampling_before_can_fail_the_pass():
    s, ended = _Sampler(), []

    def fail():
        raise ArgumentError("bad argument")
    wrap_sampling(s, ["sample"], fail, lambda: ended.append(1))
    with pytest.raises(ArgumentError, match="bad argument"):
        s.sample(1)
    assert ended == [1] and s.sample(1) == 2


def test_wrap_sampling_on_return_runs_after_a_return_only_and_can_fail_the_pass():
    s, events = _Sampler(), []

    def check():
        events.append("check")
        raise ArgumentError("no layer ran")
    wrap_sampling(s, ["sample"], None, lambda: events.append("after"), on_return=check)
    with pytest.raises(ArgumentError, match="no layer ran"):
        s.sample(1)
    assert events == ["check", "after"] and "sample" not in s.__dict__
    wrap_sampling(s, ["sample"], None, lambda: events.append("after"), on_return=check)
    with pytest.raises(RuntimeError, match="boom"):  # the sampler's own error wins; no check
        s.sample("boom")
    assert events == ["check", "after", "after"]


def test_skips_uncond_mirrors_cfg_denoiser_forward():
    """v1.10 CFGDenoiser.forward drops the last batch_size rows for Skip Early CFG (steps up to
    that fraction) and for NGMS (sigma below s_min_uncond, odd steps unless s_min_uncond_all;
    never for edit models)."""
    from types import SimpleNamespace as NS

    from style_components.webui import skips_uncond

    def params(step, sigma, s_min=0.0, total=10):
        sampler = NS(sampler_extra_args={"s_min_uncond": s_min})
        return NS(denoiser=NS(step=step, total_steps=total, sampler=sampler), sigma=torch.tensor([sigma, sigma]))
    opts = NS(skip_early_cond=0.0, s_min_uncond_all=False)
    assert not skips_uncond(params(1, 0.5), opts, edit=False)
    assert skips_uncond(params(1, 0.5, s_min=1.0), opts, edit=False)
    assert not skips_uncond(params(2, 0.5, s_min=1.0), opts, edit=False)  # even step
    assert not skips_uncond(params(1, 2.0, s_min=1.0), opts, edit=False)  # sigma above
    assert not skips_uncond(params(1, 0.5, s_min=1.0), opts, edit=True)
    assert skips_uncond(params(2, 0.5, s_min=1.0), NS(skip_early_cond=0.0, s_min_uncond_all=True), edit=False)
    early = NS(skip_early_cond=0.2, s_min_uncond_all=False)
    assert skips_uncond(params(2, 5.0), early, edit=True) and not skips_uncond(params(3, 5.0), early, edit=False)


@pytest.mark.parametrize("seeds, rows, expected", [
    ([5, 6, 7], 2, [5, 6]),           # p.seeds of the batch, the pass's latent has fewer images
    ([5], 3, [5, None, None]),        # fewer seeds than images: padded, never cut short
    ([1, 2], None, [1, 2]),           # no latent given (an unannounced pass): the seeds' count
    (None, 2, [None, None]),          # a script that sets no seeds at all
])
def test_a_pass_gets_one_seed_per_image_of_its_latent(seeds, rows, expected):
    """Found untested by mutation (webui._start_pass): the style table needs one entry per image
    of the pass; a missing seed is None, which fixed sliders ignore and seed -1 refuses clearly."""
    from types import SimpleNamespace

    from style_components import webui

    class Gen:
        passes = 0

        def start_pass(self, unet, image_seeds):
            self.seeds = image_seeds
            return True
        end_pass = check_pass = lambda self: None

    p = SimpleNamespace(sd_model=SimpleNamespace(model=SimpleNamespace(diffusion_model=None)),
                        sampler=_Sampler(), extra_generation_params={})
    if seeds is not None:
        p.seeds = seeds
    gen = Gen()
    assert webui._start_pass(p, gen, None if rows is None else torch.zeros(rows, 4, 8, 8)) is True
    assert gen.seeds == expected
    assert StyleParams(components=(1.0,)).slider_values(2, None) == (1.0, 0.0)
    with pytest.raises(Exception, match="seed -1 takes each image's seed"):
        StyleParams(seed=-1).slider_values(2, None)
