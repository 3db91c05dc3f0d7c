"""Mirrors modules/processing.py: StableDiffusionProcessing(Txt2Img/Img2Img) fields a script
reads, process_images / process_images_inner (script hooks in A1111's order, p.init once per
job, the selected checkpoint reloaded per batch, params.txt written with Processed(p, []).infotext),
sample() with process_before_every_sampling, the hires second pass (on its own checkpoint when
hr_checkpoint_info is given), create_infotext and Processed (with js(), the JSON the API returns
as `info`, and infotext(p, index)). `p.sd_model` is shared.sd_model, as in v1.10 (a property): a
refiner or hires checkpoint changes it mid-job.

Differences, for speed: no VAE (images are the final latents), text conditioning is a seeded
random tensor per prompt (77 tokens per 75 words, AND-parts split), and the sampler is Euler.
A1111's processing classes are dataclasses; the stand-in's __init__ takes a few of their fields
(with small defaults: steps 2, 64x64, sampler Euler) and sets any other keyword as an attribute,
which covers what A1111 sets after construction or derives in init(): scripts, script_args and
is_api (set by txt2img() / the API), refiner_checkpoint_info and hr_checkpoint_info (found from
refiner_checkpoint / hr_checkpoint_name), init_latent (the VAE encoding of init_images)."""
import json
import os
import zlib

import torch

from modules import errors, infotext_utils, paths, prompt_parser, sd_models, sd_samplers, shared
from modules.shared import opts, state


class StandinSDModel:
    """No A1111 counterpart: the surface of an ldm LatentDiffusion (A1111's shared.sd_model) that
    processing and scripts touch."""

    def __init__(self, unet, is_sdxl=False, context_dim=768, name="standin"):
        from types import SimpleNamespace
        self.context_dim = context_dim
        self.model = SimpleNamespace(diffusion_model=unet, conditioning_key="crossattn")
        self.is_sdxl, self.is_sd1, self.is_sd2 = is_sdxl, not is_sdxl, False
        self.sd_checkpoint_info = SimpleNamespace(name_for_extra=name, shorthash="00000000", title=name,
                                                  short_title=name)
        self.sd_model_hash = "00000000"
        self.cond_stage_key = "txt"

    def apply_model(self, x, t, cond):
        """ldm DiffusionWrapper.forward for conditioning_key 'crossattn': context=cat(c_crossattn, 1)."""
        return self.model.diffusion_model(x, t, context=torch.cat(cond["c_crossattn"], 1))


def text_encode(prompt: str, dim: int = 768) -> torch.Tensor:
    """No A1111 counterpart: stands in for the text encoder (a seeded random tensor per prompt)."""
    chunks = max(1, (len(prompt.split()) + 74) // 75)
    g = torch.Generator().manual_seed(zlib.crc32(prompt.encode()))
    return torch.randn(77 * chunks, dim, generator=g) * 0.5


class StableDiffusionProcessing:
    def __init__(self, sd_model=None, prompt="", negative_prompt="", seed=-1, n_iter=1, batch_size=1, steps=2,
                 cfg_scale=7.0, width=64, height=64, sampler_name="Euler", s_min_uncond=0.0,
                 override_settings=None, do_not_save_samples=True, **kwargs):
        self.prompt, self.negative_prompt = prompt, negative_prompt
        self.seed, self.n_iter, self.batch_size, self.steps = seed, n_iter, batch_size, steps
        self.cfg_scale, self.width, self.height, self.sampler_name = cfg_scale, width, height, sampler_name
        self.s_min_uncond, self.script_args, self.scripts = s_min_uncond, [], None
        self.override_settings = override_settings or {}
        self.extra_generation_params, self.comments = {}, {}
        self.is_hr_pass, self.iteration, self.sampler = False, 0, None
        self.refiner_checkpoint_info, self.refiner_switch_at = None, None
        self.do_not_save_samples = do_not_save_samples
        self.subseed_strength, self.styles, self.restore_faces = 0, [], None
        self.seed_resize_from_h = self.seed_resize_from_w = -1
        self.sd_model_name = self.sd_model_hash = self.sd_vae_name = self.sd_vae_hash = None
        self.is_using_inpainting_conditioning = False
        self.is_api = False
        for k, v in kwargs.items():
            setattr(self, k, v)
        self.script_args = list(self.script_args or [])
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

    def txt2img_image_conditioning(self, x, width=None, height=None):
        """A1111's branch for a model that is neither inpainting nor unCLIP: a dummy zero tensor."""
        self.is_using_inpainting_conditioning = self.sd_model.model.conditioning_key in {'hybrid', 'concat'}
        return x.new_zeros(x.shape[0], 5, 1, 1, dtype=x.dtype, device=x.device)

    def init(self, all_prompts, all_seeds, all_subseeds):
        pass

    def setup_prompts(self):
        n = self.n_iter * self.batch_size
        prompts = self.prompt if isinstance(self.prompt, list) else [self.prompt] * n
        negatives = self.negative_prompt if isinstance(self.negative_prompt, list) else [self.negative_prompt] * n
        self.all_prompts, self.all_negative_prompts = prompts, negatives
        self.main_prompt, self.main_negative_prompt = prompts[0], negatives[0]
        self.all_seeds = [int(self.seed) + i for i in range(n)]
        self.all_subseeds = list(self.all_seeds)

    def encode_conds(self, prompts, negative_prompts, steps):
        """No A1111 counterpart: what prompt_parser.get_multicond_learned_conditioning and
        get_learned_conditioning return for prompts without scheduling (one schedule entry)."""
        sched = prompt_parser.ScheduledPromptConditioning
        c = prompt_parser.MulticondLearnedConditioning(
            (len(prompts),), [[prompt_parser.ComposableScheduledPromptConditioning(
                [sched(steps, text_encode(part, self.sd_model.context_dim))]) for part in prompt.split(" AND ")]
                for prompt in prompts])
        uc = [[sched(steps, text_encode(n, self.sd_model.context_dim))] for n in negative_prompts]
        return c, uc

    def setup_conds(self):
        self.c, self.uc = self.encode_conds(self.prompts, self.negative_prompts, self.steps)

    def get_conds(self):
        return self.c, self.uc

    def noise(self, shape):
        """No A1111 counterpart: rng.ImageRNG(shape, p.seeds).next(): one seeded noise tensor per image."""
        return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in self.seeds])


