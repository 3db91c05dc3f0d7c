"""The script's wiring (infotext, API arguments, XYZ axes, settings, reference images) run by
the A1111 v1.10 stand-in. These tests check values and bit-identical regeneration, not row
layouts (test_a1111_generation.py does that on SD1.5), so they use a narrow ldm UNetModel of
the same class and block layout (16 attn2) to keep CPU time low."""

from __future__ import annotations

import base64
import io

import pytest
import torch

from a1111_env import args, assert_unet_clean, build_env, close, generate, reset, restore
from style_components import script_args as sargs
from style_components.errors import StyleComponentsError
from style_components.params import format_number


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from unets import ldm_unet
    unet = ldm_unet(model_channels=32, context_dim=64, num_heads=4)
    return build_env(unet, tmp_path_factory, context_dim=64)


@pytest.fixture(autouse=True)
def clean_state(env):
    saved = reset(env)
    yield
    restore(env, saved)


def paste(env, infotext, callbacks=True):
    """What "Send to txt2img" / PNG info does (infotext_utils.connect_paste): parse the infotext,
    run the on_infotext_pasted callbacks, then every infotext_fields reader."""
    from modules import infotext_utils, script_callbacks
    params = infotext_utils.parse_generation_parameters(infotext)
    if callbacks:
        script_callbacks.infotext_pasted_callback(infotext, params)
    return [read(params) for _, read in env["module"].infotext_fields()]


def test_disabled_extension_is_bit_identical_to_no_extension(env):
    _, bare = generate(env, None, batch_size=2)
    _, off = generate(env, args(enabled=False), batch_size=2)
    assert all(torch.equal(a, b) for a, b in zip(off.images, bare.images))
    assert sargs.INFOTEXT_KEY not in off.info
    _, on = generate(env, args(components=[1.0] * 30), batch_size=2)
    assert not torch.equal(on.images[0], bare.images[0])
    assert_unet_clean(env)


def test_a_switched_off_extension_ignores_its_other_controls(env):
    """Found in review: with the accordion off, an emptied style seed box (gradio's Number sends
    None) or a typo in the custom layer weights stopped every generation."""
    _, bare = generate(env, None)
    for bad in (dict(random=True, seed=None), dict(blocks="custom", block_weights="1 1 x")):
        _, off = generate(env, args(enabled=False, **bad))
        assert torch.equal(off.images[0], bare.images[0]) and sargs.INFOTEXT_KEY not in off.info
        with pytest.raises(StyleComponentsError):
            generate(env, args(**bad))
    # nor is the seed box read while Random is off (found in review: emptied, it stopped the job)
    _, typed = generate(env, args(components=[1.0] * 30))
    _, emptied = generate(env, args(components=[1.0] * 30, seed=None))
    assert torch.equal(typed.images[0], emptied.images[0]) and typed.info == emptied.info
    assert_unet_clean(env)


def test_the_auto_extractor_device_is_the_webuis(env, monkeypatch):
    """'auto' follows modules/devices.device (--device-id, MPS, --use-cpu), not "cuda if available"."""
    from pathlib import Path
    from modules import devices
    monkeypatch.setattr(devices, "device", torch.device("meta"))  # a device no guess would pick
    path = Path(__file__).parents[1] / "models" / "demo" / "icon_style_extractor.safetensors"
    env["module"]._extractors.clear()
    try:
        assert env["module"].load_extractor(path).device == torch.device("meta")
    finally:
        env["module"]._extractors.clear()


def test_in_low_vram_mode_the_extractor_waits_on_the_cpu(env, monkeypatch):
    """Found in review: under --lowvram/--medvram (modules/lowvram.py sets sd_model.lowvram) A1111
    keeps its models off the GPU between uses, but the extractor stayed on it for the session."""
    from pathlib import Path
    from types import SimpleNamespace
    from PIL import Image
    from modules import devices, shared
    from style_components.extract import Extractor
    moves = []

    def to(self, device=None, dtype=None):  # recorded, not made: there is no GPU here
        moves.append(str(device))
        self.device = torch.device(device)
        return self
    monkeypatch.setattr(Extractor, "to", to)
    monkeypatch.setattr(devices, "device", torch.device("meta"))  # stands for the GPU
    monkeypatch.setattr(shared, "sd_model", SimpleNamespace(lowvram=True))
    path = Path(__file__).parents[1] / "models" / "demo" / "icon_style_extractor.safetensors"
    env["module"]._extractors.clear()
    try:
        visiting = env["module"].load_extractor(path)
        assert visiting.extractor.device == torch.device("cpu")
        monkeypatch.setattr(Extractor, "embed", lambda self, images, weights=None: (self.device, images))
        assert visiting.embed(["img"]) == (torch.device("meta"), ["img"])  # it ran on the WebUI's device
        assert visiting.extractor.device == torch.device("cpu") and moves == ["meta", "cpu"]
        monkeypatch.setattr(shared, "sd_model", SimpleNamespace(lowvram=False))
        assert env["module"].load_extractor(path).device == torch.device("meta")  # resident again
    finally:
        env["module"]._extractors.clear()


def test_a_failure_when_hooking_the_unet_stops_the_generation_and_leaves_no_trace(env, monkeypatch):
    """A1111 only logs what process_before_every_sampling raises: the style error must come from
    the sampler instead, or the user gets an unstyled image whose infotext claims the style."""
    from style_components import models
    from style_components.errors import ModelFileError
    _, bare = generate(env, None)

    def broken(self, components):
        raise ModelFileError("demo.space.safetensors", "components has NaN")
    monkeypatch.setattr(models.LoadedModel, "style_inputs", broken)
    with pytest.raises(StyleComponentsError, match="components has NaN"):
        generate(env, args(components=[1.0] * 30))
    assert_unet_clean(env)
    monkeypatch.undo()
    _, after = generate(env, None)
    assert torch.equal(after.images[0], bare.images[0])


