"""Mirrors modules/shared.py (opts, state, cmd_opts, sd_model) and shared_state.State."""
from types import SimpleNamespace

from modules import paths


class Options:
    """Mirrors modules/options.Options: attribute access to settings, with defaults from templates."""

    def __init__(self):
        self.__dict__["data"] = dict(
            batch_cond_uncond=True, skip_early_cond=0.0, s_min_uncond_all=False, pad_cond_uncond=False,
            pad_cond_uncond_v0=False,
            return_grid=False,  # A1111's default is True; tests of the grid turn it on (images shift by one)
        )
        self.__dict__["data_labels"] = {}

    def __getattr__(self, item):
        if item in self.data:
            return self.data[item]
        if item in self.data_labels:
            return self.data_labels[item].default
        raise AttributeError(item)

    def __setattr__(self, key, value):
        self.data[key] = value

    def add_option(self, key, info):
        self.data_labels[key] = info

    def get_default(self, key):
        return self.data_labels[key].default if key in self.data_labels else None


class OptionInfo:
    """Mirrors modules/options.OptionInfo (the fields an extension sets)."""

    def __init__(self, default=None, label="", component=None, component_args=None, onchange=None, section=None,
                 refresh=None, **kwargs):
        self.default, self.label, self.component, self.component_args = default, label, component, component_args
        self.onchange, self.section, self.refresh = onchange, section, refresh

    def info(self, text):
        self.comment_after = text
        return self

    def needs_reload_ui(self):
        return self


class State:
    """Mirrors modules/shared_state.State: flags a sampler polls between steps."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.interrupted = self.skipped = self.stopping_generation = False
        self.sampling_step, self.sampling_steps, self.job_count = 0, 0, 0

    def interrupt(self):
        self.interrupted = True


opts = Options()
state = State()
cmd_opts = SimpleNamespace(nowebui=False, no_half=True, lowvram=False, medvram=False)
models_path = paths.models_path
sd_model = None  # set by processing.StableDiffusionProcessing when a test gives it a model