class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
    def __init__(self, enable_hr=False, hr_scale=2.0, hr_second_pass_steps=0, denoising_strength=0.75, **kwargs):
        self.hr_checkpoint_info = None  # v1.10 finds it from hr_checkpoint_name in init(); tests pass it
        self.hr_c = self.hr_uc = None
        super().__init__(**kwargs)
        self.enable_hr, self.hr_scale = enable_hr, hr_scale
        self.hr_second_pass_steps, self.denoising_strength = hr_second_pass_steps, denoising_strength
        if self.hr_checkpoint_info is not None:
            self.extra_generation_params["Hires checkpoint"] = self.hr_checkpoint_info.short_title

    def calculate_hr_conds(self):
        if self.hr_c is not None:
            return
        self.hr_c, self.hr_uc = self.encode_conds(self.prompts, self.negative_prompts,
                                                  self.hr_second_pass_steps or self.steps)

    def setup_conds(self):
        """In the hires pass (called by the refiner) only the hires conds, for the new model."""
        if self.is_hr_pass:
            self.hr_c = None
            self.calculate_hr_conds()
            return
        super().setup_conds()
        self.hr_uc = self.hr_c = None

    def get_conds(self):
        if self.is_hr_pass:
            return self.hr_c, self.hr_uc
        return super().get_conds()

    def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
        self.sampler = sd_samplers.create_sampler(self.sampler_name, self.sd_model)
        x = self.noise((4, self.height // 8, self.width // 8))
        if self.scripts is not None:
            self.scripts.process_before_every_sampling(p=self, x=x, noise=x, c=conditioning,
                                                       uc=unconditional_conditioning)
        samples = self.sampler.sample(self, x, conditioning, unconditional_conditioning,
                                      image_conditioning=self.txt2img_image_conditioning(x))
        if not self.enable_hr:
            return samples
        decoded_samples = None  # A1111's latent upscalers (the only ones here: no VAE) decode nothing
        with sd_models.SkipWritingToConfig():
            sd_models.reload_model_weights(info=self.hr_checkpoint_info)
        return self.sample_hr_pass(samples, decoded_samples, seeds, subseeds, subseed_strength, prompts)

    def sample_hr_pass(self, samples, decoded_samples, seeds, subseeds, subseed_strength, prompts):
        """A latent upscaler's path (nearest, by hr_scale); the seeds are the batch's (self.seeds)."""
        if state.interrupted:
            return samples
        self.is_hr_pass = True
        self.sampler = sd_samplers.create_sampler(self.sampler_name, self.sd_model)
        samples = torch.nn.functional.interpolate(samples, scale_factor=self.hr_scale, mode="nearest")
        image_conditioning = self.txt2img_image_conditioning(samples)
        state.nextjob()
        noise = self.noise(tuple(samples.shape[1:]))
        self.calculate_hr_conds()  # for this pass's model
        if self.scripts is not None:
            self.scripts.before_hr(self)
            self.scripts.process_before_every_sampling(p=self, x=samples, noise=noise, c=self.hr_c, uc=self.hr_uc)
        samples = self.sampler.sample_img2img(self, samples, noise, self.hr_c, self.hr_uc,
                                              steps=self.hr_second_pass_steps or self.steps,
                                              image_conditioning=image_conditioning)
        self.sampler = None
        self.is_hr_pass = False
        return samples


class StableDiffusionProcessingImg2Img(StableDiffusionProcessing):
    def __init__(self, denoising_strength=0.75, image_cfg_scale=None, mask=None, **kwargs):
        self.init_latent = None  # A1111's init() encodes init_images with the VAE; tests pass it
        super().__init__(**kwargs)
        self.denoising_strength, self.image_cfg_scale = denoising_strength, image_cfg_scale
        self.image_mask, self.mask = mask, None  # as A1111's __post_init__
        self.image_conditioning = None

    def init(self, all_prompts, all_seeds, all_subseeds):
        self.extra_generation_params["Denoising strength"] = self.denoising_strength
        self.image_cfg_scale = self.image_cfg_scale if shared.sd_model.cond_stage_key == "edit" else None
        self.sampler = sd_samplers.create_sampler(self.sampler_name, self.sd_model)
        # img2img_image_conditioning: for a model that is neither inpainting nor edit, a dummy zero tensor
        self.image_conditioning = self.init_latent.new_zeros(self.init_latent.shape[0], 5, 1, 1)

    def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
        x = self.noise(tuple(self.init_latent.shape[1:]))
        if self.scripts is not None:
            self.scripts.process_before_every_sampling(p=self, x=self.init_latent, noise=x, c=conditioning,
                                                       uc=unconditional_conditioning)
        return self.sampler.sample_img2img(self, self.init_latent, x, conditioning, unconditional_conditioning,
                                           image_conditioning=self.image_conditioning)


class Processed:
    def __init__(self, p: StableDiffusionProcessing, images_list, seed=-1, info="", subseed=None, all_prompts=None,
                 all_negative_prompts=None, all_seeds=None, all_subseeds=None, index_of_first_image=0,
                 infotexts=None, comments=""):
        self.images = images_list
        self.prompt, self.negative_prompt = p.prompt, p.negative_prompt
        self.seed, self.subseed, self.subseed_strength = seed, subseed, p.subseed_strength
        self.info = info
        self.comments = "".join(f"{comment}\n" for comment in p.comments)
        self.width, self.height = p.width, p.height
        self.sampler_name, self.cfg_scale = p.sampler_name, p.cfg_scale
        self.image_cfg_scale = getattr(p, 'image_cfg_scale', None)
        self.steps, self.batch_size = p.steps, p.batch_size
        self.restore_faces = p.restore_faces
        self.face_restoration_model = None  # opts.face_restoration_model when restore_faces
        self.sd_model_name, self.sd_model_hash = p.sd_model_name, p.sd_model_hash
        self.sd_vae_name, self.sd_vae_hash = p.sd_vae_name, p.sd_vae_hash
        self.seed_resize_from_w, self.seed_resize_from_h = p.seed_resize_from_w, p.seed_resize_from_h
        self.denoising_strength = getattr(p, 'denoising_strength', None)
        self.extra_generation_params = p.extra_generation_params
        self.index_of_first_image = index_of_first_image
        self.styles = p.styles
        self.job_timestamp = state.job_timestamp
        self.clip_skip = opts.CLIP_stop_at_last_layers
        self.s_min_uncond = p.s_min_uncond
        first = lambda v: v[0] if isinstance(v, list) else v
        self.prompt, self.negative_prompt = first(self.prompt), first(self.negative_prompt)
        self.seed = int(first(self.seed)) if self.seed is not None else -1
        self.subseed = int(first(self.subseed)) if self.subseed is not None else -1
        self.is_using_inpainting_conditioning = p.is_using_inpainting_conditioning

        self.all_prompts = all_prompts or p.all_prompts or [self.prompt]
        self.all_negative_prompts = all_negative_prompts or p.all_negative_prompts or [self.negative_prompt]
        self.all_seeds = all_seeds or p.all_seeds or [self.seed]
        self.all_subseeds = all_subseeds or p.all_subseeds or [self.subseed]
        self.infotexts = infotexts or [info] * len(images_list)
        self.version = "v1.10.1"  # A1111: program_version(), from git

    def js(self):
        obj = {
            "prompt": self.all_prompts[0],
            "all_prompts": self.all_prompts,
            "negative_prompt": self.all_negative_prompts[0],
            "all_negative_prompts": self.all_negative_prompts,
            "seed": self.seed,
            "all_seeds": self.all_seeds,
            "subseed": self.subseed,
            "all_subseeds": self.all_subseeds,
            "subseed_strength": self.subseed_strength,
            "width": self.width,
            "height": self.height,
            "sampler_name": self.sampler_name,
            "cfg_scale": self.cfg_scale,
            "steps": self.steps,
            "batch_size": self.batch_size,
            "restore_faces": self.restore_faces,
            "face_restoration_model": self.face_restoration_model,
            "sd_model_name": self.sd_model_name,
            "sd_model_hash": self.sd_model_hash,
            "sd_vae_name": self.sd_vae_name,
            "sd_vae_hash": self.sd_vae_hash,
            "seed_resize_from_w": self.seed_resize_from_w,
            "seed_resize_from_h": self.seed_resize_from_h,
            "denoising_strength": self.denoising_strength,
            "extra_generation_params": self.extra_generation_params,
            "index_of_first_image": self.index_of_first_image,
            "infotexts": self.infotexts,
            "styles": self.styles,
            "job_timestamp": self.job_timestamp,
            "clip_skip": self.clip_skip,
            "is_using_inpainting_conditioning": self.is_using_inpainting_conditioning,
            "version": self.version,
        }
        return json.dumps(obj, default=lambda o: None)

    def infotext(self, p: StableDiffusionProcessing, index):
        return create_infotext(p, self.all_prompts, self.all_seeds, self.all_subseeds, comments=[],
                               position_in_batch=index % self.batch_size, iteration=index // self.batch_size)


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
    p.sd_model_name = shared.sd_model.sd_checkpoint_info.name_for_extra
    p.sd_model_hash = shared.sd_model.sd_model_hash
    p.setup_prompts()
    if p.scripts is not None:
        p.scripts.process(p)
    images, infotexts = [], []
    with torch.no_grad():
        p.init(p.all_prompts, p.all_seeds, p.all_subseeds)
        for n in range(p.n_iter):
            p.iteration = n
            if state.skipped:
                state.skipped = False
            if state.interrupted or state.stopping_generation:
                break
            sd_models.reload_model_weights()  # the model can be changed, for example by the refiner
            sl = slice(n * p.batch_size, (n + 1) * p.batch_size)
            p.prompts, p.negative_prompts = p.all_prompts[sl], p.all_negative_prompts[sl]
            p.seeds, p.subseeds = p.all_seeds[sl], p.all_subseeds[sl]
            if p.scripts is not None:
                p.scripts.before_process_batch(p, batch_number=n, prompts=p.prompts, seeds=p.seeds, subseeds=p.subseeds)
                p.scripts.process_batch(p, batch_number=n, prompts=p.prompts, seeds=p.seeds, subseeds=p.subseeds)
            p.setup_conds()
            if n == 0 and not shared.cmd_opts.no_prompt_history:
                with open(os.path.join(paths.data_path, "params.txt"), "w", encoding="utf8") as file:
                    processed = Processed(p, [])
                    file.write(processed.infotext(p, 0))
            samples = p.sample(conditioning=p.c, unconditional_conditioning=p.uc, seeds=p.seeds,
                               subseeds=p.subseeds, subseed_strength=p.subseed_strength, prompts=p.prompts)
            if p.scripts is not None:
                p.scripts.postprocess_batch(p, samples, batch_number=n)
            for i in range(samples.shape[0]):
                images.append(samples[i])
                infotexts.append(create_infotext(p, p.prompts, p.seeds, p.subseeds, index=i,
                                                 all_negative_prompts=p.negative_prompts))
        if not infotexts:
            infotexts.append(Processed(p, []).infotext(p, 0))
        index_of_first_image = 0
        if opts.return_grid and not (len(images) < 2 and opts.grid_only_if_multiple):  # the grid comes first
            images.insert(0, torch.cat(images[-p.batch_size:], -1))
            infotexts.insert(0, create_infotext(p, p.prompts, p.seeds, p.subseeds, use_main_prompt=True,
                                                all_negative_prompts=p.negative_prompts))
            index_of_first_image = 1
    res = Processed(p, images_list=images, seed=p.all_seeds[0], info=infotexts[0], subseed=p.all_subseeds[0],
                    index_of_first_image=index_of_first_image, infotexts=infotexts)
    if p.scripts is not None:
        p.scripts.postprocess(p, res)
    return res
