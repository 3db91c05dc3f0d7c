"""Tiny random diffusers pipelines (StableDiffusionPipeline, StableDiffusionXLPipeline) built in
memory with the real classes: the UNets of tests/unets.py, a small VAE, CLIP text encoders and a
character-level CLIP tokenizer (nothing downloaded)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from unets import SMALL_SD1_DIFFUSERS, SMALL_SDXL_DIFFUSERS, real_weights


def tokenizer(folder: Path):
    from transformers import CLIPTokenizer
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=16,
                         pad_token="<|endoftext|>")


def text_encoder(cls, vocab: int, hidden: int, projection: int | None = None):
    from transformers import CLIPTextConfig
    extra = {"projection_dim": projection} if projection else {}
    return cls(CLIPTextConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=2, max_position_embeddings=16, bos_token_id=0, eos_token_id=1,
                              pad_token_id=1, **extra)).eval()


def vae():
    from diffusers import AutoencoderKL
    return AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=8, latent_channels=4,
                         sample_size=32).eval()


SCHEDULER = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)


def sd1(folder: Path):
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel
    torch.manual_seed(0)
    tok = tokenizer(folder)
    pipe = StableDiffusionPipeline(
        vae=vae(), text_encoder=text_encoder(CLIPTextModel, len(tok), 64), tokenizer=tok,
        unet=real_weights(UNet2DConditionModel(**SMALL_SD1_DIFFUSERS)),
        scheduler=DDIMScheduler(clip_sample=False, steps_offset=1, **SCHEDULER), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sdxl(folder: Path):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection
    torch.manual_seed(0)
    tok = tokenizer(folder)
    # text_time conditioning as SDXL's: two encoders of 32 (context 64), pooled 32, six time ids
    config = dict(SMALL_SDXL_DIFFUSERS, addition_embed_type="text_time", addition_time_embed_dim=8,
                  projection_class_embeddings_input_dim=32 + 6 * 8)
    pipe = StableDiffusionXLPipeline(
        vae=vae(), text_encoder=text_encoder(CLIPTextModel, len(tok), 32),
        text_encoder_2=text_encoder(CLIPTextModelWithProjection, len(tok), 32, projection=32),
        tokenizer=tok, tokenizer_2=tok, unet=real_weights(UNet2DConditionModel(**config)),
        scheduler=EulerDiscreteScheduler(**SCHEDULER))
    pipe.set_progress_bar_config(disable=True)
    return pipe
