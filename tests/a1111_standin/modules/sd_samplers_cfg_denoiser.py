"""Mirrors modules/sd_samplers_cfg_denoiser.py CFGDenoiser: inner_model, a property (the
subclass CFGDenoiserKDiffusion in sd_samplers_kdiffusion.py gives the k-diffusion denoiser of
shared.sd_model, kept in model_wrap until update_inner_model clears it after a refiner switch),
and forward: how one sampling step's UNet batch is laid out and split into UNet calls (written
for these tests, same behaviour):

- apply_refiner first: the refiner's model may take over from this step on (new conds);
- x_in = for each image i, repeats[i] copies of x[i] (AND prompts), then x (the uncond rows);
  for an InstructPix2Pix ("edit") model with image CFG scale != 1, x twice: [cond, uncond text +
  image, uncond text + zero image], combined by combine_denoised_for_edit_model;
- on_cfg_denoiser is called with that batch (params.x, text_cond, text_uncond, denoiser);
- skip early CFG (opts.skip_early_cond) or negative guidance minimum sigma (s_min_uncond, on odd
  steps unless opts.s_min_uncond_all) drop the uncond rows;
- cond and uncond of the same token length: one call, or with opts.batch_cond_uncond off,
  successive calls of batch_size rows taken in order over x_in (a call may mix cond and uncond
  rows when AND prompts make the cond row count differ from batch_size);
- different token lengths with opts.pad_cond_uncond (the shorter padded with 77-token chunks of
  the empty prompt's conditioning; zeros here) or opts.pad_cond_uncond_v0 (uncond's last vector
  repeated, or uncond cut): the same length, so the calls above;
- different token lengths otherwise (not for edit models: A1111 v1.10 itself fails there, at
  `torch.cat([tensor[a:b]], uncond)`): calls over the cond rows (batch_size*2 at a time with
  batch_cond_uncond, else batch_size), then one call on the uncond rows.
"""
import torch

from modules import prompt_parser, sd_samplers_common, shared
from modules.script_callbacks import CFGDenoiserParams, cfg_denoiser_callback
from modules.shared import opts, state


