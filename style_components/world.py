"""The demo world: a tiny text-to-image latent diffusion model of icons, built like SD1.

Its parts are SD's, small: an `AutoencoderKL` (diffusers) compresses 32 px icons to 8x8x4
latents; the UNet is ldm's `UNetModel` (the class A1111 runs for SD1) with SD1's layout
(4 levels, attention on the first three, 2 res blocks: 16 attn2 layers), so the core's SD1
code paths and layer presets apply unchanged; a `NameEncoder` stands in for CLIP: a learned
embedding per word of the icon name ("folder-open" -> folder, open). One safetensors file
holds all three (`icon_world.safetensors`), with their configs in the metadata.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from . import files
from .errors import ModelFileError

FORMAT = "style-components-icon-world"
IMAGE_SIZE = 32        # px of generated icons
MAX_WORDS = 6          # name tokens (longer names are cut)
PAD, UNKNOWN = 0, 1    # token ids; an empty name (caption dropout) is all PAD

UNET = dict(image_size=8, in_channels=4, out_channels=4, model_channels=32, attention_resolutions=[1, 2, 4],
            num_res_blocks=2, channel_mult=[1, 2, 2, 2], num_heads=4, use_spatial_transformer=True,
            transformer_depth=1, context_dim=64, legacy=False)
AUTOENCODER = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 3,
                   up_block_types=["UpDecoderBlock2D"] * 3, block_out_channels=[32, 64, 64], layers_per_block=1,
                   latent_channels=4, norm_num_groups=16, sample_size=IMAGE_SIZE, mid_block_add_attention=False)
# diffusers scheduler config the base was trained with (v-prediction, cosine betas)
SCHEDULER = dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction")


def words(name: str) -> list[str]:
    return [w for w in name.lower().replace("_", "-").split("-") if w][:MAX_WORDS]


class NameEncoder(nn.Module):
    """Icon names -> context [B, MAX_WORDS, dim]: word + position embeddings, LayerNorm."""

    def __init__(self, vocab: Sequence[str], dim: int):
        super().__init__()
        self.vocab = list(vocab)
        self.index = {w: i + 2 for i, w in enumerate(self.vocab)}
        self.word = nn.Embedding(len(self.vocab) + 2, dim)
        self.position = nn.Parameter(torch.zeros(MAX_WORDS, dim))
        self.norm = nn.LayerNorm(dim)

    def tokens(self, names: Sequence[str]) -> torch.Tensor:
        ids = torch.full((len(names), MAX_WORDS), PAD, dtype=torch.long)
        for i, name in enumerate(names):
            for j, w in enumerate(words(name)):
                ids[i, j] = self.index.get(w, UNKNOWN)
        return ids

    def unknown_words(self, name: str) -> list[str]:
        return [w for w in words(name) if w not in self.index]

    def forward(self, names: Sequence[str]) -> torch.Tensor:
        ids = self.tokens(names).to(self.position.device)
        return self.norm(self.word(ids) + self.position)


def build_unet(config: dict | None = None) -> nn.Module:
    from ldm.modules.diffusionmodules.openaimodel import UNetModel
    return UNetModel(**(config or UNET), use_checkpoint=False)


def build_autoencoder(config: dict | None = None) -> nn.Module:
    from diffusers import AutoencoderKL
    return AutoencoderKL(**(config or AUTOENCODER))


def to_pixels(images: np.ndarray, size: int = IMAGE_SIZE) -> torch.Tensor:
    """uint8 [N, S, S, 3] icons -> float [N, 3, size, size] in [-1, 1] (area-averaged down)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
    if x.shape[-1] != size:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="area")
    return x


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """float [N, 3, S, S] in [-1, 1] -> uint8 [N, S, S, 3]."""
    return ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


