"""Mirrors modules/sd_samplers_common.py: InterruptedException, Sampler.launch_sampling, which
turns an interruption into an early return of the last latent, and apply_refiner, which
CFGDenoiser.forward calls first on every step."""
from modules import sd_models, shared
from modules.shared import opts, state


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


def apply_refiner(cfg_denoiser, sigma=None):
    """v1.10's, with the switch measured in sampling steps (its `refiner_switch_by_sample_steps`
    branch; the other reads the switch point off the sigma schedule, which this Euler stand-in
    does not keep): that changes the step of the switch, not what the switch does."""
    completed_ratio = cfg_denoiser.step / cfg_denoiser.total_steps
    p = cfg_denoiser.p
    if p.refiner_switch_at is not None and completed_ratio < p.refiner_switch_at:
        return False
    if p.refiner_checkpoint_info is None or shared.sd_model.sd_checkpoint_info == p.refiner_checkpoint_info:
        return False
    if getattr(p, "enable_hr", False):
        hires_pass = opts.data.get("hires_fix_refiner_pass", "second pass")
        if hires_pass == "first pass" and p.is_hr_pass or hires_pass == "second pass" and not p.is_hr_pass:
            return False
        if hires_pass != "second pass":
            p.extra_generation_params["Hires refiner"] = hires_pass
    p.extra_generation_params["Refiner"] = p.refiner_checkpoint_info.short_title
    p.extra_generation_params["Refiner switch at"] = p.refiner_switch_at
    sd_models.reload_model_weights(info=p.refiner_checkpoint_info)
    p.setup_conds()
    cfg_denoiser.update_inner_model()
    return True