class CFGDenoiser(torch.nn.Module):
    def __init__(self, sampler):
        super().__init__()
        self.model_wrap = None
        self.mask = self.nmask = self.init_latent = None
        self.steps = None
        self.total_steps = None
        self.step = 0
        self.image_cfg_scale = None  # set by the sampler's initialize(p), as sd_samplers_common does
        self.sampler = sampler
        self.p = None

    @property
    def inner_model(self):
        raise NotImplementedError()

    def update_inner_model(self):
        """After a refiner switch: the model (shared.sd_model) and the conds are new."""
        self.model_wrap = None
        c, uc = self.p.get_conds()
        self.sampler.sampler_extra_args["cond"] = c
        self.sampler.sampler_extra_args["uncond"] = uc

    def combine_denoised(self, x_out, conds_list, uncond, cond_scale):
        denoised_uncond = x_out[-uncond.shape[0]:]
        denoised = torch.clone(denoised_uncond)
        for i, conds in enumerate(conds_list):
            for cond_index, weight in conds:
                denoised[i] += (x_out[cond_index] - denoised_uncond[i]) * (weight * cond_scale)
        return denoised

    def combine_denoised_for_edit_model(self, x_out, cond_scale):
        out_cond, out_img_cond, out_uncond = x_out.chunk(3)
        return out_uncond + cond_scale * (out_cond - out_img_cond) + self.image_cfg_scale * (out_img_cond - out_uncond)

    def forward(self, x, sigma, uncond, cond, cond_scale, s_min_uncond, image_cond):
        if state.interrupted or state.skipped:
            raise sd_samplers_common.InterruptedException
        if sd_samplers_common.apply_refiner(self, sigma):
            cond = self.sampler.sampler_extra_args["cond"]
            uncond = self.sampler.sampler_extra_args["uncond"]
        is_edit_model = (shared.sd_model.cond_stage_key == "edit" and self.image_cfg_scale is not None
                         and self.image_cfg_scale != 1.0)

        conds_list, tensor = prompt_parser.reconstruct_multicond_batch(cond, self.step)
        uncond = prompt_parser.reconstruct_cond_batch(uncond, self.step)
        batch_size = len(conds_list)
        repeats = [len(conds_list[i]) for i in range(batch_size)]
        tail = 2 if is_edit_model else 1
        stack = lambda t, last=None: torch.cat([torch.stack([t[i]] * n) for i, n in enumerate(repeats)] + [t]
                                               + ([t if last is None else last] if is_edit_model else []))
        x_in, sigma_in = stack(x), stack(sigma)
        image_cond_in = stack(image_cond, torch.zeros_like(image_cond))

        params = CFGDenoiserParams(x_in, image_cond_in, sigma_in, state.sampling_step, state.sampling_steps,
                                   tensor, uncond, self)
        cfg_denoiser_callback(params)
        x_in, image_cond_in, sigma_in = params.x, params.image_cond, params.sigma
        tensor, uncond = params.text_cond, params.text_uncond

        skip_uncond = False
        if opts.skip_early_cond != 0. and self.step / self.total_steps <= opts.skip_early_cond:
            skip_uncond = True
            self.p.extra_generation_params["Skip Early CFG"] = opts.skip_early_cond
        elif (self.step % 2 or opts.s_min_uncond_all) and s_min_uncond > 0 and sigma[0] < s_min_uncond \
                and not is_edit_model:
            skip_uncond = True
            self.p.extra_generation_params["NGMS"] = s_min_uncond
        if skip_uncond:
            x_in, sigma_in = x_in[:-batch_size], sigma_in[:-batch_size]

        if opts.pad_cond_uncond_v0 and tensor.shape[1] != uncond.shape[1]:
            n = tensor.shape[1]
            uncond = (torch.hstack([uncond, uncond[:, -1:].repeat(1, n - uncond.shape[1], 1)])
                      if uncond.shape[1] < n else uncond[:, :n])
        elif opts.pad_cond_uncond and tensor.shape[1] != uncond.shape[1]:
            empty = torch.zeros(1, 77, tensor.shape[2], dtype=tensor.dtype)
            pad = lambda t, n: torch.cat([t] + [empty.expand(t.shape[0], -1, -1)] * n, 1)  # noqa: E731
            repeats_ = (tensor.shape[1] - uncond.shape[1]) // 77
            tensor, uncond = (pad(tensor, -repeats_), uncond) if repeats_ < 0 else (tensor, pad(uncond, repeats_))
        make = lambda c_crossattn, c_concat: {"c_crossattn": [c_crossattn], "c_concat": [c_concat]}
        if tensor.shape[1] == uncond.shape[1] or skip_uncond:
            cond_in = tensor if skip_uncond else torch.cat([tensor] + [uncond] * tail)
            if opts.batch_cond_uncond:
                x_out = self.inner_model(x_in, sigma_in, cond=make(cond_in, image_cond_in))
            else:
                x_out = torch.zeros_like(x_in)
                for a in range(0, x_out.shape[0], batch_size):
                    b = a + batch_size
                    x_out[a:b] = self.inner_model(x_in[a:b], sigma_in[a:b], cond=make(cond_in[a:b], image_cond_in[a:b]))
        else:
            x_out = torch.zeros_like(x_in)
            step = batch_size * 2 if opts.batch_cond_uncond else batch_size
            for a in range(0, tensor.shape[0], step):
                b = min(a + step, tensor.shape[0])
                x_out[a:b] = self.inner_model(x_in[a:b], sigma_in[a:b], cond=make(tensor[a:b], image_cond_in[a:b]))
            if not skip_uncond:
                n = uncond.shape[0]
                x_out[-n:] = self.inner_model(x_in[-n:], sigma_in[-n:], cond=make(uncond, image_cond_in[-n:]))

        first_rows = [c[0][0] for c in conds_list]
        if is_edit_model:
            self.sampler.last_latent = x_out[:batch_size]
            self.step += 1
            return self.combine_denoised_for_edit_model(x_out, cond_scale)
        if skip_uncond:
            x_out = torch.cat([x_out, torch.cat([x_out[i:i + 1] for i in first_rows])])
            denoised = self.combine_denoised(x_out, conds_list, uncond, 1.0)
        else:
            denoised = self.combine_denoised(x_out, conds_list, uncond, cond_scale)
        self.sampler.last_latent = torch.cat([x_out[i:i + 1] for i in first_rows])
        self.step += 1
        return denoised
