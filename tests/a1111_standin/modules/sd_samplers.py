"""Mirrors modules/sd_samplers.py create_sampler and sd_samplers_kdiffusion.KDiffusionSampler
(sample / sample_img2img / callback_state), with k-diffusion's Euler method and CompVisDenoiser's
scaling: the UNet sees x * c_in and a timestep, and predicts eps."""
import torch

from modules import sd_samplers_common, shared
from modules.sd_samplers_cfg_denoiser import CFGDenoiser
from modules.shared import state

SIGMA_MAX, SIGMA_MIN = 14.6, 0.03


def get_sigmas(steps):
    sigmas = torch.exp(torch.linspace(torch.log(torch.tensor(SIGMA_MAX)), torch.log(torch.tensor(SIGMA_MIN)), steps))
    return torch.cat([sigmas, torch.zeros(1)])


def sigma_to_t(sigma):
    # a monotone stand-in for CompVisDenoiser.sigma_to_t over 1000 DDPM timesteps
    return (torch.log(sigma) - torch.log(torch.tensor(SIGMA_MIN))) / (torch.log(torch.tensor(SIGMA_MAX / SIGMA_MIN))) * 999


class KDiffusionSampler:
    def __init__(self, name, sd_model):
        self.name, self.sd_model = name, sd_model
        self.model_wrap_cfg = CFGDenoiser(self)
        self.sampler_extra_args, self.last_latent, self.p = None, None, None

    def model_wrap(self, x, sigma, cond):
        """CompVisDenoiser(shared.sd_model).forward (CFGDenoiser.inner_model wraps the current
        model, a refiner's after a switch): eps-prediction model -> denoised."""
        c_in = (1 / (sigma ** 2 + 1) ** 0.5)[:, None, None, None]
        eps = shared.sd_model.apply_model(x * c_in, sigma_to_t(sigma), cond)
        return x - eps * sigma[:, None, None, None]

    def initialize(self, p):
        self.p = p
        self.model_wrap_cfg.p = p
        self.model_wrap_cfg.step = 0
        self.model_wrap_cfg.image_cfg_scale = getattr(p, 'image_cfg_scale', None)

    def callback_state(self, i):
        state.sampling_step = i

    def _euler(self, x, sigmas):
        extra = self.sampler_extra_args
        for i in range(len(sigmas) - 1):
            s = sigmas[i] * x.new_ones([x.shape[0]])
            denoised = self.model_wrap_cfg(x, s, extra["uncond"], extra["cond"], extra["cond_scale"],
                                           extra["s_min_uncond"], extra["image_cond"])
            self.callback_state(i)
            self.last_latent = denoised
            x = x + (x - denoised) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
        return x

    def _extra(self, p, conditioning, unconditional_conditioning, x):
        return {"cond": conditioning, "uncond": unconditional_conditioning, "cond_scale": p.cfg_scale,
                "s_min_uncond": p.s_min_uncond, "image_cond": x.new_zeros([x.shape[0], 5, 1, 1])}

    def sample(self, p, x, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        steps = steps or p.steps
        sigmas = get_sigmas(steps)
        self.initialize(p)
        self.sampler_extra_args = self._extra(p, conditioning, unconditional_conditioning, x)
        x = x * sigmas[0]
        return sd_samplers_common.launch_sampling(self, steps, lambda: self._euler(x, sigmas))

    def sample_img2img(self, p, x, noise, conditioning, unconditional_conditioning, steps=None,
                       image_conditioning=None):
        steps = steps or p.steps
        t_enc = int(min(p.denoising_strength, 0.999) * steps)
        sigmas = get_sigmas(steps)[steps - t_enc - 1:]
        self.initialize(p)
        self.model_wrap_cfg.init_latent = x
        self.sampler_extra_args = self._extra(p, conditioning, unconditional_conditioning, x)
        xi = x + noise * sigmas[0]
        return sd_samplers_common.launch_sampling(self, t_enc + 1, lambda: self._euler(xi, sigmas))


def create_sampler(name, model):
    return KDiffusionSampler(name, model)
