"""The script's gradio UI builds with A1111's gradio (3.41.2) and matches the argument layout.

tools/setup.sh installs A1111's UI pins (the `ui` extra: gradio==3.41.2, fastapi==0.94.0,
httpx==0.24.1, pydantic<2, numpy<2); skipped where gradio is absent."""

import pytest

gr = pytest.importorskip("gradio")

import a1111_env  # noqa: E402
from style_components import script_args as sargs  # noqa: E402


@pytest.fixture(scope="module")
def module(tmp_path_factory):
    return a1111_env.load_script(tmp_path_factory.mktemp("models"))


def test_accordion_controls_follow_the_argument_layout(module):
    script = module.StyleComponentsScript()
    with gr.Blocks():
        controls = script.ui(False)
    assert len(controls) == sargs.N_ARGS
    from modules.ui_components import InputAccordion
    assert isinstance(controls[0], InputAccordion)
    labels = [getattr(c, "label", None) for c in controls]
    assert labels[1:4] == ["Style model", "Multiplier", "Strength"]
    assert labels[sargs.ALL_NAMES.index("c1")] == "Style component 1"
    # the original extension's ranges (found in review: 0..3, 0..2 and -5..5 could not hold its
    # styles inverted by a negative multiplier, strengths past 2, or its components up to 10)
    ranges = [(c.minimum, c.maximum) for c in controls[2:4] + controls[sargs.ALL_NAMES.index("c1"):]]
    assert ranges == [(-3, 3), (-3, 3)] + [(-10, 10)] * sargs.MAX_COMPONENTS
    values = [c.value for c in controls]
    parsed = sargs.parse(values)  # the UI's initial values are valid, disabled arguments
    assert parsed.enabled is False and parsed.params.components == ()
    # every control but the image upload, and the line that reports a paste's problems
    assert len(script.infotext_fields) == sargs.N_ARGS
    assert script.infotext_fields[-1][1] is module.paste_message
    assert script.infotext_fields[-1][0].elem_id == "style_components_txt2img_paste_message"


def test_send_to_img2img_copies_every_control(module):
    """Found in review: paste_field_names named the infotext key while the fields are named by
    reader functions, so A1111's "Send to img2img/inpaint" left every style control behind."""
    from modules import infotext_utils
    tabs = {}
    for is_img2img in (False, True):
        script = module.StyleComponentsScript()
        with gr.Blocks():
            script.ui(is_img2img)
        tabs[is_img2img] = script
    src, dst = tabs[False], tabs[True]
    inputs, outputs = infotext_utils.send_to_fields(src.infotext_fields, dst.infotext_fields, src.paste_field_names)
    assert len(inputs) == len(outputs) == sargs.N_ARGS - 1
    strip = lambda c: c.elem_id.split("2img_", 1)[1]
    assert [strip(c) for c in inputs] == [strip(c) for c in outputs]
    assert inputs[0].elem_id.startswith("style_components_txt2img_enabled") and outputs[-1].elem_id.endswith(f"img2img_c{sargs.MAX_COMPONENTS}")


def test_settings_offer_choices_not_free_text(module):
    """Found in review: choices passed without a component made A1111 build Textboxes (gradio
    drops `choices` there), so a typo could select no device or silently fall back to fp32."""
    from modules import script_callbacks, shared, ui_settings
    script_callbacks.ui_settings_callback()
    with gr.Blocks():
        device = ui_settings.create_setting_component("style_components_extractor_device")
        precision = ui_settings.create_setting_component("style_components_extractor_precision")
    assert isinstance(device, gr.Radio) and [c for c, _ in device.choices] == ["auto", "cpu", "cuda"]
    assert isinstance(precision, gr.Radio) and [c for c, _ in precision.choices] == ["fp32", "fp16", "bf16"]
    assert shared.opts.style_components_extractor_device == "auto"


