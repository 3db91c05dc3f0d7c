"""Style Components for AUTOMATIC1111 WebUI v1.10: UI and wiring only.

Every decision is made in the core package (style_components.webui, .session, .rows,
.script_args, .models), which is tested without the WebUI. gradio is imported inside ui()
only, and nothing heavy is loaded until a generation or a UI action needs a model.
"""

import functools
import importlib.util
import os
import re
import sys
import threading

EXT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if EXT_DIR not in sys.path:
    sys.path.insert(0, EXT_DIR)

from modules import script_callbacks, scripts, shared  # noqa: E402

from style_components import models, script_args as sargs, webui  # noqa: E402
from style_components.params import BLOCK_PRESETS, format_number, random_components  # noqa: E402

TITLE = "Style Components"
SECTION = ("style_components", TITLE)
XYZ_COMPONENTS = 30


def on_forge() -> bool:
    """Forge keeps its UNet elsewhere (forge_objects) and patches attention its own way."""
    try:
        return importlib.util.find_spec("modules_forge") is not None
    except ValueError:  # in sys.modules without a spec
        return True


FORGE = on_forge()
if FORGE:
    print(f"{TITLE}: this extension is for AUTOMATIC1111 WebUI and stays off on Forge; "
          "on Forge use the original author's sd-webui-forge-style-components.")


def _opt(name, default):
    return getattr(shared.opts, name, default) if hasattr(shared, "opts") else default


def model_folders():
    custom = _opt("style_components_model_dir", "")
    base = custom or os.path.join(getattr(shared, "models_path", os.path.join(EXT_DIR, "..", "..", "models")),
                                  "StyleComponents")
    return [base, os.path.join(EXT_DIR, "models")]


registry = models.Registry(model_folders())
_extractors = {}


def load_extractor(path):
    """Extractor on the device/precision chosen in settings, cached per file. 'auto' is the
    WebUI's device; while the checkpoint runs in low-VRAM mode (--lowvram, --medvram, SDXL under
    --medvram-sdxl) the extractor waits on the CPU and visits that device for each extraction,
    as A1111 does with its own models."""
    import torch
    from style_components.extract import Extractor
    device, visit = _opt("style_components_extractor_device", "auto"), None
    if device == "auto":
        from modules import devices
        device = devices.device or ("cuda" if torch.cuda.is_available() else "cpu")  # the WebUI's own
        if getattr(shared.sd_model, "lowvram", False) and torch.device(device).type != "cpu":
            device, visit = "cpu", device
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(_opt("style_components_extractor_precision", "fp32"),
                                                                torch.float32)
    key = (str(path), device, dtype)
    if key not in _extractors:
        _extractors.clear()
        _extractors[key] = Extractor.load(path, device=device, dtype=dtype)
    return _extractors[key] if visit is None else Visiting(_extractors[key], visit)


class Visiting:
    """An extractor that runs on `device` and goes back to the CPU after each extraction."""
    _lock = threading.Lock()  # the UI and the API may extract at once: one visit at a time

    def __init__(self, extractor, device):
        self.extractor, self.device = extractor, device

    def embed(self, images, weights=None):
        with self._lock:
            try:
                return self.extractor.to(self.device).embed(images, weights)
            finally:
                self.extractor.to("cpu")


def release_models():
    registry.unload()
    _extractors.clear()


