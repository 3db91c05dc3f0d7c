"""Mirrors modules/sd_samplers.py: the samplers list and create_sampler(name, model), which finds
the sampler's SamplerData by name and builds it. The samplers themselves live in
sd_samplers_kdiffusion.py, as in A1111 (the stand-in has one, Euler; no timesteps / LCM samplers)."""
from modules import sd_samplers_common, sd_samplers_kdiffusion  # noqa: F401

all_samplers = [
    *sd_samplers_kdiffusion.samplers_data_k_diffusion,
]
all_samplers_map = {x.name: x for x in all_samplers}


def find_sampler_config(name):
    if name is not None:
        config = all_samplers_map.get(name, None)
    else:
        config = all_samplers[0]
    return config


def create_sampler(name, model):
    config = find_sampler_config(name)
    assert config is not None, f'bad sampler name: {name}'
    if model.is_sdxl and config.options.get("no_sdxl", False):
        raise Exception(f"Sampler {config.name} is not supported for SDXL")
    sampler = config.constructor(model)
    sampler.config = config
    return sampler