def test_every_accordion_control_has_a_tooltip(module):
    """javascript/style_components.js titles each control by elem_id (sliders c1..cN in a loop)."""
    import re
    from pathlib import Path
    script = module.StyleComponentsScript()
    with gr.Blocks() as page:
        script.ui(False)
    prefix = "style_components_txt2img_"
    ids = {b.elem_id[len(prefix):] for b in page.blocks.values()
           if isinstance(b, gr.components.IOComponent | gr.Button) and not isinstance(b, gr.Markdown)  # text, not a control
           and (b.elem_id or "").startswith(prefix)}
    ids = {i.removesuffix("-checkbox") for i in ids}      # InputAccordion's own checkbox
    js = (Path(__file__).parents[1] / "javascript" / "style_components.js").read_text()
    tips = set(re.findall(r'^\s*"(\w+)":', js, re.M))
    assert {"enabled", "model", "strength", "copy", "c1"} <= ids and len(ids) > 70
    assert {i for i in ids if not re.fullmatch(r"c\d+", i)} - tips == set()


def test_extension_tab_builds(module):
    with gr.Blocks():
        tabs = module.on_ui_tabs()
    assert tabs[0][1:] == ("Style Components", "style_components")


def test_the_tabs_convert_button_names_what_is_wrong(module, tmp_path):
    """Found in a real WebUI: a bad model name was called a "preset name", and an empty path
    said "Error: .: is not a file"."""
    with gr.Blocks() as page:
        module.on_ui_tabs()
    convert = next(f.fn for f in page.fns if f.fn is not None and f.fn.__name__ == "convert")
    assert convert("Style space (PCA pickle)", str(tmp_path / "x.pkl"), "../x", "v0.3").startswith(
        "Error: model name '../x': use letters")
    assert convert("Style space (PCA pickle)", "  ", "mine", "v0.3") == (
        "Error: no file given: put the original file's path on the server in the box")
    assert "nope.pkl" in convert("Style space (PCA pickle)", str(tmp_path / "nope.pkl"), "mine", "v0.3")
    assert not list(tmp_path.glob("*.safetensors"))


@pytest.fixture(scope="module")
def callbacks(tmp_path_factory):
    """The accordion's real gradio event handlers, by function name, over a models folder with 'demo'."""
    from unets import ldm_unet
    env = a1111_env.build_env(ldm_unet(device="meta"), tmp_path_factory)
    with gr.Blocks() as demo:
        env["module"].StyleComponentsScript().ui(False)
    return {f.fn.__name__: f.fn for f in demo.fns if f.fn is not None} | {"env": env}


def test_choosing_a_model_shows_its_k_sliders_with_the_space_labels(callbacks):
    updates = callbacks["on_model"]("demo")
    assert len(updates) == sargs.MAX_COMPONENTS
    assert [u["visible"] for u in updates] == [True] * 30 + [False] * (sargs.MAX_COMPONENTS - 30)
    assert updates[0]["label"] == "label 0" and updates[29]["label"] == "label 29"
    assert "value" not in updates[29] and all(u["value"] == 0.0 for u in updates[30:])  # hidden: zeroed


def test_import_export_round_trip_and_zero(callbacks):
    values = [u["value"] for u in callbacks["on_import"]("demo", "0.5, -1.25 2")]
    assert values[:4] == [0.5, -1.25, 2.0, 0.0] and len(values) == sargs.MAX_COMPONENTS
    # the original Forge extension's form, copied from its PNG info
    assert [u["value"] for u in callbacks["on_import"]("demo", '"[0.5, -1.25, 2]"')] == values
    text = callbacks["on_export"]("demo", False, -1, *values)
    assert text.split() == ["0.5", "-1.25", "2"] + ["0"] * 27  # the model's K values
    assert [u["value"] for u in callbacks["on_import"]("demo", text)] == values
    exact = [0.7234612703323364, -1.2345678, 123.456789] + [0.0] * (sargs.MAX_COMPONENTS - 3)  # Extract's values: not cut to 6 digits
    assert [u["value"] for u in callbacks["on_import"]("demo", callbacks["on_export"]("demo", False, -1, *exact))] == exact
    assert callbacks["on_zero"]() == [False] + [0.0] * sargs.MAX_COMPONENTS