class StyleComponentsScript(scripts.Script):
    def title(self):
        return TITLE

    def show(self, is_img2img):
        return False if FORGE else scripts.AlwaysVisible

    # -- generation ---------------------------------------------------------------------
    def process(self, p, *args):
        folders = model_folders()
        if [str(f) for f in registry.folders] != [str(models.Path(f)) for f in folders]:
            registry.set_folders(folders)  # the setting changed
        gen = webui.begin_job(p, args, registry, load_extractor=load_extractor)
        if gen is None and not _opt("style_components_keep_loaded", True):
            release_models()

    def process_before_every_sampling(self, p, *args, **kwargs):
        webui.begin_pass(p, kwargs.get("x"))

    def postprocess_batch(self, p, *args, **kwargs):
        gen = getattr(p, webui.ATTR, None)
        if gen is not None:
            gen.end_pass()

    def postprocess(self, p, processed, *args):
        webui.end_job(p)

    # -- UI -----------------------------------------------------------------------------
    def ui(self, is_img2img):
        import gradio as gr
        from modules.ui_components import InputAccordion, ToolButton

        names = registry.names()
        k0, labels0 = slider_layout(names[0] if names else "")
        tab = "img2img" if is_img2img else "txt2img"
        eid = lambda s: f"style_components_{tab}_{s}"
        with InputAccordion(False, label=TITLE, elem_id=eid("enabled")) as enabled:
            paste_msg = gr.Markdown("", elem_id=eid("paste_message"))
            with gr.Row():
                model = gr.Dropdown(label="Style model", choices=names, value=names[0] if names else "",
                                    elem_id=eid("model"))
                refresh = ToolButton(value="\U0001f504", elem_id=eid("refresh"))
            with gr.Row():
                multiplier = gr.Slider(-3.0, 3.0, value=1.0, step=0.01, label="Multiplier", elem_id=eid("multiplier"))
                strength = gr.Slider(-3.0, 3.0, value=1.0, step=0.01, label="Strength", elem_id=eid("strength"))
            with gr.Row():
                random = gr.Checkbox(False, label="Random style from seed", elem_id=eid("random"))
                seed = gr.Number(-1, precision=0, label="Style seed (-1: each image's seed)", elem_id=eid("seed"))
                random_btn = gr.Button("Random", elem_id=eid("random_btn"))
                zero_btn = gr.Button("Zero", elem_id=eid("zero"))
            with gr.Row():
                vector = gr.Textbox(label="Vector (import/export)", elem_id=eid("vector"))
                import_btn = gr.Button("Import", elem_id=eid("import"))
                export_btn = gr.Button("Export", elem_id=eid("export"))
                copy_btn = gr.Button("Copy", elem_id=eid("copy"))
            with gr.Row():
                preset = gr.Dropdown(label="Preset (sets the sliders)", choices=preset_names(), value=None,
                                     elem_id=eid("preset"))
                preset_refresh = ToolButton(value="\U0001f504", elem_id=eid("preset_refresh"))
            with gr.Accordion("Reference images", open=False):
                ref_images = gr.File(file_count="multiple", file_types=["image"], label="Reference images",
                                     elem_id=eid("ref_images"))
                ref_weights = gr.Textbox(label="Weights (one per image, blank = equal)", elem_id=eid("ref_weights"))
                refs = gr.Textbox(label="Reference note (written to the infotext)", elem_id=eid("refs"))
                extract_btn = gr.Button("Extract", elem_id=eid("extract"))
                extract_msg = gr.Markdown("")
            sliders = []
            with gr.Column(elem_id=eid("sliders")):
                for i in range(sargs.MAX_COMPONENTS):
                    label = labels0[i] if i < len(labels0) and labels0[i] else f"Style component {i + 1}"
                    sliders.append(gr.Slider(-10.0, 10.0, value=0.0, step=0.01, label=label,
                                             visible=i < k0, elem_id=eid(f"c{i + 1}")))
            with gr.Accordion("Advanced", open=False):
                blocks = gr.Dropdown(label="Blocks", choices=list(BLOCK_PRESETS), value="all", elem_id=eid("blocks"))
                block_weights = gr.Textbox(label="Custom layer weights (16 for SD1, 70 for SDXL)",
                                           elem_id=eid("block_weights"))
                with gr.Row():
                    start = gr.Slider(0.0, 1.0, value=0.0, step=0.01, label="Start", elem_id=eid("start"))
                    end = gr.Slider(0.0, 1.0, value=1.0, step=0.01, label="End", elem_id=eid("end"))

        def k_of(name):
            try:
                loaded = registry.load(name)
                return loaded.k, loaded.space
            except Exception:
                return XYZ_COMPONENTS, None

        def slider_updates(name, values=None, source=""):
            """The K sliders of model `name` shown with its labels (and `values`); hidden ones go
            to 0: a value left there would make every generation fail ("N component values
            given, model has K") while the user cannot see it."""
            k, space = k_of(name)
            if values is not None and len(values) > sargs.MAX_COMPONENTS:
                raise webui.StyleComponentsError(f"{source}: {len(values)} values, the UI has {sargs.MAX_COMPONENTS} "
                                                 f"sliders; the sliders are unchanged")
            if values is not None and len(values) > k:
                raise webui.StyleComponentsError(f"{source}: {len(values)} values, style model {name!r} "
                                                 f"has {k} components; the sliders are unchanged")
            return [gr.update(visible=i < k, label=space.label(i) if space is not None else f"Style component {i + 1}",
                              **({"value": 0.0} if i >= k else {} if values is None else
                                 {"value": values[i] if i < len(values) else 0.0}))
                    for i in range(sargs.MAX_COMPONENTS)]

        def on_model(name):
            return slider_updates(name)

        def on_refresh():
            new = registry.refresh()
            return gr.update(choices=new)

        def on_random():
            import random as _r
            return True, _r.randrange(0, 2**32)

        def on_zero():
            return [False] + [0.0] * sargs.MAX_COMPONENTS

        @user_errors
        def on_import(name, text):
            # also the original extension's form, pasted from its infotext: "[0.12, -1.5, ...]"
            text = (text or "").strip().strip('"[]')
            if not text.strip():
                raise webui.StyleComponentsError("Import: the vector box is empty (Zero sets every slider to 0)")
            return slider_updates(name, sargs.numbers("components", text), "Import")

        @user_errors
        def on_export(name, is_random, seed_value, *values):
            k, _ = k_of(name)
            if is_random and (seed_value is None or seed_value < 0):
                raise webui.StyleComponentsError("Export: style seed -1 draws each image's own style, there is no "
                                                 "one style to export: set a style seed (0 or more)")
            if is_random:
                values = random_components(int(seed_value), k)
            return " ".join(format_number(v) for v in list(values)[:k])  # exact: Import gives the same values

        @user_errors
        def on_extract(name, files, weights, note, progress=gr.Progress()):
            if not files:
                raise webui.StyleComponentsError("no reference images: put images in the box, then Extract")
            progress(0.1, desc="Loading extractor")
            loaded = registry.load(name)
            args = [{"enabled": True, "model": name, "ref_images": list(files or []), "ref_weights": weights or ""}]
            parsed = sargs.parse(args)
            progress(0.4, desc="Extracting style")
            params = webui._from_references(parsed.params, loaded, parsed, load_extractor)
            values = list(params.components)
            if len(values) > sargs.MAX_COMPONENTS:
                raise webui.StyleComponentsError(
                    f"style model {name!r} has {len(values)} components, the UI has {sargs.MAX_COMPONENTS} sliders: "
                    f"leave the images in the box instead (they decide each generation's style)")
            # the box is emptied: images left in it would decide the style and the sliders go unread
            return [f"Extracted from {len(parsed.ref_images)} image(s): the sliders hold their style.",
                    gr.update(value=None), note or webui.reference_note(files)] + [
                values[i] if i < len(values) else 0.0 for i in range(sargs.MAX_COMPONENTS)]

        @user_errors
        def on_preset(name, model_name):
            from style_components import presets
            if not name:
                return [gr.update()] * (sargs.MAX_COMPONENTS + 2)
            found = presets.find(presets_folder(), name)
            target = model_name
            if found.model and found.model != model_name:
                # built for another model: its values mean nothing on this one's components
                if registry.find(found.model) is None:
                    raise webui.StyleComponentsError(f"preset {name!r} was built for style model "
                                                     f"{found.model!r}, which is not installed")
                target = found.model
            updates = slider_updates(target, found.components, f"preset {name!r}")
            return [False, gr.update() if target == model_name else gr.update(value=target)] + updates

        preset.change(on_preset, inputs=[preset, model], outputs=[random, model] + sliders)
        preset_refresh.click(lambda: gr.update(choices=preset_names()), outputs=[preset])
        model.change(on_model, inputs=[model], outputs=sliders)
        refresh.click(on_refresh, outputs=[model])
        random_btn.click(on_random, outputs=[random, seed])
        zero_btn.click(on_zero, outputs=[random] + sliders)
        import_btn.click(on_import, inputs=[model, vector], outputs=sliders)
        export_btn.click(on_export, inputs=[model, random, seed] + sliders, outputs=[vector])
        copy_btn.click(None, inputs=[vector], _js="styleComponentsCopy")
        extract_btn.click(on_extract, inputs=[model, ref_images, ref_weights, refs],
                          outputs=[extract_msg, ref_images, refs] + sliders)

        controls = [enabled, model, multiplier, strength, random, seed, blocks, block_weights, start, end,
                    ref_images, ref_weights, refs] + sliders
        assert len(controls) == sargs.N_ARGS
        self.infotext_fields = [(c, read) for c, (name, read) in zip(controls, INFOTEXT_READERS)
                                if name != "ref_images"]
        # "Send to img2img/inpaint" copies the fields whose *name* is listed here; our names are
        # the readers, shared by both tabs' script instances, so they match across tabs
        self.paste_field_names = [read for _, read in self.infotext_fields]
        self.infotext_fields.append((paste_msg, paste_message))  # each paste's own verdict: not sent on
        return controls


