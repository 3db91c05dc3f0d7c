"""Mirrors modules/shared.py: opts (an options.Options over shared_options.py's templates; here the
few settings the stand-in reads), state (a shared_state.State), cmd_opts, OptionInfo, sd_model."""
from types import SimpleNamespace

from modules import options, paths, shared_state

OptionInfo = options.OptionInfo

# Mirrors modules/shared_options.py options_templates: the settings the stand-in reads, A1111's defaults
options_templates = {
    "batch_cond_uncond": OptionInfo(True, "Batch cond/uncond"),
    "skip_early_cond": OptionInfo(0.0, "Ignore negative prompt during early sampling"),
    "s_min_uncond_all": OptionInfo(False, "Negative Guidance minimum sigma all steps"),
    "pad_cond_uncond": OptionInfo(False, "Pad prompt/negative prompt"),
    "pad_cond_uncond_v0": OptionInfo(False, "Pad prompt/negative prompt (v0)"),
    "hires_fix_refiner_pass": OptionInfo("second pass", "Hires fix: which pass to enable refiner for"),
    "infotext_skip_pasting": OptionInfo([], "Disregard fields from pasted infotext"),
    "CLIP_stop_at_last_layers": OptionInfo(1, "Clip skip"),
    "grid_only_if_multiple": OptionInfo(True, "Do not save grids consisting of one picture"),
    "img2img_fix_steps": OptionInfo(False, "With img2img, do exactly the amount of steps the slider specifies."),
    # A1111's default is True; tests of the grid turn it on (the images then shift by one)
    "return_grid": OptionInfo(False, "Show grid in gallery"),
}
restricted_opts: set[str] = set()

opts = options.Options(options_templates, restricted_opts)
state = shared_state.State()
cmd_opts = SimpleNamespace(nowebui=False, no_half=True, lowvram=False, medvram=False, no_prompt_history=False)
models_path = paths.models_path
sd_model = None  # set by processing.StableDiffusionProcessing when a test gives it a model
