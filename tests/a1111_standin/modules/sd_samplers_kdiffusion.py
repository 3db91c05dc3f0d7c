"""Mirrors modules/sd_samplers_kdiffusion.py: CFGDenoiserKDiffusion, whose inner_model (a
property) is the k-diffusion denoiser wrapping shared.sd_model, made on first use and again after
a refiner switch (update_inner_model); KDiffusionSampler (sample / sample_img2img), of which the
sampler is also `model_wrap`; and samplers_data_k_diffusion, which sd_samplers.create_sampler
builds from. One sampler, Euler, with stand-ins of k-diffusion's parts (k_diffusion is no A1111
file): CompVisDenoiser (its scaling: the UNet sees x * c_in and a timestep, and predicts eps),
sample_euler, and a log-linear sigma schedule in place of the model's discrete one."""
import torch

from modules import sd_samplers_cfg_denoiser, sd_samplers_common, shared
from modules.sd_samplers_cfg_denoiser import CFGDenoiser  # noqa: F401  (A1111 imports it here too)

SIGMA_MAX, SIGMA_MIN = 14.6, 0.03


class CompVisDenoiser(torch.nn.Module):
    """No A1111 counterpart: k_diffusion.external.CompVisDenoiser, an eps-prediction model as a
    denoiser; forward(input, sigma, **kwargs) as k-diffusion's, which extensions replace on the
    instance (Tiled Diffusion: sampler.model_wrap_cfg.inner_model.forward = ...)."""

    def __init__(self, model):
        super().__init__()
        self.inner_model = model

    def sigma_to_t(self, sigma):
        """A monotone stand-in for the lookup over the model's 1000 DDPM timesteps."""
        log_min, log_ratio = torch.log(torch.tensor(SIGMA_MIN)), torch.log(torch.tensor(SIGMA_MAX / SIGMA_MIN))
        return (torch.log(sigma) - log_min) / log_ratio * 999

    def get_sigmas(self, n):
        sigmas = torch.exp(torch.linspace(torch.log(torch.tensor(SIGMA_MAX)), torch.log(torch.tensor(SIGMA_MIN)), n))
        return torch.cat([sigmas, torch.zeros(1)])

    def forward(self, input, sigma, **kwargs):
        c_in = (1 / (sigma ** 2 + 1) ** 0.5)[:, None, None, None]
        eps = self.inner_model.apply_model(input * c_in, self.sigma_to_t(sigma), **kwargs)
        return input - eps * sigma[:, None, None, None]


def sample_euler(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """No A1111 counterpart: k_diffusion.sampling.sample_euler (with s_churn 0)."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        if callback is not None:
            callback({'x': x, 'i': i, 'sigma': sigmas[i], 'sigma_hat': sigmas[i], 'denoised': denoised})
        x = x + (x - denoised) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
    return x


samplers_k_diffusion = [
    ('Euler', 'sample_euler', ['k_euler'], {}),
]

samplers_data_k_diffusion = [
    sd_samplers_common.SamplerData(label, lambda model, funcname=funcname: KDiffusionSampler(funcname, model),
                                   aliases, options)
    for label, funcname, aliases, options in samplers_k_diffusion
]


class CFGDenoiserKDiffusion(sd_samplers_cfg_denoiser.CFGDenoiser):
    @property
    def inner_model(self):
        if self.model_wrap is None:
            self.model_wrap = CompVisDenoiser(shared.sd_model)
        return self.model_wrap


class KDiffusionSampler(sd_samplers_common.Sampler):
    def __init__(self, funcname, sd_model, options=None):
        super().__init__(funcname)
        self.options = options or {}
        self.func = {'sample_euler': sample_euler}[funcname]
        self.model_wrap_cfg = CFGDenoiserKDiffusion(self)
        self.model_wrap = self.model_wrap_cfg.inner_model

    def get_sigmas(self, p, steps):
        return self.model_wrap.get_sigmas(steps).cpu()

    def _extra_args(self, p, conditioning, unconditional_conditioning, image_conditioning):
        """No A1111 counterpart: the dict both of A1111's sample methods build inline."""
        return {'cond': conditioning, 'image_cond': image_conditioning, 'uncond': unconditional_conditioning,
                'cond_scale': p.cfg_scale, 's_min_uncond': self.s_min_uncond}

    def sample_img2img(self, p, x, noise, conditioning, unconditional_conditioning, steps=None,
                       image_conditioning=None):
        steps, t_enc = sd_samplers_common.setup_img2img_steps(p, steps)
        sigmas = self.get_sigmas(p, steps)
        sigma_sched = sigmas[steps - t_enc - 1:]
        xi = x + noise * sigma_sched[0]
        self.initialize(p)
        self.model_wrap_cfg.init_latent = x
        self.last_latent = x
        self.sampler_extra_args = self._extra_args(p, conditioning, unconditional_conditioning, image_conditioning)
        return self.launch_sampling(t_enc + 1, lambda: self.func(
            self.model_wrap_cfg, xi, extra_args=self.sampler_extra_args, disable=False, callback=self.callback_state,
            sigmas=sigma_sched))

    def sample(self, p, x, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        steps = steps or p.steps
        sigmas = self.get_sigmas(p, steps)
        x = x * sigmas[0]
        self.initialize(p)
        self.last_latent = x
        self.sampler_extra_args = self._extra_args(p, conditioning, unconditional_conditioning, image_conditioning)
        return self.launch_sampling(steps, lambda: self.func(
            self.model_wrap_cfg, x, extra_args=self.sampler_extra_args, disable=False, callback=self.callback_state,
            sigmas=sigmas))
