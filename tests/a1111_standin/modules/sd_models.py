"""Mirrors modules/sd_models.py as processing and the refiner use it: reload_model_weights(info)
makes the checkpoint `info` shared.sd_model (info None: the selected checkpoint, as every batch
iteration of process_images_inner and the end of a refiner job do), and SkipWritingToConfig.

Checkpoints here are model objects the test made (what model_data.loaded_sd_models holds): a
switch gives another object, as A1111 does for a checkpoint of another architecture (the SDXL
refiner) or with "Maximum number of checkpoints loaded at the same time" above 1. (With the
default limit 1 and the same architecture, A1111 loads the weights into the same object.)
forced_reload: A1111 loads the weights again, into the same object; the stand-in's weights are
the test's, so the object is kept as it is."""
from modules import shared

loaded = {}        # checkpoint title -> model
selected = None    # title of opts.sd_model_checkpoint


def add(model):
    """No A1111 counterpart: registers a checkpoint the test made as loaded; returns its
    CheckpointInfo (e.g. for p.refiner_checkpoint_info)."""
    loaded[model.sd_checkpoint_info.title] = model
    return model.sd_checkpoint_info


def select(model) -> None:
    """No A1111 counterpart: the checkpoint chosen in the UI (opts.sd_model_checkpoint); the
    stand-in's processing calls this with the sd_model it is given."""
    global selected
    if model is not None:
        selected = add(model).title


class SkipWritingToConfig:
    """Mirrors SkipWritingToConfig: a context manager A1111 wraps around loading a hires or
    refiner checkpoint, so that it is not saved as the selected one."""

    skip = False
    previous = None

    def __enter__(self):
        self.previous = SkipWritingToConfig.skip
        SkipWritingToConfig.skip = True
        return self

    def __exit__(self, exc_type, exc_value, exc_traceback):
        SkipWritingToConfig.skip = self.previous


def reload_model_weights(sd_model=None, info=None, forced_reload=False):
    title = info.title if info is not None else selected
    if title is not None:
        shared.sd_model = loaded[title]
    return shared.sd_model
