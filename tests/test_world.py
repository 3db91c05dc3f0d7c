"""The demo world's model file and name encoder, on a freshly built (random) world."""

import pytest
import torch

from style_components import world as world_lib
from style_components.errors import ModelFileError
from style_components.layers import arch, find_attn2


@pytest.fixture(scope="module")
def world():
    torch.manual_seed(0)
    return world_lib.IconWorld(["folder", "open", "user", "trash"], latent_scale=2.5).eval()


def test_the_unet_is_ldm_sd1_class_with_sd1_layer_layout(world):
    from ldm.modules.diffusionmodules.openaimodel import UNetModel
    assert isinstance(world.unet, UNetModel)
    layers = find_attn2(world.unet)
    assert arch(layers) == "sd1" and len(layers) == 16  # so SD1 presets and adapters' layout apply


def test_name_encoder_tokens(world):
    ids = world.text.tokens(["folder-open", "", "user-trash-full"])
    idx = world.text.index
    assert ids[0, :2].tolist() == [idx["folder"], idx["open"]] and ids[0, 2:].eq(world_lib.PAD).all()
    assert ids[1].eq(world_lib.PAD).all()                        # the dropped name: all padding
    assert ids[2, 2].item() == world_lib.UNKNOWN                   # "full" was never seen
    assert world.text.unknown_words("user-trash-full") == ["full"]
    assert world.text(["folder", ""]).shape == (2, world_lib.MAX_WORDS, world.unet_config["context_dim"])


def test_save_load_round_trip_fp16(world, tmp_path):
    path = tmp_path / "w.safetensors"
    world.save(path)
    back = world_lib.IconWorld.load(path)
    assert back.text.vocab == world.text.vocab and back.latent_scale == 2.5
    for k, v in world.state_dict().items():
        torch.testing.assert_close(back.state_dict()[k], v.half().float() if v.is_floating_point() else v)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(back.encode(x), world_lib.IconWorld.load(path).encode(x))


def test_partial_file_loads_its_parts_only(world, tmp_path):
    path = tmp_path / "ae.safetensors"
    world.save(path, parts=("autoencoder",), half=False)
    back = world_lib.IconWorld.load(path, parts=("autoencoder",))
    torch.testing.assert_close(back.autoencoder.state_dict()["decoder.conv_out.weight"],
                               world.autoencoder.state_dict()["decoder.conv_out.weight"])
    with pytest.raises(ModelFileError, match="unet.*missing|missing.*unet"):
        world_lib.IconWorld.load(path)  # a full world is required by default


def test_broken_files_are_named(world, tmp_path):
    from style_components import files
    path = tmp_path / "w.safetensors"
    world.save(path)
    tensors, meta = files.read(path)
    key = "unet.out.2.weight"
    tensors[key] = tensors[key][:1]
    files.write(tmp_path / "bad.safetensors", tensors, meta)
    with pytest.raises(ModelFileError, match="unet.out.2.weight"):
        world_lib.IconWorld.load(tmp_path / "bad.safetensors")
    tensors, meta = files.read(path)
    tensors["extra.weight"] = torch.zeros(1)
    files.write(tmp_path / "extra.safetensors", tensors, meta)
    with pytest.raises(ModelFileError, match="extra.weight"):
        world_lib.IconWorld.load(tmp_path / "extra.safetensors")
    files.write(tmp_path / "other.safetensors", {"x": torch.zeros(1)}, {"format": "style-components-space"})
    with pytest.raises(ModelFileError, match="icon-world"):
        world_lib.IconWorld.load(tmp_path / "other.safetensors")


@pytest.mark.parametrize("change, message", [
    # found in review: each was a traceback, a black image with exit 0, or hundreds of GB asked for
    ({"latent_scale": "abc"}, "'latent_scale' must be a positive number"),
    ({"latent_scale": "NaN"}, "'latent_scale' must be a positive number"),
    ({"latent_scale": "0"}, "'latent_scale' must be a positive number"),
    ({"unet": {"bogus": 1}}, "'unet' is not a config of this version's model"),
    ({"unet": [1, 2]}, "'unet' is not a config of this version's model"),
    ({"unet": {"model_channels": 4096}}, r"shape \[128, 32\] where \[16384, 4096\]"),  # compared on the meta device first
    ({"unet": {"image_size": 16}}, "32 px icons from 16 px latents"),
    ({"vocab": None}, "'vocab' must be a list of words"),
    ({"scheduler": {"prediction_type": "epsilon"}}, "'scheduler' differs"),
    # found by mutation, unchecked until then: a type, a list's length, the icon size, infinity
    ({"unet": {"image_size": 8.0}}, "'unet' is not a config of this version's model"),
    ({"autoencoder": {"block_out_channels": [32, 64]}}, "'autoencoder' is not a config of this version's model"),
    ({"autoencoder": {"sample_size": 64}}, "64 px icons from 8 px latents"),
    ({"latent_scale": "inf"}, "'latent_scale' must be a positive number"),
])
def test_metadata_that_would_build_another_model_is_refused(world, tmp_path, change, message):
    import json
    from style_components import files
    world.save(tmp_path / "w.safetensors")
    tensors, meta = files.read(tmp_path / "w.safetensors")
    for key, value in change.items():
        if value is None:
            meta.pop(key)
        elif isinstance(value, dict) and key in ("unet", "autoencoder", "scheduler"):
            old = json.loads(meta[key])
            meta[key] = json.dumps({**old, **value} if "bogus" not in value else value)
        else:
            meta[key] = value if isinstance(value, str) else json.dumps(value)
    files.write(tmp_path / "bad.safetensors", tensors, meta)
    with pytest.raises(ModelFileError, match=message):
        world_lib.IconWorld.load(tmp_path / "bad.safetensors")


def test_pixels_round_trip():
    import numpy as np
    images = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    x = world_lib.to_pixels(images)
    assert x.shape == (3, 3, 32, 32) and -1 <= x.min() and x.max() <= 1
    same = world_lib.to_uint8(world_lib.to_pixels(images, 64))
    assert (same.astype(int) - images).__abs__().max() <= 1