def user_errors(fn):
    """A1111 launches gradio without show_error: only a gr.Error's message reaches the user,
    anything else shows a bare "Error". functools.wraps keeps the name and the signature gradio
    reads (it injects `progress=gr.Progress()` by the default it sees there)."""
    @functools.wraps(fn)
    def handler(*args, **kwargs):
        import gradio as gr
        try:
            return fn(*args, **kwargs)
        except (webui.StyleComponentsError, ValueError) as e:  # ValueError: e.g. no images given
            raise gr.Error(str(e)) from e
    return handler


def slider_layout(name):
    """(K, labels) of model `name` from its style space's header, so that the sliders shown
    before any model change match the model selected by default (gradio fires no change event
    for an initial value); (XYZ_COMPONENTS, ()) when that does not say."""
    layout = _space_layout(registry.find(name) if name else None)
    if layout is None:
        return XYZ_COMPONENTS, ()
    return min(layout[0], sargs.MAX_COMPONENTS), layout[1]


def presets_folder():
    return os.path.join(model_folders()[0], "presets")


def preset_names():
    from style_components import presets
    return [p.name for p in presets.list_presets(presets_folder())]


def on_ui_tabs():
    """Extension tab: build/rename/delete presets from image sets; convert the original author's files."""
    import gradio as gr
    from style_components import presets

    def build(model_name, folder, uploads, weights, name, overwrite, progress=gr.Progress()):
        try:
            loaded = registry.load(model_name)
            if loaded.space is None or loaded.info.extractor is None:
                raise webui.StyleComponentsError(f"model {model_name!r} has no extractor and style space")
            images = [webui.decode_image(f) for f in (uploads or [])]
            if folder:
                images += list(presets.images_in(folder))
            parsed = sargs.parse([{"ref_weights": weights or ""}])
            progress(0.2, desc=f"Embedding {len(images)} images")
            comps = presets.build(load_extractor(loaded.info.extractor), loaded.space, images,
                                  parsed.ref_weights or None)
            saved = presets.save(presets_folder(), name, comps, model=model_name,
                                 source=f"{len(images)} images" + (f" from {folder}" if folder else ""),
                                 overwrite=overwrite)
            return f"Saved preset **{saved.name}** ({len(comps)} components).", gr.update(choices=preset_names())
        except (webui.StyleComponentsError, OSError) as e:  # OSError: the folder (permissions, a full disk)
            return f"Error: {e}", gr.update()

    def rename(old, new):
        try:
            presets.rename(presets_folder(), old, new)
            return f"Renamed {old!r} to {new!r}.", gr.update(choices=preset_names(), value=new)
        except (webui.StyleComponentsError, OSError) as e:
            return f"Error: {e}", gr.update()

    def delete(name):
        try:
            presets.delete(presets_folder(), name)
            return f"Deleted {name!r}.", gr.update(choices=preset_names(), value=None)
        except (webui.StyleComponentsError, OSError) as e:
            return f"Error: {e}", gr.update()

    def convert(kind, src, name, preprocess):
        from style_components import convert as conv
        try:
            name = presets.check_name(name, "model")
            if not (src or "").strip():
                raise webui.StyleComponentsError("no file given: put the original file's path on the server in the box")
            folder = model_folders()[0]
            if kind == "Style space (PCA pickle)":
                dst = os.path.join(folder, f"{name}.space.safetensors")
                conv.convert_space(src, dst, name=name)
            else:
                dst = os.path.join(folder, f"{name}.extractor.safetensors")
                conv.convert_extractor(src, dst, preprocess=preprocess, name=name)
            registry.refresh()
            return f"Converted to {dst}."
        except (webui.StyleComponentsError, OSError) as e:
            return f"Error: {e}"

    with gr.Blocks(analytics_enabled=False) as tab:
        with gr.Tab("Presets"):
            with gr.Row():
                model = gr.Dropdown(label="Style model", choices=registry.names())
                name = gr.Textbox(label="Preset name")
            folder = gr.Textbox(label="Image folder (on the server)")
            uploads = gr.File(file_count="multiple", file_types=["image"], label="...and/or images")
            weights = gr.Textbox(label="Weights for the uploaded images, then the folder's (blank: equal)")
            overwrite = gr.Checkbox(False, label="Overwrite a preset of the same name")
            build_btn = gr.Button("Build preset", variant="primary")
            status = gr.Markdown()
            with gr.Row():
                existing = gr.Dropdown(label="Presets", choices=preset_names())
                new_name = gr.Textbox(label="New name")
                rename_btn = gr.Button("Rename")
                delete_btn = gr.Button("Delete")
            build_btn.click(build, inputs=[model, folder, uploads, weights, name, overwrite],
                            outputs=[status, existing])
            rename_btn.click(rename, inputs=[existing, new_name], outputs=[status, existing])
            delete_btn.click(delete, inputs=[existing], outputs=[status, existing])
        with gr.Tab("Convert original files"):
            gr.Markdown("Converts the original author's pickled files safely (restricted unpickler) into "
                        "safetensors in the model folder.")
            kind = gr.Radio(["Style space (PCA pickle)", "Extractor (pickled timm model)"],
                            value="Style space (PCA pickle)", label="File")
            src = gr.Textbox(label="Path of the original file (on the server)")
            out_name = gr.Textbox(label="Model name (the adapter's name, so the files group)")
            preprocess = gr.Radio(["v0.3", "v0.2"], value="v0.3", label="Extractor preprocessing")
            convert_btn = gr.Button("Convert", variant="primary")
            convert_status = gr.Markdown()
            convert_btn.click(convert, inputs=[kind, src, out_name, preprocess], outputs=[convert_status])
    return [(tab, TITLE, "style_components")]


