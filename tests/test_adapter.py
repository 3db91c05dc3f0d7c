"""Adapter files: shapes inferred from the file, tokens from inputs, clear errors for broken files."""

import pytest
import torch
from safetensors.torch import save_file

from style_components.adapter import Adapter
from style_components.errors import ModelFileError
from unets import SD15_DIFFUSERS, SDXL_DIFFUSERS, diffusers_unet
from factories import adapter_for

SD1_INNER = [320, 320, 640, 640, 1280, 1280, 1280, 1280, 1280, 640, 640, 640, 320, 320, 320, 1280]


def save_raw(adapter, path, drop=(), add=None, change=None):
    """Write an adapter's tensors as a bare safetensors file (like the original release: no metadata)."""
    tensors = {k: v.half() for k, v in adapter.state_dict().items() if k not in drop}
    tensors.update(add or {})
    tensors.update(change or {})
    save_file(tensors, str(path))
    return path


@pytest.mark.parametrize("d_in,hidden,tokens,cross", [(768, 1536, 1, 768), (30, None, 1, 768), (30, 60, 4, 768),
                                                      (768, 1536, 1, 2048)])
def test_everything_is_inferred_from_keys_and_shapes(tmp_path, d_in, hidden, tokens, cross):
    inner = SD1_INNER if cross == 768 else [640] * 4 + [1280] * 66
    original = Adapter(d_in, cross, inner, tokens=tokens, hidden=hidden, with_keys=tokens > 1)
    loaded = Adapter.load(save_raw(original, tmp_path / "a.safetensors"))
    assert (loaded.d_in, loaded.cross_dim, loaded.tokens, loaded.inner_dims, loaded.with_keys) == (
        d_in, cross, tokens, inner, tokens > 1)
    assert loaded.arch == ("sd1" if cross == 768 else "sdxl")
    assert type(loaded.image_proj.proj).__name__ == ("Linear" if hidden is None else "Sequential")
    x = torch.randn(3, d_in)
    assert loaded(x).shape == (3, tokens, cross)
    torch.testing.assert_close(loaded(x), original.half().float()(x))  # file holds fp16


def test_original_release_mlp_computes_layernorm_of_mlp(tmp_path):
    adapter = adapter_for(diffusers_unet(SD15_DIFFUSERS, device="meta"), d_in=768, hidden=1536)
    x = torch.randn(2, 768)
    p = adapter.image_proj
    h = torch.nn.functional.gelu(x @ p.proj[0].weight.T + p.proj[0].bias) @ p.proj[2].weight.T + p.proj[2].bias
    want = torch.nn.functional.layer_norm(h.reshape(2, 1, 768), (768,), p.norm.weight, p.norm.bias)
    torch.testing.assert_close(adapter(x), want)
    # "no style" is the projection of zeros, not of the mean style
    torch.testing.assert_close(adapter(adapter.null_input()), adapter(torch.zeros(1, 768)))


def test_save_and_load_round_trip_keeps_metadata(tmp_path):
    adapter = adapter_for(diffusers_unet(SD15_DIFFUSERS, device="meta"))
    adapter.save(tmp_path / "mine.safetensors", space="demo-space")
    loaded = Adapter.load(tmp_path / "mine.safetensors")
    assert loaded.meta["space"] == "demo-space" and loaded.meta["format"] == "style-components-adapter"
    for k, v in adapter.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def sd1(**kw):
    return Adapter(768, 768, SD1_INNER, hidden=1536, **kw)