def test_infotext_round_trip_restores_every_control_and_the_image(env):
    weights = [0.5 * (i % 3) for i in range(16)]
    original = args(multiplier=0.7, strength=1.25, blocks="custom", block_weights=" ".join(map(str, weights)),
                    start=0.1, end=0.9, refs="two paintings", components=[0.01 * i - 0.1 for i in range(30)])
    p, res = generate(env, original, steps=2)
    assert sargs.INFOTEXT_KEY + ": " in res.info
    pasted = paste(env, res.info)
    restored = dict(zip(sargs.ALL_NAMES, pasted))
    want = dict(zip(sargs.ALL_NAMES, original))
    want["block_weights"] = " ".join(format_number(w) for w in weights)
    for name in sargs.ALL_NAMES:
        if name != "ref_images":
            assert restored[name] == want[name], name
    _, again = generate(env, pasted, steps=2)  # regenerating from the pasted controls: same image
    assert torch.equal(again.images[0], res.images[0])
    assert again.info == res.info


def test_the_original_extensions_infotext_pastes_and_gives_its_style(env):
    """A user moving from the original author's Forge extension pastes its PNG info: it wrote
    the values times the multiplier as a list, the strength and its adapter's URL (its
    scripts/main.py, extra_generation_params), each through A1111's quote(), which JSON-dumps
    the list unquoted, so that A1111's parser reads '[-1.0' of it (found in review: only the first
    value was pasted). Here the adapter is model 'demo'."""
    from modules import infotext_utils
    values = [round(0.07 * i - 1, 2) for i in range(30)]
    extra = {"style_components": values, "style_components_strength": 1.5,
             "style_components_model": "https://huggingface.co/x/resolve/main/ip-adapter-style_demo.safetensors",
             "style_components_extension_version": "0.1"}
    infotext = "a castle\nSteps: 2, Seed: 1, " + ", ".join(f"{k}: {infotext_utils.quote(v)}" for k, v in extra.items())
    pasted = dict(zip(sargs.ALL_NAMES, paste(env, infotext)))
    assert pasted["enabled"] is True and pasted["model"] == "demo" and pasted["strength"] == 1.5
    assert pasted["multiplier"] == 1.0 and [pasted[f"c{i + 1}"] for i in range(30)] == values
    _, got = generate(env, list(pasted.values()), steps=2)
    _, want = generate(env, args(components=values, strength=1.5), steps=2)
    assert torch.equal(got.images[0], want.images[0])
    assert "style_components: [-1.0, -0.93," in infotext  # as the original writes it
    # where no callback runs (the API's "infotext" field), and one number per image (what later
    # Forge versions write for a list), nothing is pasted rather than a style of the first values
    for text in (infotext, infotext.replace(infotext_utils.quote(values), "-1.0")):
        cut = dict(zip(sargs.ALL_NAMES, paste(env, text, callbacks=text != infotext)))
        assert cut["enabled"] is False and cut["c1"] is None


def test_random_per_image_style_round_trip_and_batch_count(env):
    p, res = generate(env, args(random=True, seed=-1), batch_size=2, n_iter=2)
    assert len(res.images) == 4
    assert len({tuple(im.flatten()[:8].tolist()) for im in res.images}) == 4
    restored = dict(zip(sargs.ALL_NAMES, paste(env, res.infotexts[3])))
    assert restored["random"] is True and restored["seed"] == -1
    # each image's infotext shows the values its style drew: pasted, they are on the sliders
    from style_components.params import random_components
    for i in (1, 3):  # batch 0 and 1: A1111 builds infotexts from the batch's seeds and index
        values = dict(zip(sargs.ALL_NAMES, paste(env, res.infotexts[i])))
        assert [values[n] for n in sargs.COMPONENT_NAMES[:30]] == list(random_components(p.all_seeds[i], 30))
    drawn = [restored[n] for n in sargs.COMPONENT_NAMES[:30]]
    _, typed = generate(env, args(components=drawn), seed=p.all_seeds[3])  # random off, same values
    assert close(typed.images[0], res.images[3])
    # image 4 alone, from its own infotext seed, is the same image (its style comes from its seed)
    _, again = generate(env, paste(env, res.infotexts[3]), seed=p.all_seeds[3], batch_size=1)
    assert close(again.images[0], res.images[3])  # batch 1 vs 2: float summation order only
    _, fixed = generate(env, args(random=True, seed=p.all_seeds[3]), seed=p.all_seeds[3])
    assert close(fixed.images[0], res.images[3])


def test_the_grid_infotext_is_the_first_images(env):
    """Found in review: A1111 builds the grid's infotext with the *last* batch's seeds and index
    0 (use_main_prompt), and its Seed with p.all_seeds[0]; a per-image random style must follow
    the Seed, or "Send to txt2img" from the grid (the gallery's first item) pastes another style."""
    from modules.shared import opts
    opts.data["return_grid"] = True
    try:
        p, res = generate(env, args(random=True, seed=-1), batch_size=1, n_iter=2)
    finally:
        opts.data["return_grid"] = False
    assert len(res.infotexts) == 3  # grid, image 1, image 2
    grid, first = (dict(zip(sargs.ALL_NAMES, paste(env, t))) for t in res.infotexts[:2])
    assert f"Seed: {p.all_seeds[0]}," in res.infotexts[0]
    assert [grid[c] for c in sargs.COMPONENT_NAMES] == [first[c] for c in sargs.COMPONENT_NAMES]
    assert res.infotexts[1] != res.infotexts[2]


def test_the_api_json_of_a_per_image_random_style(env):
    """The API returns Processed.js() as `info`: A1111's json.dumps(default=lambda o: None) writes
    null for the per-image random style's entry (a function create_infotext calls), and each
    image's infotext in it holds the values its style drew."""
    import json
    from modules.shared import opts
    opts.data["return_grid"] = True
    try:
        p, res = generate(env, args(random=True, seed=-1), batch_size=2)
    finally:
        opts.data["return_grid"] = False
    info = json.loads(res.js())
    assert callable(p.extra_generation_params[sargs.INFOTEXT_KEY])
    assert info["extra_generation_params"][sargs.INFOTEXT_KEY] is None
    assert info["index_of_first_image"] == 1 and info["all_seeds"] == p.all_seeds
    assert info["infotexts"] == res.infotexts and len(set(res.infotexts[1:])) == 2
    assert all(sargs.INFOTEXT_KEY + ": " in t for t in info["infotexts"])


