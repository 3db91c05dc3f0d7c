"""The adapter trainer's SD1.x path: a diffusers model folder and a folder of captioned images.

    style-components train-adapter IMAGES_DIR RUN_DIR --sd-model SD15_DIR --extractor E --space S

IMAGES_DIR holds images with an optional caption beside each (`cat.png` + `cat.txt`, the
kohya-ss convention; no .txt = empty caption). SD15_DIR is a diffusers folder (`unet/`,
`vae/`, `text_encoder/`, `tokenizer/`, `scheduler/`), e.g. one written by diffusers'
`convert_original_stable_diffusion_to_diffusers.py` from an A1111 checkpoint. Meant for a
GPU; the same loss, hooks and adapter file as the demo world's trainer.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import files
from ..errors import UsageError
from .dataset import artist_of, image_files

PARTS = ("unet", "vae", "text_encoder")  # the frozen models a run depends on


def captioned_images(folder) -> tuple[list[Path], list[str]]:
    """Image paths (sorted) and their captions; hidden files and folders (.ipynb_checkpoints, ...) are skipped."""
    folder = Path(folder)
    paths = image_files(folder)
    captions = []
    for p in paths:
        txt = p.with_suffix(".txt")
        try:
            captions.append(txt.read_text(encoding="utf-8-sig").strip() if txt.is_file() else "")  # -sig: Windows BOM
        except UnicodeDecodeError as e:
            raise UsageError(f"{txt}: not UTF-8 text ({e.reason} at byte {e.start}); save the caption as UTF-8") from None
    print(f"{folder}: {len(paths)} images, {sum(map(bool, captions))} with a caption, "
          f"{len({p.parent for p in paths})} artist folders")
    return paths, captions


def model_identity(folder) -> str:
    """A hash of the frozen models' files: a resume must find the same models, wherever the folder is."""
    hashes = [files.short_hash(p) for part in PARTS for p in sorted((Path(folder) / part).iterdir()) if p.is_file()]
    return hashlib.sha256(" ".join(hashes).encode()).hexdigest()[:8]


def _variant(folder: Path) -> str | None:
    """"fp16" for a model folder holding only fp16-variant weights (model.fp16.safetensors, a
    common download layout), which diffusers and transformers load only when asked for it."""
    names = [p.name for p in folder.iterdir()]
    plain = any(n.endswith((".safetensors", ".bin")) and ".fp16." not in n for n in names)
    return "fp16" if not plain and any(".fp16." in n for n in names) else None


def artist_labels(paths, root) -> np.ndarray:
    """An artist id per image: its sub-folder of `root` (root/<artist>/..., as `dataset --images`
    reads them); the images in `root` itself are one group."""
    return np.unique([artist_of(p, root) or "" for p in paths], return_inverse=True)[1]


def load_pixels(path, resolution: int) -> torch.Tensor:
    """Image -> [3, R, R] in [-1, 1]: short side to R, centre crop (the extractor's to_rgb first)."""

    from ..extract import cover_and_crop, load_image
    image = cover_and_crop(load_image(path), resolution, resolution)
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float() / 127.5 - 1


class SD1Denoiser(nn.Module):
    """A diffusers SD1.x model: frozen VAE and text encoder; forward(latents, t, names) -> UNet output."""

    def __init__(self, folder, clip_skip: int = 1):
        super().__init__()
        if clip_skip < 1:
            raise UsageError(f"--clip-skip {clip_skip}: 1 is the last CLIP layer, 2 the one before (NAI-style anime models)")
        self.clip_skip = clip_skip
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        folder = Path(folder)
        missing = [part for part in (*PARTS, "tokenizer", "scheduler") if not (folder / part).is_dir()]
        if missing:  # (checked here: diffusers would take a mistyped path for a model hub name)
            raise UsageError(f"{folder}: not a diffusers model folder (no {', '.join(missing)})")
        load = lambda cls, part: cls.from_pretrained(folder / part, variant=_variant(folder / part))  # noqa: E731
        # float32 whatever the folder holds (many are saved in fp16, and transformers 5 loads them
        # so by default): the trainer casts the frozen parts itself when asked for mixed precision
        self.unet = load(UNet2DConditionModel, "unet").float()
        self.vae = load(AutoencoderKL, "vae").float().requires_grad_(False).eval()
        self.text_encoder = load(CLIPTextModel, "text_encoder").float().requires_grad_(False).eval()
        self.tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
        layers = self.text_encoder.config.num_hidden_layers
        if clip_skip > layers + 1:  # layers + 1: the token embeddings themselves
            raise UsageError(f"--clip-skip {clip_skip}: this text encoder has {layers} layers")
        self.noise_scheduler = DDPMScheduler.from_pretrained(folder / "scheduler")
        self.unet.requires_grad_(False)

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """[B, 3, R, R] pixels in [-1, 1] (moved to the VAE's device and dtype) -> float32 latents,
        a sample of the VAE's posterior with noise from `rng` (the step's: resumes draw the same)."""
        from .loop import gaussian
        posterior = self.vae.encode(pixels.to(self.vae.device, self.vae.dtype)).latent_dist
        latents = posterior.mean + posterior.std * gaussian(rng, posterior.mean)
        return (latents * self.vae.config.scaling_factor).float()

    @torch.no_grad()
    def text_condition(self, names) -> torch.Tensor:
        """Captions -> [B, 77, 768] CLIP text states, the UNet's cross-attention context."""
        ids = self.tokenizer(list(names), padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids.to(self.text_encoder.device)
        if self.clip_skip == 1:
            return self.text_encoder(ids)[0]
        # as A1111's "Clip skip" setting: an earlier layer's states, through the final LayerNorm
        hidden = self.text_encoder(ids, output_hidden_states=True).hidden_states[-self.clip_skip]
        text_model = getattr(self.text_encoder, "text_model", self.text_encoder)  # transformers 4 / 5
        return text_model.final_layer_norm(hidden)

    def forward(self, latents, t, names):
        return self.unet(latents, t, encoder_hidden_states=self.text_condition(names)).sample
