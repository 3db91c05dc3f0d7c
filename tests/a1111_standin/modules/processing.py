"""Mirrors modules/processing.py: StableDiffusionProcessing(Txt2Img/Img2Img) fields a script
reads, process_images / process_images_inner (script hooks in A1111's order, the selected checkpoint reloaded per batch),
sample() with process_before_every_sampling, the hires second pass (on its own checkpoint when
hr_checkpoint_info is given), create_infotext and Processed. `p.sd_model` is shared.sd_model, as
in v1.10 (a property): a refiner or hires checkpoint changes it mid-job.

Differences, for speed: no VAE (images are the final latents), text conditioning is a seeded
random tensor per prompt (77 tokens per 75 words, AND-parts split), and the sampler is Euler."""
import hashlib
import os
import zlib

import torch

from modules import errors, infotext_utils, paths, prompt_parser, sd_models, sd_samplers, shared
from modules.shared import opts, state


class StandinSDModel:
    """The surface of an ldm LatentDiffusion that processing and scripts touch."""

    def __init__(self, unet, is_sdxl=False, context_dim=768, name="standin"):
        from types import SimpleNamespace
        self.context_dim = context_dim
        self.model = SimpleNamespace(diffusion_model=unet, conditioning_key="crossattn")
        self.is_sdxl, self.is_sd1, self.is_sd2 = is_sdxl, not is_sdxl, False
        self.sd_checkpoint_info = SimpleNamespace(name_for_extra=name, shorthash="00000000", title=name,
                                                  short_title=name)
        self.cond_stage_key = "txt"

    def apply_model(self, x, t, cond):
        """ldm DiffusionWrapper.forward for conditioning_key 'crossattn': context=cat(c_crossattn, 1)."""
        return self.model.diffusion_model(x, t, context=torch.cat(cond["c_crossattn"], 1))


def text_encode(prompt: str, dim: int = 768) -> torch.Tensor:
    chunks = max(1, (len(prompt.split()) + 74) // 75)
    g = torch.Generator().manual_seed(zlib.crc32(prompt.encode()))
    return torch.randn(77 * chunks, dim, generator=g) * 0.5


class StableDiffusionProcessing:
    def __init__(self, sd_model=None, prompt="", negative_prompt="", seed=-1, n_iter=1, batch_size=1, steps=2,
                 cfg_scale=7.0, width=64, height=64, sampler_name="Euler", s_min_uncond=0.0, script_args=None,
                 scripts=None, override_settings=None, do_not_save_samples=True, **kwargs):
        self.prompt, self.negative_prompt = prompt, negative_prompt
        self.seed, self.n_iter, self.batch_size, self.steps = seed, n_iter, batch_size, steps
        self.cfg_scale, self.width, self.height, self.sampler_name = cfg_scale, width, height, sampler_name
        self.s_min_uncond, self.script_args, self.scripts = s_min_uncond, list(script_args or []), scripts
        self.override_settings = override_settings or {}
        self.extra_generation_params, self.comments = {}, {}
        self.is_hr_pass, self.iteration, self.sampler = False, 0, None
        self.refiner_checkpoint_info, self.refiner_switch_at = None, None
        self.do_not_save_samples = do_not_save_samples
        self.is_api = kwargs.pop("is_api", False)
        for k, v in kwargs.items():
            setattr(self, k, v)
        shared.sd_model = sd_model
        sd_models.select(sd_model)

    @property
    def sd_model(self):
        return shared.sd_model

    @sd_model.setter
    def sd_model(self, value):
        pass

    def comment(self, text):
        self.comments[text] = 1

    def setup_prompts(self):
        n = self.n_iter * self.batch_size
        prompts = self.prompt if isinstance(self.prompt, list) else [self.prompt] * n
        negatives = self.negative_prompt if isinstance(self.negative_prompt, list) else [self.negative_prompt] * n
        self.all_prompts, self.all_negative_prompts = prompts, negatives
        self.main_prompt, self.main_negative_prompt = prompts[0], negatives[0]
        self.all_seeds = [int(self.seed) + i for i in range(n)]
        self.all_subseeds = list(self.all_seeds)

    def encode_conds(self, prompts, negative_prompts):
        c = prompt_parser.MulticondLearnedConditioning(
            (len(prompts),), [[prompt_parser.ComposableScheduledPromptConditioning(text_encode(part, self.sd_model.context_dim))
                               for part in prompt.split(" AND ")] for prompt in prompts])
        uc = torch.stack([text_encode(n, self.sd_model.context_dim) for n in negative_prompts])
        return c, uc

    def setup_conds(self):
        """Txt2Img.setup_conds: in the hires pass (called by the refiner) only the hires conds."""
        if self.is_hr_pass:
            self.hr_c, self.hr_uc = self.encode_conds(self.prompts, self.negative_prompts)
        else:
            self.c, self.uc = self.encode_conds(self.prompts, self.negative_prompts)

    def get_conds(self):
        return (self.hr_c, self.hr_uc) if self.is_hr_pass else (self.c, self.uc)

    def noise(self, shape):
        """ImageRNG: one seeded noise tensor per image of the batch."""
        return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in self.seeds])