def test_params_txt_holds_the_style_for_read_generation_parameters(env):
    """A1111 writes params.txt before sampling; the paste button reads it when the prompt is
    empty (infotext_utils.connect_paste). Without the entry there, pasting turned the style off."""
    import os
    from modules import paths
    p, res = generate(env, args(strength=0.6, components=[0.5] * 30))
    with open(os.path.join(paths.data_path, "params.txt"), encoding="utf8") as f:
        saved = f.read()
    restored = dict(zip(sargs.ALL_NAMES, paste(env, saved)))
    assert restored["enabled"] is True and restored["strength"] == 0.6 and restored["c1"] == 0.5
    assert saved.splitlines()[-1] == res.info.splitlines()[-1]


def test_a_renamed_model_file_is_found_by_the_hash_in_the_infotext(env, capsys):
    _, res = generate(env, args(components=[0.5] * 30))
    renamed = res.info.replace("model: demo [", "model: demo-old-name [")
    restored = dict(zip(sargs.ALL_NAMES, paste(env, renamed)))
    assert restored["model"] == "demo"
    assert capsys.readouterr().out.count("is here as 'demo'") == 1  # said once, not once per control
    gone = res.info.replace("model: demo [", "model: other [").replace(
        "[" + env["module"].registry.find("demo").hash, "[00000000")
    assert dict(zip(sargs.ALL_NAMES, paste(env, gone)))["model"] == "other"  # kept: the error will name it


def test_a_pasted_infotext_takes_the_file_it_was_made_with(env, capsys):
    """Found in review: the name won over the recorded hash, so a model updated under its name
    (the old file kept as another name) silently gave another image; and the paste cache kept a
    lookup made before a refresh brought the model."""
    registry = env["module"].registry
    folder = registry.find("demo").adapter.parent
    _, res = generate(env, args(components=[0.5] * 30))
    old_hash = registry.find("demo").hash
    try:
        (folder / "demo.adapter.safetensors").rename(folder / "demo-v1.adapter.safetensors")
        (folder / "demo.space.safetensors").rename(folder / "demo-v1.space.safetensors")
        registry.refresh()
        assert dict(zip(sargs.ALL_NAMES, paste(env, res.info)))["model"] == "demo-v1"  # by its hash
        assert "is here as 'demo-v1'" in capsys.readouterr().out
        other = res.info.replace(f"[{old_hash}]", "[0badc0de]").replace("model: demo ", "model: demo-v1 ")
        assert dict(zip(sargs.ALL_NAMES, paste(env, other)))["model"] == "demo-v1"
        assert "here is another file (hash " in capsys.readouterr().out
        moved = res.info.replace("model: demo [", "model: gone [")
        paste(env, moved)  # not here yet under any name with that hash ...
        (folder / "demo-v1.adapter.safetensors").rename(folder / "demo.adapter.safetensors")
        (folder / "demo-v1.space.safetensors").rename(folder / "demo.space.safetensors")
        registry.refresh()  # ... the 🔄 button
        assert dict(zip(sargs.ALL_NAMES, paste(env, moved)))["model"] == "demo"
    finally:
        for kind in ("adapter", "space"):
            if (folder / f"demo-v1.{kind}.safetensors").exists():
                (folder / f"demo-v1.{kind}.safetensors").rename(folder / f"demo.{kind}.safetensors")
        registry.refresh()


def test_a_pasted_infotexts_problems_are_shown_in_the_accordion_and_cleared_by_the_next(env):
    """The console was the only place a paste's problems went; users of the UI never saw them.
    A1111's connect_paste sets the Markdown to the reader's string (gr.update(value=str(v)))."""
    from modules import infotext_utils
    paste_message = env["module"].paste_message
    message = lambda d: paste_message(d).replace("\\", "")  # the text, markdown escapes removed
    _, res = generate(env, args(components=[0.5] * 30))
    renamed = res.info.replace("model: demo [", "model: demo-old-name [")
    shown = message(infotext_utils.parse_generation_parameters(renamed))
    assert shown.startswith("**Pasted infotext:** ") and "'demo-old-name' is here as 'demo'" in shown
    wide = res.info.replace("components: 0.5", "components: " + "0.1 " * 200 + "0.5")
    assert "not restored" in message(infotext_utils.parse_generation_parameters(wide))
    more = res.info.replace("components: 0.5", "components: " + "0.1 " * 10 + "0.5")  # 40 values, K = 30
    assert "40 component values, but model 'demo' has 30: the last 10 are not restored" in message(
        infotext_utils.parse_generation_parameters(more))
    # cut to the model's K, as a model change cuts the sliders (found in a real WebUI: kept on
    # hidden sliders they stopped every generation with "40 component values given")
    restored = dict(zip(sargs.ALL_NAMES, paste(env, more)))
    assert [restored[f"c{i}"] for i in (1, 30, 31, 40)] == [0.1, 0.5, 0.0, 0.0]
    _, again = generate(env, list(restored.values()))
    assert "components: 0.1 " in again.info  # generated, styled with the 30 values it kept
    random_more = infotext_utils.parse_generation_parameters(more.replace("components: 0.1", "seed: 5, components: 0.1"))
    assert random_more[sargs.INFOTEXT_KEY].startswith("model: demo [") and "seed: 5" in random_more[sargs.INFOTEXT_KEY]
    assert message(random_more) == ""  # a random style draws the model's own K values
    thirty = "components: " + " ".join(["0.5"] * 30)
    assert thirty in res.info
    padded = res.info.replace(thirty, thirty + " 0" * 10)  # trailing zeros say nothing
    assert "component values" not in message(infotext_utils.parse_generation_parameters(padded))
    gone = res.info.replace("model: demo [", "model: gone [").replace(
        "[" + env["module"].registry.find("demo").hash, "[00000000")
    assert "'gone' is not in the model folders" in message(infotext_utils.parse_generation_parameters(gone))
    forge = {"style_components": "[0.5, -1.0]",  # the original Forge extension's, its model not converted here
             "style_components_model": "https://example.org/ip-adapter-style_sdxl_amix_v0.3.0_fp16.safetensors"}
    assert "'sdxl_amix_v0.3.0_fp16' is not in the model folders" in message(forge)
    assert "sdxl\\_amix" in paste_message(forge)  # shown as written, not as emphasis
    # an infotext is anyone's text: a model name must not become markup in the page
    tag = res.info.replace("model: demo [", "model: <img src=x onerror=alert(1)> [")
    shown = paste_message(infotext_utils.parse_generation_parameters(tag))
    assert "\\<img src=x onerror=alert(1)\\>" in shown and "<img" not in shown.replace("\\<img", "")
    assert message(infotext_utils.parse_generation_parameters(res.info)) == ""
    assert message(infotext_utils.parse_generation_parameters("a cat\nSteps: 2, Seed: 3, Size: 64x64")) == ""