def test_accordion_buttons_show_their_error_message(callbacks, tmp_path, monkeypatch):
    """Found in review: A1111 launches gradio without show_error, so anything but a gr.Error
    showed a bare red "Error" (Extract with an empty box, Import of "abc", a deleted preset)."""
    import inspect
    with pytest.raises(gr.Error, match="components: 'abc' is not a finite number"):
        callbacks["on_import"]("demo", "abc")
    with pytest.raises(gr.Error, match="no reference images"):
        callbacks["on_extract"]("demo", None, "", "", progress=lambda *a, **k: None)
    # found in a real WebUI: an empty box zeroed every slider without a word, and Export of a
    # random style with seed -1 (each image its own) exported the unused sliders
    for empty in ("", "  ", "[]"):
        with pytest.raises(gr.Error, match="the vector box is empty"):
            callbacks["on_import"]("demo", empty)
    with pytest.raises(gr.Error, match="style seed -1 draws each image's own style"):
        callbacks["on_export"]("demo", True, -1, *([0.5] * sargs.MAX_COMPONENTS))
    module = callbacks["env"]["module"]

    def embed():
        raise ValueError("no images given")  # as extract.py says it
    with pytest.raises(gr.Error, match="no images given"):
        module.user_errors(embed)()
    monkeypatch.setattr(module, "presets_folder", lambda: str(tmp_path))
    with pytest.raises(gr.Error, match="preset 'gone' not found"):
        callbacks["on_preset"]("gone", "demo")
    # gradio still sees on_extract's progress parameter through the wrapper, and injects it
    from gradio.helpers import special_args
    assert special_args(callbacks["on_extract"], ["demo", [], "", ""])[1] == 4
    assert list(inspect.signature(callbacks["on_extract"]).parameters)[-1] == "progress"


def test_random_button_turns_on_a_fresh_shown_seed(callbacks):
    (on1, seed1), (on2, seed2) = callbacks["on_random"](), callbacks["on_random"]()
    assert on1 and on2 and 0 <= seed1 < 2**32 and seed1 != seed2
    exported = callbacks["on_export"]("demo", True, seed1, *([0.0] * sargs.MAX_COMPONENTS))
    from style_components.params import random_components
    assert [float(v) for v in exported.split()] == list(random_components(seed1, 30))


def test_sliders_at_page_load_match_the_default_model(tmp_path_factory):
    """Found in a real A1111 run: the default model (the first by name) had K=10, but the page
    showed 30 sliders labelled "Style component N" until the model was changed (gradio fires no
    change event for an initial value). K and labels now come from the space's header."""
    from factories import adapter_for
    from unets import ldm_unet
    models = tmp_path_factory.mktemp("models")
    folder = models / "StyleComponents"
    adapter_for(ldm_unet(device="meta"), d_in=64, hidden=None).save(folder / "a-small.adapter.safetensors")
    a1111_env.make_space(10, 64).save(folder / "a-small.space.safetensors")
    module = a1111_env.load_script(models)
    with gr.Blocks():
        controls = module.StyleComponentsScript().ui(False)
    sliders = controls[sargs.ALL_NAMES.index("c1"):]
    assert [s.visible for s in sliders] == [True] * 10 + [False] * (sargs.MAX_COMPONENTS - 10)
    assert sliders[0].label == "label 0" and sliders[9].label == "label 9"
    assert sliders[10].label == "Style component 11"
    assert module.registry.loaded is None  # read from the header: no model loaded to build the page