class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
    def __init__(self, enable_hr=False, hr_scale=2.0, hr_second_pass_steps=0, denoising_strength=0.7,
                 hr_checkpoint_info=None, **kwargs):
        super().__init__(**kwargs)
        self.enable_hr, self.hr_scale = enable_hr, hr_scale
        self.hr_second_pass_steps, self.denoising_strength = hr_second_pass_steps, denoising_strength
        self.hr_checkpoint_info = hr_checkpoint_info  # v1.10 finds it from hr_checkpoint_name in init()
        if hr_checkpoint_info is not None:
            self.extra_generation_params["Hires checkpoint"] = hr_checkpoint_info.short_title

    def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
        self.sampler = sd_samplers.create_sampler(self.sampler_name, self.sd_model)
        x = self.noise((4, self.height // 8, self.width // 8))
        if self.scripts is not None:
            self.scripts.process_before_every_sampling(p=self, x=x, noise=x, c=conditioning,
                                                       uc=unconditional_conditioning)
        samples = self.sampler.sample(self, x, conditioning, unconditional_conditioning)
        if not self.enable_hr:
            return samples
        sd_models.reload_model_weights(info=self.hr_checkpoint_info)
        return self.sample_hr_pass(samples, conditioning, unconditional_conditioning)

    def sample_hr_pass(self, samples, c, uc):
        if state.interrupted:
            return samples
        self.is_hr_pass = True
        samples = torch.nn.functional.interpolate(samples, scale_factor=self.hr_scale, mode="nearest")
        self.sampler = sd_samplers.create_sampler(self.sampler_name, self.sd_model)
        noise = self.noise(tuple(samples.shape[1:]))
        self.hr_c, self.hr_uc = self.encode_conds(self.prompts, self.negative_prompts)  # for this pass's model
        if self.scripts is not None:
            self.scripts.before_hr(self)
            self.scripts.process_before_every_sampling(p=self, x=samples, noise=noise, c=self.hr_c, uc=self.hr_uc)
        samples = self.sampler.sample_img2img(self, samples, noise, self.hr_c, self.hr_uc,
                                              steps=self.hr_second_pass_steps or self.steps)
        self.is_hr_pass = False
        return samples


class StableDiffusionProcessingImg2Img(StableDiffusionProcessing):
    def __init__(self, init_latent=None, denoising_strength=0.75, image_mask=None, **kwargs):
        super().__init__(**kwargs)
        self.init_latent, self.denoising_strength, self.image_mask = init_latent, denoising_strength, image_mask

    def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
        self.sampler = sd_samplers.create_sampler(self.sampler_name, self.sd_model)
        x = self.noise(tuple(self.init_latent.shape[1:]))
        if self.scripts is not None:
            self.scripts.process_before_every_sampling(p=self, x=self.init_latent, noise=x, c=conditioning,
                                                       uc=unconditional_conditioning)
        return self.sampler.sample_img2img(self, self.init_latent, x, conditioning, unconditional_conditioning)


class Processed:
    def __init__(self, p, images, infotexts):
        self.images, self.infotexts, self.info = images, infotexts, infotexts[0] if infotexts else ""
        self.comments = "".join(f"{c}\n" for c in p.comments)
        self.extra_generation_params = p.extra_generation_params
        self.seed = p.all_seeds[0]


def create_infotext(p, all_prompts, all_seeds, all_subseeds, comments=None, iteration=0, position_in_batch=0,
                    use_main_prompt=False, index=None, all_negative_prompts=None):
    """v1.10's signature and index rule: per image with the *batch's* prompts and seeds and the
    index in the batch; for the grid (use_main_prompt) index 0 of the last batch, with Seed
    p.all_seeds[0]; for params.txt (Processed.infotext) the job's lists at iteration 0. An
    extra_generation_params value that is a list is indexed, one that is callable is called
    with create_infotext's locals (as v1.10 documents)."""
    if use_main_prompt:
        index = 0
    elif index is None:
        index = position_in_batch + iteration * p.batch_size
    if all_negative_prompts is None:
        all_negative_prompts = p.all_negative_prompts
    generation_params = {"Steps": p.steps, "Sampler": p.sampler_name, "CFG scale": p.cfg_scale,
                         "Seed": p.all_seeds[0] if use_main_prompt else all_seeds[index],
                         "Size": f"{p.width}x{p.height}", **p.extra_generation_params}
    for key, value in generation_params.items():
        try:
            if isinstance(value, list):
                generation_params[key] = value[index]
            elif callable(value):
                generation_params[key] = value(**locals())
        except Exception:
            errors.report(f'Error creating infotext for key "{key}"', exc_info=True)
            generation_params[key] = None
    text = ", ".join(k if k == v else f"{k}: {infotext_utils.quote(v)}" for k, v in generation_params.items()
                     if v is not None)
    prompt = p.main_prompt if use_main_prompt else all_prompts[index]
    negative = p.main_negative_prompt if use_main_prompt else all_negative_prompts[index]
    return f"{prompt}\nNegative prompt: {negative}\n{text}".strip()


def process_images(p) -> Processed:
    if p.scripts is not None:
        p.scripts.before_process(p)
    stored = {k: getattr(opts, k) for k in p.override_settings}
    try:
        for k, v in p.override_settings.items():
            setattr(opts, k, v)
        return process_images_inner(p)
    finally:
        for k, v in stored.items():
            setattr(opts, k, v)


def process_images_inner(p) -> Processed:
    p.setup_prompts()
    if p.scripts is not None:
        p.scripts.process(p)
    images, infotexts = [], []
    with torch.no_grad():
        for n in range(p.n_iter):
            p.iteration = n
            if state.skipped:
                state.skipped = False
            if state.interrupted or state.stopping_generation:
                break
            sl = slice(n * p.batch_size, (n + 1) * p.batch_size)
            p.prompts, p.negative_prompts = p.all_prompts[sl], p.all_negative_prompts[sl]
            sd_models.reload_model_weights()  # the model can be changed, for example by the refiner
            p.seeds, p.subseeds = p.all_seeds[sl], p.all_subseeds[sl]
            if p.scripts is not None:
                p.scripts.before_process_batch(p, batch_number=n, prompts=p.prompts, seeds=p.seeds, subseeds=p.subseeds)
                p.scripts.process_batch(p, batch_number=n, prompts=p.prompts, seeds=p.seeds, subseeds=p.subseeds)
            p.setup_conds()
            if n == 0:  # params.txt (what "Read generation parameters" pastes): Processed(p, []).infotext(p, 0)
                with open(os.path.join(paths.data_path, "params.txt"), "w", encoding="utf8") as file:
                    file.write(create_infotext(p, p.all_prompts, p.all_seeds, p.all_subseeds, comments=[]))
            samples = p.sample(conditioning=p.c, unconditional_conditioning=p.uc, seeds=p.seeds,
                               subseeds=p.subseeds, subseed_strength=0.0, prompts=p.prompts)
            if p.scripts is not None:
                p.scripts.postprocess_batch(p, samples, batch_number=n)
            for i in range(samples.shape[0]):
                images.append(samples[i])
                infotexts.append(create_infotext(p, p.prompts, p.seeds, p.subseeds, index=i,
                                                 all_negative_prompts=p.negative_prompts))
    if opts.return_grid and len(images) >= 2:  # the grid comes first (opts.grid_only_if_multiple)
        images.insert(0, torch.cat(images[-p.batch_size:], -1))
        infotexts.insert(0, create_infotext(p, p.prompts, p.seeds, p.subseeds, use_main_prompt=True,
                                            all_negative_prompts=p.negative_prompts))
    res = Processed(p, images, infotexts)
    if p.scripts is not None:
        p.scripts.postprocess(p, res)
    return res