def test_paste_without_the_key_disables_and_leaves_other_controls(env):
    restored = paste(env, "a castle\nNegative prompt: blurry\nSteps: 2, Seed: 3")
    assert restored[0] is False and all(v is None for v in restored[1:])


def test_api_dict_and_positional_forms_are_equivalent(env):
    comps = [0.25 * ((i % 5) - 2) for i in range(30)]
    positional = args(strength=0.8, components=comps)
    as_dict = [{"enabled": True, "model": "demo", "strength": 0.8, "components": comps}]
    assert sargs.parse(as_dict) == sargs.parse(positional)
    _, a = generate(env, positional)
    _, b = generate(env, as_dict)
    assert torch.equal(a.images[0], b.images[0]) and a.info == b.info
    assert sargs.parse([{"enabled": True, "seed": 7}]).params.seed == 7  # a seed alone asks for random
    # a dict is a request for the style: without "enabled" it is on (found in review: it was
    # silently off), and "enabled": false turns it off
    _, implicit = generate(env, [{"model": "demo", "strength": 0.8, "components": comps}])
    assert torch.equal(implicit.images[0], a.images[0]) and implicit.info == a.info
    _, off = generate(env, [{"enabled": False, "model": "demo", "components": comps}])
    _, bare = generate(env, None)
    assert torch.equal(off.images[0], bare.images[0])
    with pytest.raises(StyleComponentsError, match=f"at most {sargs.N_ARGS} arguments"):
        sargs.parse([True] * (sargs.N_ARGS + 1))


@pytest.mark.parametrize("bad,message", [
    ([{"enabled": True, "strenght": 0.8}], "unknown argument 'strenght'"),
    ([{"enabled": True, "strength": "strong"}], "strength: expected a finite number, got 'strong'"),
    ([{"enabled": True, "components": [1, "x"]}], "components: value 2 is 'x', not a finite number"),
    (args(blocks="everything"), "blocks: 'everything' is not one of"),
    (args(start=0.8, end=0.2), "range: start 0.8 and end 0.2"),
    (args(model="nope"), "style model 'nope' not found"),
    (args(blocks="custom", block_weights="1 0 1"), "weights: 3 given, the adapter has 16"),
    ([True, "demo", "1.0"], "multiplier: expected a finite number"),
    # more values than the model's K, the extra ones not 0 (found by mutation: untested)
    (args(components=[0.5] * 31), "31 component values given, model 'demo' has 30"),
])
def test_wrong_argument_fails_the_request_with_a_clear_error(env, bad, message):
    import re
    with pytest.raises(StyleComponentsError, match=re.escape(message)):
        generate(env, bad)
    assert_unet_clean(env)


def test_reference_images_as_base64_fill_the_components(env, monkeypatch):
    from PIL import Image
    from style_components import files
    seen = {}

    class FakeExtractor:  # the real one is tested in test_extract.py; here only the wiring matters
        def embed(self, images, weights):
            seen["sizes"], seen["weights"] = [im.size for im in images], weights
            return env["space"].to_embedding(torch.tensor([0.5] * 30))

    module = env["module"]
    # an API path is refused first, also by a model that reads no references (found in a real WebUI)
    with pytest.raises(StyleComponentsError, match="not file paths"):
        generate(env, [{"enabled": True, "model": "demo", "ref_images": ["/etc/passwd"]}], is_api=True)
    monkeypatch.setattr(module, "load_extractor", lambda path: FakeExtractor())
    extractor_file = module.registry.find("demo").adapter.parent / "demo.extractor.safetensors"
    files.write(extractor_file, {"x": torch.zeros(1)}, {"format": "style-components-extractor"})
    module.registry.refresh()
    try:
        buf = io.BytesIO()
        Image.new("RGB", (20, 10), (200, 30, 30)).save(buf, format="PNG")
        b64 = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
        p, res = generate(env, [{"enabled": True, "model": "demo", "ref_images": [b64, b64[22:]],
                                 "ref_weights": [1, 3]}])
        first = dict(seen)
        # line-wrapped as GNU base64 writes it, which A1111's own decoder takes (found in review: refused)
        wrapped = base64.encodebytes(buf.getvalue()).decode()
        assert wrapped.count("\n") > 1
        _, from_wrapped = generate(env, [{"enabled": True, "model": "demo", "ref_images": [wrapped, wrapped],
                                          "ref_weights": [1, 3]}])
        assert from_wrapped.info == res.info and seen == first
        # references decide the style; an XYZ component axis then moves it (found in review: the
        # references overwrote the axis' value, so every cell of the grid was the same image)
        _, moved = generate(env, [{"model": "demo", "ref_images": [b64]}], style_components_xyz={"component 3": 2.0})
        moved_values = dict(zip(sargs.ALL_NAMES, paste(env, moved.info)))
        assert [round(moved_values[c], 4) for c in sargs.COMPONENT_NAMES[:4]] == [0.5, 0.5, 2.0, 0.5]
        with pytest.raises(StyleComponentsError, match="neither a file nor a base64"):
            generate(env, [{"enabled": True, "model": "demo", "ref_images": ["not an image"]}])
        # a server file path: fine from the UI (gradio hands uploads over as temp files), refused from the API
        on_disk = extractor_file.parent / "ref.png"
        Image.new("RGB", (20, 10), (200, 30, 30)).save(on_disk)
        generate(env, [{"enabled": True, "model": "demo", "ref_images": [str(on_disk)]}])
        with pytest.raises(StyleComponentsError, match="not file paths"):
            generate(env, [{"enabled": True, "model": "demo", "ref_images": [str(on_disk)]}], is_api=True)
        on_disk.write_text("not a picture")
        with pytest.raises(StyleComponentsError, match="ref.png is not a readable image"):
            generate(env, [{"enabled": True, "model": "demo", "ref_images": [str(on_disk)]}])
        on_disk.unlink()
        # whatever else fails while reading the references stops the generation with its message
        monkeypatch.setattr(FakeExtractor, "embed", lambda self, images, weights: 1 / 0)
        with pytest.raises(StyleComponentsError, match="ZeroDivisionError"):
            generate(env, [{"enabled": True, "model": "demo", "ref_images": [b64]}])
    finally:
        extractor_file.unlink()
        module.registry.refresh()
    assert first == {"sizes": [(20, 10), (20, 10)], "weights": [1.0, 3.0]}
    assert seen == {"sizes": [(20, 10)], "weights": None}  # the path, read in UI mode
    restored = dict(zip(sargs.ALL_NAMES, paste(env, res.info)))
    assert [round(restored[c], 4) for c in sargs.COMPONENT_NAMES[:30]] == [0.5] * 30
    assert restored["refs"] == "2 reference images"