@pytest.mark.parametrize("edit,message,key", [
    (dict(drop=["ip_adapter.31.to_v_ip.weight"]), "cross-attention layers; SD1 adapters have 16", None),
    (dict(drop=["ip_adapter.7.to_v_ip.weight"]), "missing", "ip_adapter.7.to_v_ip.weight"),
    (dict(drop=["image_proj.norm.bias"]), "missing", "image_proj.norm.bias"),
    (dict(drop=["image_proj.proj.0.bias"]), "missing", "image_proj.proj.0.bias"),
    (dict(add={"image_proj.extra": torch.zeros(2)}), "unexpected key", "image_proj.extra"),
    (dict(change={"ip_adapter.5.to_v_ip.weight": torch.zeros(640, 1024)}), r"shape \[640, 1024\]",
     "ip_adapter.5.to_v_ip.weight"),
    (dict(change={"image_proj.proj.2.weight": torch.zeros(700, 1536)}), "not a multiple of the token size",
     "image_proj.proj.2.weight"),
    (dict(change={"image_proj.norm.weight": torch.zeros(768, dtype=torch.int64)}), "dtype torch.int64",
     "image_proj.norm.weight"),
    # found in review: a zero-sized norm divided by zero, a zero-sized input loaded
    (dict(change={"image_proj.norm.weight": torch.zeros(0)}), r"shape \[0\] is empty", "image_proj.norm.weight"),
    (dict(change={"image_proj.proj.0.weight": torch.zeros(1536, 0)}), r"shape \[1536, 0\] is empty",
     "image_proj.proj.0.weight"),
])
def test_broken_files_name_the_problem(tmp_path, edit, message, key):
    path = save_raw(sd1(), tmp_path / "broken.safetensors", **edit)
    with pytest.raises(ModelFileError, match=message) as info:
        Adapter.load(path)
    assert info.value.key == key
    assert str(path) in str(info.value)


@pytest.mark.parametrize("edit,message", [
    (dict(drop=["ip_adapter.3.to_k_ip.weight"]), "missing"),
    (dict(change={"ip_adapter.3.to_k_ip.weight": torch.zeros(320, 700)}), r"shape \[320, 700\]"),
    (dict(change={"ip_adapter.3.to_k_ip.weight": torch.full((320, 768), float("nan"))}), "NaN"),
    (dict(change={"ip_adapter.3.to_k_ip.weight": torch.zeros(320, 768, dtype=torch.int32)}), "dtype torch.int32"),
])
def test_broken_keys_of_a_multi_token_file_name_the_problem(tmp_path, edit, message):
    """Found by mutation: the to_k_ip checks were untested (a wrong key loaded as NaN or as a raw
    load_state_dict error)."""
    path = save_raw(Adapter(768, 768, SD1_INNER, tokens=4, with_keys=True), tmp_path / "k.safetensors", **edit)
    with pytest.raises(ModelFileError, match=message) as info:
        Adapter.load(path)
    assert info.value.key == "ip_adapter.3.to_k_ip.weight"


def test_multi_token_file_without_keys_is_refused(tmp_path):
    path = save_raw(Adapter(768, 768, SD1_INNER, tokens=4, with_keys=True), tmp_path / "a.safetensors",
                    drop=[f"ip_adapter.{n}.to_k_ip.weight" for n in range(1, 32, 2)])
    with pytest.raises(ModelFileError, match="4 tokens need keys"):
        Adapter.load(path)


def test_unreadable_and_missing_files(tmp_path):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01not a safetensors file")
    with pytest.raises(ModelFileError, match="not a readable safetensors file"):
        Adapter.load(garbage)
    with pytest.raises(ModelFileError, match="file not found"):
        Adapter.load(tmp_path / "nope.safetensors")
    truncated = tmp_path / "truncated.safetensors"
    save_raw(sd1(), truncated)
    truncated.write_bytes(truncated.read_bytes()[:-1000])
    with pytest.raises(ModelFileError, match="not a readable safetensors file"):
        Adapter.load(truncated)


def test_sdxl_layout_adapter_fits_sdxl_unet():
    unet = diffusers_unet(SDXL_DIFFUSERS, device="meta")
    adapter = adapter_for(unet, d_in=768)
    assert adapter.arch == "sdxl" and adapter.cross_dim == 2048 and adapter.n_layers == 70