class IconWorld(nn.Module):
    """Autoencoder + UNet + name encoder, and the latent scale the UNet was trained with."""

    def __init__(self, vocab: Sequence[str], latent_scale: float = 1.0, unet_config: dict | None = None,
                 autoencoder_config: dict | None = None):
        super().__init__()
        self.unet_config, self.autoencoder_config = dict(unet_config or UNET), dict(autoencoder_config or AUTOENCODER)
        self.autoencoder = build_autoencoder(self.autoencoder_config)
        self.unet = build_unet(self.unet_config)
        self.text = NameEncoder(vocab, self.unet_config["context_dim"])
        self.latent_scale = float(latent_scale)

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """[-1, 1] pixels -> scaled latents (the posterior mean: deterministic)."""
        return self.autoencoder.encode(pixels).latent_dist.mode() * self.latent_scale

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.decode(latents / self.latent_scale).sample.clamp(-1, 1)

    def save(self, path, parts: Sequence[str] = ("autoencoder", "unet", "text"), half: bool = True, **metadata) -> None:
        state = {k: (v.half() if half and v.is_floating_point() else v) for k, v in self.state_dict().items()
                 if k.split(".", 1)[0] in parts}
        # the model's own fields last: metadata carried over from a loaded file (`**world.meta`) cannot override them
        files.write(path, state, {**metadata, "format": FORMAT, "vocab": self.text.vocab,
                                  "latent_scale": self.latent_scale, "unet": self.unet_config,
                                  "autoencoder": self.autoencoder_config, "scheduler": SCHEDULER, "parts": list(parts)})

    @classmethod
    def load(cls, path, parts: Sequence[str] = ("autoencoder", "unet", "text")) -> "IconWorld":
        """Load a world file; `parts` it must contain (an autoencoder-only file has just that).

        The metadata is checked first, and the model built on the meta device and compared with
        the file's tensors before a byte is allocated: a config from the file could ask for any size."""
        tensors, meta = files.read(path, FORMAT)
        args = _checked_meta(path, meta)
        try:
            with torch.device("meta"):
                skeleton = cls(*args)
        except (TypeError, ValueError, KeyError, AssertionError, ZeroDivisionError) as e:
            raise ModelFileError(path, f"its 'unet' and 'autoencoder' configs do not build a model ({e})") from None
        expected = {k: v for k, v in skeleton.state_dict().items() if k.split(".", 1)[0] in parts}
        for key, value in expected.items():
            files.require(path, tensors, key, tuple(value.shape), floating=value.is_floating_point())
        extra = sorted(set(tensors) - set(skeleton.state_dict()))
        if extra:
            raise ModelFileError(path, "unexpected tensor (not part of this model)", extra[0])
        world = cls(*args)
        world.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in tensors.items()},
                              strict=False)
        world.meta = meta
        return world.eval().requires_grad_(False)


def _checked_meta(path, meta: dict) -> tuple:
    """(vocab, latent_scale, unet config, autoencoder config) from a world file's metadata, each
    checked: the configs have this version's keys, with values of the defaults' types; the
    sampler is the one `generate` draws with."""
    import math
    vocab = files.json_field(path, meta, "vocab")
    if not isinstance(vocab, list) or not all(isinstance(w, str) for w in vocab):
        raise ModelFileError(path, "metadata entry 'vocab' must be a list of words")
    try:
        scale = float(meta.get("latent_scale", "1"))
    except ValueError:
        scale = math.nan
    if not (math.isfinite(scale) and scale > 0):
        raise ModelFileError(path, f"metadata entry 'latent_scale' must be a positive number, not {meta.get('latent_scale')!r}")
    configs = []
    for entry, default in (("unet", UNET), ("autoencoder", AUTOENCODER)):
        config = files.json_field(path, meta, entry)
        if not isinstance(config, dict) or set(config) != set(default) or any(
                type(config[k]) is not type(v) or (type(v) is list and len(config[k]) != len(v)) for k, v in default.items()):
            raise ModelFileError(path, f"metadata entry {entry!r} is not a config of this version's model "
                                       f"(keys {sorted(default)}, of the defaults' types)")
        configs.append(config)
    unet, autoencoder = configs
    latent = IMAGE_SIZE // 2 ** (len(autoencoder["block_out_channels"]) - 1)
    if autoencoder["sample_size"] != IMAGE_SIZE or unet["image_size"] != latent:
        raise ModelFileError(path, f"its configs draw {autoencoder['sample_size']} px icons from "
                                   f"{unet['image_size']} px latents; this version's world is {IMAGE_SIZE} px from {latent}")
    if "scheduler" in meta and files.json_field(path, meta, "scheduler") != SCHEDULER:
        raise ModelFileError(path, f"metadata entry 'scheduler' differs from the sampler this version draws with ({SCHEDULER})")
    return vocab, scale, *configs


def find(path=None) -> Path:
    """The shipped demo world, unless `path` names another."""
    return Path(path) if path else Path(__file__).resolve().parent.parent / "models" / "demo" / "icon_world.safetensors"
