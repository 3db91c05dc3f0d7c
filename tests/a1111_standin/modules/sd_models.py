"""Mirrors modules/sd_models.py as processing and the refiner use it: reload_model_weights(info)
makes the checkpoint `info` shared.sd_model (info None: the selected checkpoint, as every batch
iteration of process_images_inner and the end of a refiner job do).

Checkpoints here are model objects the test made (what model_data.loaded_sd_models holds): a
switch gives another object, as A1111 does for a checkpoint of another architecture (the SDXL
refiner) or with "Maximum number of checkpoints loaded at the same time" above 1. (With the
default limit 1 and the same architecture, A1111 loads the weights into the same object.)"""
from modules import shared

loaded = {}        # checkpoint title -> model
selected = None    # title of opts.sd_model_checkpoint


def add(model):
    """A loaded checkpoint; returns its CheckpointInfo (e.g. for p.refiner_checkpoint_info)."""
    loaded[model.sd_checkpoint_info.title] = model
    return model.sd_checkpoint_info


def select(model) -> None:
    """The checkpoint chosen in the UI (the stand-in's processing calls this with its sd_model)."""
    global selected
    if model is not None:
        selected = add(model).title


def reload_model_weights(sd_model=None, info=None):
    title = info.title if info is not None else selected
    if title is not None:
        shared.sd_model = loaded[title]
    return shared.sd_model