def test_xyz_axes_are_there_when_the_ui_is_built_before_the_before_ui_callbacks(tmp_path):
    """With --nowebui, A1111's Api.__init__ (modules/api/api.py) builds the scripts' UI, where
    xyz_grid.Script.ui fixes its axis list, before webui.api_only calls the before-UI callbacks:
    found in review, an XYZ request with a style axis then failed with IndexError. The script's
    loader (modules/scripts.py load_scripts) loads the WebUI's own scripts/ before extensions'."""
    import a1111_env
    import xyz_grid
    from modules import script_callbacks, scripts
    xyz_grid.axis_options[:] = [a for a in xyz_grid.axis_options if not a.label.startswith("Style ")]
    xyz_grid.Script.__module__ = "xyz_grid.py"
    data, callbacks = list(scripts.scripts_data), {k: list(v) for k, v in script_callbacks.callbacks.items()}
    scripts.scripts_data[:] = [scripts.ScriptClassData(xyz_grid.Script, "xyz_grid.py", "", xyz_grid)]
    try:
        scripts.load_script(str(a1111_env.ROOT / "scripts" / "style_components.py"), str(a1111_env.ROOT))
    finally:  # the other tests' loaded script stays registered
        scripts.scripts_data[:] = data
        script_callbacks.callbacks.clear()
        script_callbacks.callbacks.update(callbacks)
    labels = [a.label for a in xyz_grid.axis_options]  # no before_ui callback has run
    assert labels.count("Style strength") == 1 and labels.count("Style component 30") == 1


def test_xyz_axes_are_registered_and_override_the_values(env):
    import xyz_grid
    from modules import script_callbacks, scripts
    xyz_grid.Script.__module__ = "xyz_grid.py"  # A1111 names script modules after their file
    scripts.scripts_data.append(scripts.ScriptClassData(xyz_grid.Script, "xyz_grid.py", "", xyz_grid))
    try:
        script_callbacks.before_ui_callback()
        script_callbacks.before_ui_callback()  # a UI reload does not add them twice
    finally:
        scripts.scripts_data.pop()
    labels = [a.label for a in xyz_grid.axis_options]
    for label in ("Style strength", "Style multiplier", "Style model", "Style component 1", "Style component 30"):
        assert labels.count(label) == 1, label
    axis = {a.label: a for a in xyz_grid.axis_options}
    assert axis["Style model"].choices() == ["demo", "xl"]
    proc = env["processing"]
    p = proc.StableDiffusionProcessingTxt2Img(
        sd_model=proc.StandinSDModel(env["unet"], context_dim=64), prompt="a", seed=1, steps=1,
        scripts=__import__("a1111_env").runner(env["module"]), script_args=[None] + args())
    axis["Style strength"].apply(p, 0.5, [0.5])
    axis["Style component 3"].apply(p, 2.0, [2.0])
    res = proc.process_images(p)
    restored = dict(zip(sargs.ALL_NAMES, paste(env, res.info)))
    assert restored["strength"] == 0.5 and restored["c3"] == 2.0 and restored["c2"] == 0.0
    # the image is the one the same values typed in give
    _, typed = generate(env, args(strength=0.5, components=[0, 0, 2.0]), seed=1, prompt="a", negative_prompt="")
    assert torch.equal(typed.images[0], res.images[0]) and typed.info == res.info
    # the model axis picks the model (found by mutation: it was never applied in a test): the
    # accordion says the SDXL 'xl', the axis 'demo', which fits this SD1 UNet
    p = proc.StableDiffusionProcessingTxt2Img(
        sd_model=proc.StandinSDModel(env["unet"], context_dim=64), prompt="a", seed=1, steps=1,
        scripts=__import__("a1111_env").runner(env["module"]),
        script_args=[None] + args(model="xl", strength=0.5, components=[0, 0, 2.0]))
    axis["Style model"].apply(p, "demo", ["demo"])
    by_axis = proc.process_images(p)
    assert dict(zip(sargs.ALL_NAMES, paste(env, by_axis.info)))["model"] == "demo"
    assert torch.equal(by_axis.images[0], typed.images[0])

    def xyz_cell(script_args, **values):
        p = proc.StableDiffusionProcessingTxt2Img(
            sd_model=proc.StandinSDModel(env["unet"], context_dim=64), prompt="a castle",
            negative_prompt="blurry", seed=1, steps=1, scripts=__import__("a1111_env").runner(env["module"]),
            script_args=[None] + script_args)
        for label, value in values.items():
            axis[label].apply(p, value, [value])
        return proc.process_images(p)
    # an XYZ style axis turns the extension on: a grid labelled with style values asks for them
    off = xyz_cell(args(enabled=False, multiplier=1.0), **{"Style multiplier": 2.0, "Style component 1": 1.0})
    _, want = generate(env, args(multiplier=2.0, components=[1.0]), seed=1)
    assert torch.equal(off.images[0], want.images[0]) and off.info == want.info
    # a component axis on a random style from a fixed seed moves that style (found in review: it
    # moved the stale sliders instead); seed -1 has no one style to move
    from style_components.params import random_components
    drawn = xyz_cell(args(random=True, seed=7, components=[1.0] * 30), **{"Style component 3": 2.0})
    values = list(random_components(7, 30))
    values[2] = 2.0
    _, want = generate(env, args(components=values), seed=1)
    assert torch.equal(drawn.images[0], want.images[0]) and drawn.info == want.info
    with pytest.raises(StyleComponentsError, match="style seed -1 draws each image's own"):
        xyz_cell(args(random=True, seed=-1), **{"Style component 3": 2.0})
    assert_unet_clean(env)