def infotext_fields():
    """(argument name, function(infotext params) -> control value or None) for every argument."""
    def field(name):
        def read(d):
            text = _style_text(d)
            if not text:
                return False if name == "enabled" else None
            return _controls(text)[0].get(name)
        return read
    return [(name, field(name)) for name in sargs.ALL_NAMES]


def paste_message(d):
    """The accordion's line about a pasted infotext: its problems, or "" (clears the last paste's)."""
    text = _style_text(d)
    problems = _controls(text)[1] if text else []
    # an infotext is anyone's text: its names must not become markup (an <img> would load)
    text = re.sub(r"([\\`*_\[\]<>&])", r"\\\1", "; ".join(problems))
    return f"**Pasted infotext:** {text}" if problems else ""


def _style_text(d):
    return d.get(sargs.INFOTEXT_KEY) or sargs.from_original_extension(d)


def _controls(text):
    registry.names()  # scanned before its scan count keys the cache
    return _controls_on(text, registry.scans)


@functools.lru_cache(maxsize=1)  # every control's reader reads the same text: parse and report once
def _controls_on(text, _scans):   # ... per scan of the model folders: a 🔄 may have brought the model
    values, problems = sargs.controls_from_infotext(text, registry.find)
    for problem in problems:
        print(f"Style Components: infotext: {problem}")
    return values, problems


