"""Mirrors modules/sd_samplers_common.py: SamplerData, setup_img2img_steps, InterruptedException,
apply_refiner (which CFGDenoiser.forward calls first on every step), and the Sampler base class:
launch_sampling turns an interruption into an early return of the last latent, callback_state
records the step, initialize(p) readies the CFG denoiser for p. Left out: noise samplers, eta and
the sigma churn options (the stand-in's one sampler, Euler, uses none of them)."""
from collections import namedtuple

from modules import sd_models, shared
from modules.shared import opts, state

SamplerDataTuple = namedtuple('SamplerData', ['name', 'constructor', 'aliases', 'options'])


class SamplerData(SamplerDataTuple):
    def total_steps(self, steps):
        if self.options.get("second_order", False):
            steps = steps * 2
        return steps


def setup_img2img_steps(p, steps=None):
    if opts.img2img_fix_steps or steps is not None:
        requested_steps = (steps or p.steps)
        steps = int(requested_steps / min(p.denoising_strength, 0.999)) if p.denoising_strength > 0 else 0
        t_enc = requested_steps - 1
    else:
        steps = p.steps
        t_enc = int(min(p.denoising_strength, 0.999) * steps)
    return steps, t_enc


class InterruptedException(BaseException):
    pass


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
        is_second_pass = p.is_hr_pass
        if opts.hires_fix_refiner_pass == "first pass" and is_second_pass:
            return False
        if opts.hires_fix_refiner_pass == "second pass" and not is_second_pass:
            return False
        if opts.hires_fix_refiner_pass != "second pass":
            p.extra_generation_params['Hires refiner'] = opts.hires_fix_refiner_pass
    p.extra_generation_params["Refiner"] = p.refiner_checkpoint_info.short_title
    p.extra_generation_params["Refiner switch at"] = p.refiner_switch_at
    with sd_models.SkipWritingToConfig():
        sd_models.reload_model_weights(info=p.refiner_checkpoint_info)
    p.setup_conds()
    cfg_denoiser.update_inner_model()
    return True


class Sampler:
    def __init__(self, funcname):
        self.funcname = funcname
        self.func = funcname
        self.extra_params = []
        self.stop_at = None
        self.eta = None
        self.config: SamplerData = None  # set by the function calling the constructor
        self.last_latent = None
        self.s_min_uncond = None
        self.p = None
        self.sampler_extra_args = None

    def callback_state(self, d):
        step = d['i']
        if self.stop_at is not None and step > self.stop_at:
            raise InterruptedException
        state.sampling_step = step

    def launch_sampling(self, steps, func):
        self.model_wrap_cfg.steps = steps
        self.model_wrap_cfg.total_steps = self.config.total_steps(steps)
        state.sampling_steps = steps
        state.sampling_step = 0
        try:
            return func()
        except InterruptedException:
            return self.last_latent

    def initialize(self, p) -> dict:
        self.p = p
        self.model_wrap_cfg.p = p
        self.model_wrap_cfg.mask = p.mask if hasattr(p, 'mask') else None
        self.model_wrap_cfg.nmask = p.nmask if hasattr(p, 'nmask') else None
        self.model_wrap_cfg.step = 0
        self.model_wrap_cfg.image_cfg_scale = getattr(p, 'image_cfg_scale', None)
        self.s_min_uncond = getattr(p, 's_min_uncond', 0.0)
        return {}

    def sample(self, p, x, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        raise NotImplementedError()

    def sample_img2img(self, p, x, noise, conditioning, unconditional_conditioning, steps=None,
                       image_conditioning=None):
        raise NotImplementedError()