def test_settings_are_registered(env):
    from modules import script_callbacks, shared
    script_callbacks.ui_settings_callback()
    for key in ("style_components_model_dir", "style_components_extractor_device",
                "style_components_extractor_precision", "style_components_keep_loaded"):
        assert key in shared.opts.data_labels
    assert shared.opts.data_labels["style_components_keep_loaded"].section[0] == "style_components"


def test_sdxl_adapter_on_sd1_gives_one_message_and_an_unstyled_image(env, capsys):
    hires = dict(enable_hr=True, steps=1, hr_second_pass_steps=1, denoising_strength=0.9)
    _, bare = generate(env, None, **hires)
    p, res = generate(env, args(model="xl", components=[1.0] * 30), **hires)
    assert torch.equal(res.images[0], bare.images[0])
    out = capsys.readouterr().out
    assert out.count("for SDXL (70 cross-attention layers); this UNet is SD1 (16)") == 1
    assert "adapter 'xl' is for SDXL" in out  # the dropdown's name (found in a real WebUI: it said the file's inner name)
    assert len(p.comments) == 1 and "without the style" in next(iter(p.comments))
    assert sargs.INFOTEXT_KEY not in res.info
    assert not env["errors"].reported
    assert_unet_clean(env)


# -- another model within a job: the refiner, a hires checkpoint ------------------------------

def _other_model(env, name, **overrides):
    """A second checkpoint (stand-in sd_models.add): the narrow UNet again with other weights
    (same architecture) or, with overrides, a UNet of another layout, as the SDXL refiner is to
    SDXL's base."""
    from modules import sd_models
    from unets import ldm_unet
    unet = ldm_unet(**{**dict(model_channels=32, context_dim=64, num_heads=4), **overrides})
    with torch.no_grad():
        g = torch.Generator().manual_seed(3)
        for w in unet.parameters():
            w.add_(torch.randn(w.shape, generator=g) * 0.02)
    model = env["processing"].StandinSDModel(unet, context_dim=env["context_dim"], name=name)
    return model, sd_models.add(model)


def _record_calls(unets):
    """(unet index, x, t, context, output, hooked) of every call of each UNet."""
    from style_components.layers import find_attn2
    calls, handles = [], []
    for i, unet in enumerate(unets):
        layers = find_attn2(unet)

        def hook(module, a, kwargs, out, i=i, layers=layers):
            hooked = any(l.module._forward_hooks for l in layers)
            calls.append((i, a[0].clone(), a[1].clone(), kwargs["context"].clone(), out.clone(), hooked))
        handles.append(unet.register_forward_hook(hook, with_kwargs=True))
    return calls, handles


def _assert_clean(*unets):
    from style_components.layers import find_attn2
    for unet in unets:
        assert not unet._forward_pre_hooks
        assert not any(l.module._forward_hooks for l in find_attn2(unet))


def test_a_refiner_of_the_same_architecture_keeps_the_style(env):
    """A refiner switch (v1.10 sd_samplers_common.apply_refiner) makes another model object
    shared.sd_model mid-pass (with "checkpoints loaded at the same time" > 1, or any other
    config). The style follows it: the refiner's steps take the same rows and styles."""
    from style_components import inject
    refiner, info = _other_model(env, "refiner")
    unet = refiner.model.diffusion_model
    calls, handles = _record_calls([env["unet"], unet])
    try:
        p, res = generate(env, args(components=[1.5] * 30), steps=2, refiner_checkpoint_info=info,
                          refiner_switch_at=0.5)
    finally:
        for h in handles:
            h.remove()
    assert [c[0] for c in calls] == [0, 1] and all(c[5] for c in calls)
    assert res.extra_generation_params["Refiner"] == "refiner" and not p.comments
    _, x, t, ctx, out, _ = calls[1]
    styles = env["space"].to_embedding(torch.tensor([[1.5] * 30]))
    with torch.no_grad():
        plain = unet(x, t, context=ctx)
        with inject.apply(unet, env["adapter"], styles, rows=[0, inject.NULL]):
            styled = unet(x, t, context=ctx)
    assert close(out, styled) and not close(out, plain, tol=1e-3)
    assert sargs.INFOTEXT_KEY + ": " in res.info
    _assert_clean(env["unet"], unet)


def test_a_refiner_the_adapter_does_not_fit_runs_unstyled_and_the_infotext_keeps_the_style(env):
    """The SDXL refiner case: its UNet has another layout. The steps before the switch keep the
    style, the rest run without it, the UI says so once, and the infotext keeps the style (the
    steps before the switch had it): pasting it reproduces the image."""
    refiner, info = _other_model(env, "refiner-xl", attention_resolutions=[4, 2])
    unet = refiner.model.diffusion_model
    kw = dict(steps=2, batch_size=2, refiner_checkpoint_info=info, refiner_switch_at=0.5)
    _, bare = generate(env, None, **kw)
    calls, handles = _record_calls([env["unet"], unet])
    try:
        p, res = generate(env, args(components=[1.5] * 30), **kw)
    finally:
        for h in handles:
            h.remove()
    assert [(c[0], c[5]) for c in calls] == [(0, True), (1, False)]
    assert not torch.equal(res.images[0], bare.images[0])
    assert len(p.comments) == 1 and "after the switch run without the style" in next(iter(p.comments))
    assert sargs.INFOTEXT_KEY + ": " in res.info
    _, again = generate(env, paste(env, res.info), **kw)
    assert torch.equal(again.images[0], res.images[0]) and again.info == res.info
    _assert_clean(env["unet"], unet)


def test_unet_calls_before_a_passs_first_step_run_plain_and_are_not_reported(env):
    """Found untested by mutation (session.Generation.start_pass sets progress OFF): a UNet call
    after the pass is hooked but before the sampler announces its first step (another script
    calling the UNet while preparing) is not the sampler's: it runs without the style and is not
    reported as a call the style missed -- in the first pass and in a later one alike."""
    from style_components import models
    from style_components.inject import NULL
    from style_components.params import StyleParams
    from style_components.session import Generation
    model = models.Registry([env["models"] / "StyleComponents"]).load("demo")
    told = []
    gen = Generation(StyleParams(components=(1.5,) * 30, model="demo"), model, warn=told.append)
    unet, g = env["unet"], torch.Generator().manual_seed(4)
    x, t, ctx = torch.randn(2, 4, 8, 8, generator=g), torch.full((2,), 500), torch.randn(2, 77, env["context_dim"], generator=g)
    with torch.no_grad():
        plain = unet(x, t, context=ctx)
        for _ in range(2):  # the second pass starts where the first one's last step left off
            gen.start_pass(unet, [None])
            assert torch.equal(unet(x, t, context=ctx), plain)
            gen.step([0, NULL], 0, 1)
            assert not close(unet(x, t, context=ctx), plain, tol=1e-3)
            gen.check_pass()
            gen.end_pass()
    assert told == []
    assert_unet_clean(env)


