"""Mirrors modules/sd_samplers_common.py: InterruptedException and Sampler.launch_sampling,
which turns an interruption into an early return of the last latent."""
from modules.shared import state


class InterruptedException(BaseException):
    pass


def launch_sampling(sampler, steps, func):
    sampler.model_wrap_cfg.steps = steps
    sampler.model_wrap_cfg.total_steps = steps  # Euler: one denoiser call per step
    state.sampling_steps, state.sampling_step = steps, 0
    try:
        return func()
    except InterruptedException:
        return sampler.last_latent