INFOTEXT_READERS = infotext_fields()


# -- callbacks ------------------------------------------------------------------------------

def on_cfg_denoiser(params):
    webui.on_cfg_denoiser(params, shared.opts)


def on_ui_settings():
    import gradio as gr
    section = SECTION
    shared.opts.add_option("style_components_model_dir", shared.OptionInfo(
        "", "Style Components model folder (blank: models/StyleComponents)", section=section))
    shared.opts.add_option("style_components_extractor_device", shared.OptionInfo(
        "auto", "Style extractor device (auto: the WebUI's)", gr.Radio, {"choices": ["auto", "cpu", "cuda"]},
        section=section))
    shared.opts.add_option("style_components_extractor_precision", shared.OptionInfo(
        "fp32", "Style extractor precision", gr.Radio, {"choices": ["fp32", "fp16", "bf16"]}, section=section))
    shared.opts.add_option("style_components_keep_loaded", shared.OptionInfo(
        True, "Keep style models loaded when the extension is disabled", section=section))


def xyz_axes(xyz_grid):
    """AxisOptions for A1111's scripts/xyz_grid.py; each sets p.style_components_xyz."""
    def setter(key, cast):
        def apply(p, x, xs):
            overrides = dict(getattr(p, webui.XYZ_ATTR, None) or {})
            overrides[key] = cast(x)
            setattr(p, webui.XYZ_ATTR, overrides)
        return apply

    axes = [xyz_grid.AxisOption("Style strength", float, setter("strength", float)),
            xyz_grid.AxisOption("Style multiplier", float, setter("multiplier", float)),
            xyz_grid.AxisOption("Style model", str, setter("model", str), choices=lambda: registry.names())]
    axes += [xyz_grid.AxisOption(f"Style component {i}", float, setter(f"component {i}", float))
             for i in range(1, component_axes() + 1)]
    return axes