def test_a_base_the_adapter_does_not_fit_with_a_refiner_that_fits_is_styled_after_the_switch(env):
    """The reverse of the case above: the base runs unstyled (one message), the refiner takes the
    style from the switch on, and so the infotext names the style: pasting it reproduces the image."""
    base, _ = _other_model(env, "base-xl", attention_resolutions=[4, 2])
    refiner, info = _other_model(env, "refiner")
    unets = [base.model.diffusion_model, refiner.model.diffusion_model]
    kw = dict(steps=2, sd_model=base, refiner_checkpoint_info=info, refiner_switch_at=0.5)
    _, bare = generate(env, None, **kw)
    calls, handles = _record_calls(unets)
    try:
        p, res = generate(env, args(components=[1.5] * 30), **kw)
    finally:
        for h in handles:
            h.remove()
    assert [(c[0], c[5]) for c in calls] == [(0, False), (1, True)]
    assert not torch.equal(res.images[0], bare.images[0])
    assert len(p.comments) == 1 and "without the style" in next(iter(p.comments))
    assert sargs.INFOTEXT_KEY + ": " in res.info
    _, again = generate(env, paste(env, res.info), **kw)
    assert torch.equal(again.images[0], res.images[0]) and again.info == res.info
    _assert_clean(*unets)


def test_a_hires_checkpoint_the_adapter_does_not_fit_leaves_every_first_pass_styled(env):
    """Hires fix on a checkpoint of another layout: the hires pass runs unstyled, each batch's
    first pass (on the selected checkpoint, reloaded per batch) keeps the style, the infotext
    keeps it too, and one message says so."""
    other, info = _other_model(env, "hires-xl", attention_resolutions=[4, 2])
    kw = dict(steps=1, n_iter=2, enable_hr=True, hr_second_pass_steps=1, denoising_strength=0.9,
              hr_checkpoint_info=info)
    calls, handles = _record_calls([env["unet"], other.model.diffusion_model])
    try:
        p, res = generate(env, args(components=[1.5] * 30), **kw)
    finally:
        for h in handles:
            h.remove()
    assert [(c[0], c[5]) for c in calls] == [(0, True), (1, False), (0, True), (1, False)]
    assert len(p.comments) == 1 and "This pass runs without the style" in next(iter(p.comments))
    assert all(sargs.INFOTEXT_KEY + ": " in info for info in res.infotexts)
    _, again = generate(env, paste(env, res.infotexts[1]), **kw)
    assert torch.equal(again.images[1], res.images[1])
    _assert_clean(env["unet"], other.model.diffusion_model)


def test_an_sd_unet_in_place_of_the_unet_stops_the_generation(env, monkeypatch):
    """v1.10's "SD Unet" setting (a TensorRT engine, for one) makes UNetModel.forward run another
    module, so the style's layers never run. Found in review: the image came out unstyled and
    its infotext named the style. Now the pass fails with a message; strength 0 (no layer to
    run) still generates."""
    import copy

    from ldm.modules.diffusionmodules.openaimodel import UNetModel
    from modules import sd_unet
    _, bare = generate(env, None)
    engine_weights, original = copy.deepcopy(env["unet"]), UNetModel.forward

    class Engine(sd_unet.SdUnet):  # an engine built from the same weights, without our hooks
        def forward(self, x, timesteps, context, *args, **kwargs):
            return original(engine_weights, x, timesteps, context, *args, **kwargs)
    monkeypatch.setattr(UNetModel, "forward", sd_unet.create_unet_forward(original))
    monkeypatch.setattr(sd_unet, "current_unet", Engine())
    with pytest.raises(StyleComponentsError, match="none of the UNet's cross-attention layers ran.*SD Unet"):
        generate(env, args(components=[1.0] * 30))
    assert_unet_clean(env)
    _, off = generate(env, args(components=[1.0] * 30, strength=0.0))
    assert torch.equal(off.images[0], bare.images[0])
    monkeypatch.undo()
    _, after = generate(env, None)
    assert torch.equal(after.images[0], bare.images[0])


@pytest.mark.parametrize("end", [1.0, 0.5])
def test_unet_calls_that_match_no_step_are_unstyled_and_reported(env, monkeypatch, end):
    """An extension that calls the UNet besides the sampler's own calls (an extra guidance pass
    on one row, say): that call cannot be matched to the step's images, runs without the style,
    and the UI says so once (unless the style was off at that step anyway); the sampler's own
    calls keep their style."""
    from modules import sd_samplers
    original = sd_samplers.create_sampler

    def create_sampler(name, model):
        sampler = original(name, model)
        denoiser = sampler.model_wrap_cfg.inner_model  # the k-diffusion denoiser the CFG denoiser calls
        inner = denoiser.forward

        def with_extra_call(x, sigma, cond):
            out = inner(x, sigma, cond=cond)
            if sampler.model_wrap_cfg.step == 1:  # the second of two steps: progress 0.5
                inner(x[-1:], sigma[-1:], cond={k: [v[0][-1:]] for k, v in cond.items()})
            return out
        denoiser.forward = with_extra_call
        return sampler
    monkeypatch.setattr(sd_samplers, "create_sampler", create_sampler)
    _, bare = generate(env, None, steps=2)
    calls, handles = _record_calls([env["unet"]])
    try:
        p, res = generate(env, args(components=[1.5] * 30, end=end), steps=2)
    finally:
        handles[0].remove()
    assert [c[5] for c in calls] == [True] * 3  # hooked throughout, inert on the extra call
    x, t, ctx, out = calls[2][1:5]
    with torch.no_grad():
        assert torch.equal(out, env["unet"](x, t, context=ctx))
    if end == 1.0:
        assert len(p.comments) == 1 and "match no sampling step's batch" in next(iter(p.comments))
    else:
        assert not p.comments
    assert not torch.equal(res.images[0], bare.images[0]) and sargs.INFOTEXT_KEY + ": " in res.info
    _assert_clean(env["unet"])


