"""Mirrors modules/script_callbacks.py: callback registries, CFGDenoiserParams, and the
`*_callback` runners, which (like A1111's) report a failing callback and go on."""
from collections import defaultdict

from modules import errors

callbacks = defaultdict(list)  # name -> [callable]


class CFGDenoiserParams:
    """Mirrors script_callbacks.CFGDenoiserParams (fields A1111 v1.10 passes)."""

    def __init__(self, x, image_cond, sigma, sampling_step, total_sampling_steps, text_cond, text_uncond,
                 denoiser=None):
        self.x, self.image_cond, self.sigma = x, image_cond, sigma
        self.sampling_step, self.total_sampling_steps = sampling_step, total_sampling_steps
        self.text_cond, self.text_uncond, self.denoiser = text_cond, text_uncond, denoiser


def _run(name, *args):
    """No A1111 counterpart: the loop every `*_callback` runner of A1111's repeats."""
    for c in list(callbacks[name]):
        try:
            c(*args)
        except Exception:
            errors.report(f"Error executing callback {name} for {c}", exc_info=True)


def cfg_denoiser_callback(params):
    _run("cfg_denoiser", params)


def ui_settings_callback():
    _run("ui_settings")


def before_ui_callback():
    _run("before_ui")


def script_unloaded_callback():
    _run("script_unloaded")


def infotext_pasted_callback(infotext, params):
    _run("infotext_pasted", infotext, params)


def _adder(kind):
    """No A1111 counterpart: makes the on_* registration functions, whose signature is A1111's
    (callback, *, name=None); `name` (what A1111 lists the callback as) is not kept."""
    def add(callback, *, name=None):
        callbacks[kind].append(callback)
    add.__name__ = f"on_{kind}"
    return add


on_cfg_denoiser = _adder("cfg_denoiser")
on_cfg_denoised = _adder("cfg_denoised")
on_cfg_after_cfg = _adder("cfg_after_cfg")
on_ui_settings = _adder("ui_settings")
on_before_ui = _adder("before_ui")
on_ui_tabs = _adder("ui_tabs")
on_script_unloaded = _adder("script_unloaded")
on_infotext_pasted = _adder("infotext_pasted")
on_model_loaded = _adder("model_loaded")
on_app_started = _adder("app_started")


def remove_current_script_callbacks():
    """Mirrors remove_current_script_callbacks (A1111 drops the reloading script's callbacks)."""
    callbacks.clear()


def remove_callbacks_for_function(callback_func):
    for lst in callbacks.values():
        while callback_func in lst:
            lst.remove(callback_func)