def component_axes():
    """30 component axes, or as many as the widest installed model has sliders (the original
    SDXL space: 100), read from the spaces' headers."""
    widths = [layout[0] for name in registry.names() if (layout := _space_layout(registry.find(name))) is not None]
    return min(max([XYZ_COMPONENTS, *widths]), sargs.MAX_COMPONENTS)


def _space_layout(info):
    """(K, labels) from the header of a model's style space; None without one."""
    return models.space_layout(info.space) if info is not None and info.space is not None else None


def add_xyz_axes():
    """Called when this file loads and again before the UI is built: with --nowebui, A1111 builds
    the scripts' UI (where xyz_grid fixes its axis list) in Api.__init__, before the before-UI
    callbacks; in a UI launch xyz_grid may also load after this file. Adds each axis once."""
    found = [x for x in scripts.scripts_data if x.script_class.__module__ == "xyz_grid.py"]
    if found:
        xyz_grid = found[0].module
        known = {a.label for a in xyz_grid.axis_options}
        xyz_grid.axis_options.extend(a for a in xyz_axes(xyz_grid) if a.label not in known)


def on_script_unloaded():
    model = getattr(shared, "sd_model", None)
    if model is not None:
        webui.cleanup_unet(type("P", (), {"sd_model": model})())
    release_models()


if not FORGE:
    script_callbacks.on_cfg_denoiser(on_cfg_denoiser)
    script_callbacks.on_ui_settings(on_ui_settings)
    script_callbacks.on_before_ui(add_xyz_axes)
    script_callbacks.on_script_unloaded(on_script_unloaded)
    script_callbacks.on_ui_tabs(on_ui_tabs)
    script_callbacks.on_infotext_pasted(sargs.original_list_in)
    add_xyz_axes()