def test_a_style_range_that_holds_no_step_is_reported(env):
    """Found in review: a range such as 0.6-0.9 at 2 steps (progress 0 and 0.5) holds no step; the
    image came out unstyled while the infotext recorded the style, and nothing said so."""
    _, bare = generate(env, None, steps=2)
    p, res = generate(env, args(components=[1.5] * 30, start=0.6, end=0.9), steps=2)
    assert torch.equal(res.images[0], bare.images[0])
    assert len(p.comments) == 1 and "holds none of this pass's sampling steps" in next(iter(p.comments))
    p, res = generate(env, args(components=[1.5] * 30, start=0.5, end=0.9), steps=2)
    assert not p.comments and not torch.equal(res.images[0], bare.images[0])
    _assert_clean(env["unet"])


def test_on_forge_the_script_stays_off_and_says_why(env, tmp_path, monkeypatch, capsys):
    """Forge keeps its UNet in forge_objects (no sd_model.model.diffusion_model): the script must
    not show up and fail every generation there; it says once which extension to use."""
    import sys
    import types
    from a1111_env import load_script
    from modules import script_callbacks
    forge = types.ModuleType("modules_forge")
    forge.__spec__ = types.SimpleNamespace(name="modules_forge")
    monkeypatch.setitem(sys.modules, "modules_forge", forge)
    try:
        module = load_script(tmp_path)
        assert module.FORGE and module.StyleComponentsScript().show(False) is False
        assert "sd-webui-forge-style-components" in capsys.readouterr().out
        assert not script_callbacks.callbacks["cfg_denoiser"]
    finally:
        monkeypatch.delitem(sys.modules, "modules_forge")
        env["module"] = load_script(env["models"])
    assert not env["module"].FORGE


def test_a_job_that_died_before_sampling_leaves_no_hook_for_the_next(env, monkeypatch):
    """Found in review: the UNet pre-hook of a pass whose sampler never ran (an error between
    process_before_every_sampling and the sampler call) stayed on the UNet into later jobs."""
    from modules import scripts
    hook = scripts.ScriptRunner.process_before_every_sampling

    def then_dies(self, p, **kwargs):  # e.g. txt2img_image_conditioning(x), an argument of the sampler call
        hook(self, p, **kwargs)
        raise RuntimeError("boom before the sampler")
    with monkeypatch.context() as m:
        m.setattr(scripts.ScriptRunner, "process_before_every_sampling", then_dies)
        with pytest.raises(RuntimeError, match="boom"):
            generate(env, args(components=[1.0] * 30))
    assert env["unet"]._forward_pre_hooks  # left behind: A1111 calls no script hook after the error
    _, bare = generate(env, None)
    _, off = generate(env, args(enabled=False))
    assert not env["unet"]._forward_pre_hooks
    assert torch.equal(off.images[0], bare.images[0])


def test_a_sampler_that_skips_the_pass_hook_still_gets_the_style(env, monkeypatch):
    """Found in review: A1111's own "img2img alternative test" (scripts/img2imgalt.py, v1.10) swaps
    p.sample for a function that makes its own sampler and calls sample_img2img without
    process_before_every_sampling: the image came out unstyled under a styled infotext, and an error
    kept for sampling (a missing model) was never raised. Emulated here as that script does it
    (its noise-finding loop left out)."""
    from modules import processing, sd_samplers
    init = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    kw = dict(img2img=True, init_latent=init, steps=2, denoising_strength=0.9)
    _, plain = generate(env, args(components=[2.0] * 30, strength=1.5), **kw)
    _, off = generate(env, None, **kw)
    real_init = processing.StableDiffusionProcessingImg2Img.init

    def init_with_alt(self, *a):
        real_init(self, *a)

        def sample_extra(conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
            sampler = sd_samplers.create_sampler(self.sampler_name, self.sd_model)
            return sampler.sample_img2img(self, self.init_latent, self.noise(tuple(self.init_latent.shape[1:])),
                                          conditioning, unconditional_conditioning,
                                          image_conditioning=self.image_conditioning)
        self.sample = sample_extra
    monkeypatch.setattr(processing.StableDiffusionProcessingImg2Img, "init", init_with_alt)
    p, alt = generate(env, args(components=[2.0] * 30, strength=1.5), **kw)
    assert torch.equal(alt.images[0], plain.images[0]) and not torch.equal(alt.images[0], off.images[0])
    with pytest.raises(StyleComponentsError, match="style model 'no-such-model' not found"):
        generate(env, args(model="no-such-model", components=[2.0] * 30), **kw)
    _, after = generate(env, None, **kw)
    assert torch.equal(after.images[0], off.images[0])
    assert_unet_clean(env)


def test_an_interrupt_before_the_range_is_not_called_a_range_problem(env):
    """Found in review: Interrupt before a range starting at 0.5 said "Widen the range"."""
    from modules import script_callbacks

    def interrupt(params):
        if params.denoiser.step == 1:
            env["shared"].state.interrupted = True
    script_callbacks.on_cfg_denoiser(interrupt)
    try:
        p, _ = generate(env, args(components=[1.0] * 30, start=0.5, end=1.0), steps=4)
    finally:
        script_callbacks.remove_callbacks_for_function(interrupt)
        env["shared"].state.reset()
    assert not p.comments


def test_a_per_image_style_draws_from_any_image_seed(env):
    """Found in review: an image seed A1111 accepts (a typed -5, one above 2**53 through the API)
    failed the job with per-image random styles."""
    from style_components.params import MAX_SEED, StyleParams, random_components
    from modules import infotext_utils
    for image_seed in (-5, 2 ** 60):
        p, res = generate(env, args(random=True, seed=-1), seed=image_seed)
        assert p.all_seeds[0] == image_seed
        # the style drawn is the one the seed maps to (found by mutation: only "it ran" was checked)
        recorded, _ = StyleParams.parse(infotext_utils.parse_generation_parameters(res.infotexts[0])[sargs.INFOTEXT_KEY])
        assert recorded.components == random_components(image_seed % (MAX_SEED + 1), 30), image_seed
