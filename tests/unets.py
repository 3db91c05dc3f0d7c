"""Real UNet classes with random weights, as the tests' stand-ins for checkpoints.

ldm's `UNetModel` (PyPI stable-diffusion-sdkit, A1111's SD1 class) zero-initialises its
output convolutions, so a fresh one outputs exactly 0 and every hook would "change
nothing". `real_weights` re-initialises those layers.
"""

from __future__ import annotations

import torch
from torch import nn

SD15_LDM = dict(image_size=32, in_channels=4, out_channels=4, model_channels=320, attention_resolutions=[4, 2, 1],
                num_res_blocks=2, channel_mult=[1, 2, 4, 4], num_heads=8, use_spatial_transformer=True,
                transformer_depth=1, context_dim=768, use_checkpoint=False, legacy=False)
# diffusers' defaults are SD1's block layout; the full SD1.5 widths are given explicitly
SD15_DIFFUSERS = dict(cross_attention_dim=768, block_out_channels=(320, 640, 1280, 1280), attention_head_dim=8)
# Same block structure as SD1.5 (16 attn2), narrow channels: fast forwards on CPU
SMALL_SD1_DIFFUSERS = dict(cross_attention_dim=64, block_out_channels=(32, 32, 64, 64), attention_head_dim=8,
                           norm_num_groups=8, sample_size=16)
# SDXL's layout (70 attn2: depth 2 at level 1, 10 at level 2, no attention at level 0), narrow
SMALL_SDXL_DIFFUSERS = dict(
    cross_attention_dim=64, block_out_channels=(32, 32, 64), attention_head_dim=(2, 4, 8), norm_num_groups=8,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), use_linear_projection=True, sample_size=16)
SDXL_DIFFUSERS = dict(
    cross_attention_dim=2048, block_out_channels=(320, 640, 1280), attention_head_dim=(5, 10, 20),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), use_linear_projection=True, addition_embed_type="text_time",
    addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816, sample_size=128)


def real_weights(model: nn.Module, seed: int = 0) -> nn.Module:
    """Re-initialise layers that ldm zero-initialises, so the UNet's output depends on every block."""
    torch.manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv1d, nn.Linear)) and not m.weight.is_meta and not m.weight.any():
            m.reset_parameters()
    return model.eval().requires_grad_(False)


def ldm_unet(device: str | None = None, **overrides) -> nn.Module:
    from ldm.modules.diffusionmodules.openaimodel import UNetModel
    torch.manual_seed(0)
    with torch.device(device or "cpu"):
        unet = UNetModel(**{**SD15_LDM, **overrides})
    return unet if device == "meta" else real_weights(unet)


def diffusers_unet(config: dict, device: str | None = None) -> nn.Module:
    from diffusers import UNet2DConditionModel
    torch.manual_seed(0)
    with torch.device(device or "cpu"):
        unet = UNet2DConditionModel(**config)
    return unet if device == "meta" else real_weights(unet)


def ldm_sdxl_layout(device: str = "meta") -> nn.Module:
    """An ldm UNetModel with SDXL's block layout, standing in for sgm's (not on PyPI; same names).

    ldm takes one transformer depth for all levels; SDXL has 2 at level 1 and 10 at level 2
    and in the middle, so the transformer block lists are lengthened after construction.
    """
    import copy

    from ldm.modules.attention import SpatialTransformer
    from ldm.modules.diffusionmodules.openaimodel import UNetModel
    with torch.device(device):
        unet = UNetModel(image_size=128, in_channels=4, out_channels=4, model_channels=320,
                         attention_resolutions=[2, 4], num_res_blocks=2, channel_mult=[1, 2, 4], num_head_channels=64,
                         use_spatial_transformer=True, use_linear_in_transformer=True, transformer_depth=1,
                         context_dim=2048, use_checkpoint=False, legacy=False)
    for module in unet.modules():
        if isinstance(module, SpatialTransformer):
            depth = 2 if module.transformer_blocks[0].attn2.to_v.weight.shape[0] == 640 else 10
            first = module.transformer_blocks[0]
            module.transformer_blocks.extend(copy.deepcopy(first) for _ in range(depth - 1))
    return unet
