"""attn2 discovery, IP-Adapter key numbering and block presets on real UNet classes."""

import pytest
import torch

from style_components.errors import IncompatibleModelError
from style_components.layers import find_attn2, preset_weights
from unets import SD15_DIFFUSERS, SDXL_DIFFUSERS, diffusers_unet, ldm_unet

# facts.md: IP-Adapter key -> ldm block (SD1.5)
SD15_TABLE = {1: "input_blocks.1", 3: "input_blocks.2", 5: "input_blocks.4", 7: "input_blocks.5",
              9: "input_blocks.7", 11: "input_blocks.8", 13: "output_blocks.3", 15: "output_blocks.4",
              17: "output_blocks.5", 19: "output_blocks.6", 21: "output_blocks.7", 23: "output_blocks.8",
              25: "output_blocks.9", 27: "output_blocks.10", 29: "output_blocks.11", 31: "middle_block"}


def processor_keys(unet):
    """IP-Adapter numbers layers by their position in diffusers' attn_processors (attn2 = odd)."""
    return {name.removesuffix(".processor"): i for i, name in enumerate(unet.attn_processors)}


@pytest.mark.parametrize("config,n", [(SD15_DIFFUSERS, 16), (SDXL_DIFFUSERS, 70)])
def test_diffusers_keys_follow_attn_processors_order(config, n):
    unet = diffusers_unet(config, device="meta")
    layers = find_attn2(unet)
    positions = processor_keys(unet)
    assert len(layers) == n
    assert [l.key for l in layers] == [positions[l.name] for l in layers]
    assert sorted(l.key for l in layers) == list(range(1, 2 * n, 2))


def test_ldm_sd15_keys_match_diffusers_and_the_table():
    ldm, dif = ldm_unet(device="meta"), diffusers_unet(SD15_DIFFUSERS, device="meta")
    ldm_layers, dif_layers = find_attn2(ldm), find_attn2(dif)
    # The same layer (block path + depth) must get the same key and the same shape in both hosts.
    dif_by_place = {(l.block, l.depth): l for l in dif_layers}
    positions = processor_keys(dif)
    for layer in ldm_layers:
        twin = dif_by_place[(layer.block, layer.depth)]
        assert layer.key == positions[twin.name]
        assert layer.module.to_v.weight.shape == twin.module.to_v.weight.shape
        assert layer.name.startswith(SD15_TABLE[layer.key] + ".")


def test_ldm_call_order_is_the_forward_order(sd15_ldm):
    called = []
    layers = find_attn2(sd15_ldm)
    names = {id(l.module): l.name for l in layers}
    hooks = [l.module.register_forward_hook(lambda m, a, o: called.append(names[id(m)])) for l in layers]
    try:
        sd15_ldm(torch.randn(1, 4, 8, 8), torch.tensor([10]), context=torch.randn(1, 77, 768))
    finally:
        for h in hooks:
            h.remove()
    assert called == [l.name for l in layers]
    assert [l.order for l in layers] == list(range(16))


def selected(preset, layers):
    return [l.name.split(".transformer_blocks")[0] for l, w in zip(layers, preset_weights(preset, layers)) if w]


def test_sd1_presets_select_the_documented_blocks():
    layers = find_attn2(ldm_unet(device="meta"))
    assert selected("all", layers) == [l.name.split(".transformer_blocks")[0] for l in layers]
    assert selected("style", layers) == [f"output_blocks.{i}.1" for i in (3, 4, 5)]
    assert selected("texture", layers) == ["input_blocks.1.1", "input_blocks.2.1"] + [
        f"output_blocks.{i}.1" for i in (9, 10, 11)]
    assert selected("composition", layers) == ["input_blocks.7.1", "input_blocks.8.1", "middle_block.1"]


def test_sdxl_presets_select_the_documented_blocks():
    layers = find_attn2(diffusers_unet(SDXL_DIFFUSERS, device="meta"))
    assert set(selected("style", layers)) == {"up_blocks.0.attentions.1"}
    assert len(selected("style", layers)) == 10
    assert set(selected("composition", layers)) == {"down_blocks.2.attentions.1", "mid_block.attentions.0"}
    assert set(selected("texture", layers)) == {"down_blocks.1.attentions.0", "down_blocks.1.attentions.1",
                                                "up_blocks.1.attentions.0", "up_blocks.1.attentions.1",
                                                "up_blocks.1.attentions.2"}


def test_unknown_preset_and_foreign_modules_are_refused():
    layers = find_attn2(ldm_unet(device="meta"))
    with pytest.raises(ValueError, match="unknown block preset 'styel'"):
        preset_weights("styel", layers)
    with pytest.raises(IncompatibleModelError, match="no cross-attention layers"):
        find_attn2(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_sgm_style_sdxl_layout_matches_diffusers_sdxl():
    """A1111's SDXL UNet (sgm) names blocks like ldm; its 70 layers must key like diffusers' SDXL."""
    from unets import ldm_sdxl_layout
    sgm_like, dif = find_attn2(ldm_sdxl_layout()), find_attn2(diffusers_unet(SDXL_DIFFUSERS, device="meta"))
    assert len(sgm_like) == 70
    dif_by_place = {(l.block, l.depth): l for l in dif}
    for layer in sgm_like:
        twin = dif_by_place[(layer.block, layer.depth)]
        assert (layer.key, layer.order) == (twin.key, twin.order), layer.name
        assert layer.module.to_v.weight.shape == twin.module.to_v.weight.shape
    assert [l.name.split(".transformer_blocks")[0] for l, w in zip(sgm_like, preset_weights("style", sgm_like)) if w] \
        == ["output_blocks.1.1"] * 10  # up_blocks.0.attentions.1 in diffusers terms
    # and in the order the original author's own SDXL loader numbers them (Forge extension,
    # lib_ipadapter_style/IPAdapterPlus.py: input 4, 5, 7, 8, then output 0-5, then middle;
    # key = 2 * number + 1), written out here so that it does not depend on layers.py's mapping
    # (a review checked the same order on the real sgm package at A1111 v1.10's commit)
    original = [f"input_blocks.{i}.1.transformer_blocks.{d}.attn2" for i in (4, 5, 7, 8) for d in range(2 if i < 6 else 10)]
    original += [f"output_blocks.{i}.1.transformer_blocks.{d}.attn2" for i in range(6) for d in range(10 if i < 3 else 2)]
    original += [f"middle_block.1.transformer_blocks.{d}.attn2" for d in range(10)]
    by_key = sorted(sgm_like, key=lambda l: l.key)
    assert [l.name for l in by_key] == original and [l.key for l in by_key] == list(range(1, 140, 2))


def test_a_wrapper_around_an_ldm_unet_is_refused_naming_the_unet_inside():
    """Found in review: A1111's sd_model.model (a DiffusionWrapper holding .diffusion_model) showed
    only its middle block, and the error called the UNet a "1-LAYER" model."""
    class DiffusionWrapper(torch.nn.Module):
        def __init__(self, unet):
            super().__init__()
            self.diffusion_model = unet

    with pytest.raises(IncompatibleModelError, match=r"pass the UNetModel inside it \(\.diffusion_model"):
        find_attn2(DiffusionWrapper(ldm_unet(device="meta")))