def test_extract_puts_the_style_on_the_sliders_and_empties_the_box(callbacks, monkeypatch, tmp_path):
    """Found in review: images left in the box decide every later generation, so after Extract
    the slider moves, Random and XYZ component axes had no effect. Extract now empties the box
    and notes the files for the infotext."""
    import torch
    from PIL import Image
    from style_components import files
    env = callbacks["env"]

    class FakeExtractor:  # the real one is tested in test_extract.py; here only the wiring matters
        def embed(self, images, weights):
            assert [im.size for im in images] == [(8, 8), (8, 8)] and weights == [1.0, 3.0]
            return env["space"].to_embedding(torch.tensor([0.5] * 30))

    module = env["module"]
    monkeypatch.setattr(module, "load_extractor", lambda path: FakeExtractor())
    folder = module.registry.find("demo").adapter.parent
    files.write(folder / "demo.extractor.safetensors", {"x": torch.zeros(1)}, {"format": "style-components-extractor"})
    module.registry.refresh()
    paths = []
    for name in ("warm.png", "cool.png"):
        Image.new("RGB", (8, 8), (200, 30, 30)).save(tmp_path / name)
        paths.append(str(tmp_path / name))
    try:
        message, box, note, *sliders = callbacks["on_extract"]("demo", paths, "1 3", "", progress=lambda *a, **k: None)
        _, _, kept, *_ = callbacks["on_extract"]("demo", paths, "1 3", "my note", progress=lambda *a, **k: None)
    finally:
        (folder / "demo.extractor.safetensors").unlink()
        module.registry.refresh()
    assert "2 image(s)" in message and box == gr.update(value=None)
    assert note == "warm.png + cool.png" and kept == "my note"  # the user's own note is kept
    assert [round(v, 4) for v in sliders[:30]] == [0.5] * 30 and sliders[30:] == [0.0] * (sargs.MAX_COMPONENTS - 30)


@pytest.fixture
def two_models(tmp_path):
    """The accordion's handlers over 'm' (16 components) and 'wide' (30)."""
    from factories import adapter_for
    from unets import ldm_unet
    folder, unet = tmp_path / "StyleComponents", ldm_unet(device="meta")
    for name, k in (("m", 16), ("wide", 30)):
        adapter_for(unet, d_in=64, hidden=None).save(folder / f"{name}.adapter.safetensors")
        a1111_env.make_space(k, 64).save(folder / f"{name}.space.safetensors")
    module = a1111_env.load_script(tmp_path)
    with gr.Blocks() as demo:
        module.StyleComponentsScript().ui(False)
    return {f.fn.__name__: f.fn for f in demo.fns if f.fn is not None} | {"module": module}


def test_import_fits_the_selected_model(two_models):
    """Found in review: Import filled all the sliders, also those hidden beyond the model's K, and
    every generation then failed ("30 component values given, model 'm' has 16")."""
    with pytest.raises(gr.Error, match="Import: 30 values, style model 'm' has 16 components"):
        two_models["on_import"]("m", " ".join(["1"] * 30))
    updates = two_models["on_import"]("m", "1 2")
    assert [u["value"] for u in updates] == [1.0, 2.0] + [0.0] * (sargs.MAX_COMPONENTS - 2)
    assert [u["visible"] for u in updates] == [True] * 16 + [False] * (sargs.MAX_COMPONENTS - 16)


def test_a_preset_switches_to_its_model_and_fits_it(two_models, tmp_path, monkeypatch):
    """Found in review: a preset filled all the sliders whatever model it was built for."""
    from style_components import presets
    folder = tmp_path / "presets"
    presets.save(folder, "wide style", [0.5] * 30, model="wide")
    presets.save(folder, "any model", [0.25] * 20)
    presets.save(folder, "lost", [0.5] * 4, model="gone")
    monkeypatch.setattr(two_models["module"], "presets_folder", lambda: str(folder))
    on_preset = two_models["on_preset"]
    random, model, *sliders = on_preset("wide style", "m")
    assert random is False and model == gr.update(value="wide")  # the dropdown follows the preset
    assert [s["value"] for s in sliders] == [0.5] * 30 + [0.0] * (sargs.MAX_COMPONENTS - 30)
    assert [s["visible"] for s in sliders] == [True] * 30 + [False] * (sargs.MAX_COMPONENTS - 30)
    _, model, *sliders = on_preset("any model", "wide")
    assert model == gr.update() and [s["value"] for s in sliders][:21] == [0.25] * 20 + [0.0]
    with pytest.raises(gr.Error, match="preset 'any model': 20 values, style model 'm' has 16 components"):
        on_preset("any model", "m")
    with pytest.raises(gr.Error, match="built for style model 'gone', which is not installed"):
        on_preset("lost", "m")


def test_a_space_of_100_components_gets_100_sliders(tmp_path):
    """Found in review: the original author's SDXL style space holds 100 components (their
    ComfyUI nodes and the Forge extension's 200 sliders), but the UI had 64 sliders: the page
    showed 30, Extract and Import kept 64 values silently, the API refused the model's own K and
    a pasted random style lost 36 values. A model wider than the UI is refused where it would be
    cut, never cut silently."""
    import torch
    from factories import adapter_for
    from unets import ldm_unet
    folder, unet = tmp_path / "StyleComponents", ldm_unet(device="meta")
    for name, k in (("xl100", 100), ("huge", sargs.MAX_COMPONENTS + 10)):
        adapter_for(unet, d_in=256, hidden=None).save(folder / f"{name}.adapter.safetensors")
        a1111_env.make_space(k, 256).save(folder / f"{name}.space.safetensors")
    module = a1111_env.load_script(tmp_path)
    with gr.Blocks() as demo:
        controls = module.StyleComponentsScript().ui(False)
    handlers = {f.fn.__name__: f.fn for f in demo.fns if f.fn is not None}
    assert module.registry.names() == ["huge", "xl100"]
    sliders = controls[sargs.ALL_NAMES.index("c1"):]
    assert sum(s.visible for s in sliders) == sargs.MAX_COMPONENTS  # 'huge' first: as many as there are
    values = [round(0.01 * i, 2) for i in range(100)]
    updates = handlers["on_import"]("xl100", " ".join(map(str, values)))
    assert [u["value"] for u in updates][:100] == values and [u["visible"] for u in updates].count(True) == 100
    parsed = sargs.parse([{"model": "xl100", "components": values}])  # the API takes the model's K
    assert parsed.params.components == tuple(values)
    controls_, problems = sargs.controls_from_infotext(f"model: xl100, components: {' '.join(map(str, values))}")
    assert problems == [] and [controls_[f"c{i + 1}"] for i in range(100)] == values

    class FakeExtractor:
        def embed(self, images, weights):
            return torch.zeros(256)
    module.load_extractor = lambda path: FakeExtractor()
    from PIL import Image
    from style_components import files
    Image.new("RGB", (8, 8)).save(tmp_path / "ref.png")
    files.write(folder / "huge.extractor.safetensors", {"x": torch.zeros(1)}, {"format": "style-components-extractor"})
    module.registry.refresh()
    with pytest.raises(gr.Error, match=f"has {sargs.MAX_COMPONENTS + 10} components, the UI has "
                                       f"{sargs.MAX_COMPONENTS} sliders: leave the images in the box"):
        handlers["on_extract"]("huge", [str(tmp_path / "ref.png")], "", "", progress=lambda *a, **k: None)
    with pytest.raises(gr.Error, match=f"Import: {sargs.MAX_COMPONENTS + 1} values, the UI has"):
        handlers["on_import"]("huge", " ".join(["1"] * (sargs.MAX_COMPONENTS + 1)))
    # XYZ: a component axis for every slider of the widest model (30 when none is wider)
    import xyz_grid
    labels = [a.label for a in module.xyz_axes(xyz_grid)]
    assert labels[-1] == f"Style component {sargs.MAX_COMPONENTS}" and len(labels) == 3 + sargs.MAX_COMPONENTS
    (folder / "huge.space.safetensors").unlink()
    (folder / "huge.adapter.safetensors").unlink()
    module.registry.refresh()
    assert [a.label for a in module.xyz_axes(xyz_grid)][-1] == "Style component 100"
