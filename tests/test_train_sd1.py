"""The adapter trainer's SD1.x path (a diffusers folder + captioned images) on a tiny random
SD1-shaped model written with the real diffusers/transformers classes' save_pretrained."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from style_components import cli, models
from style_components.adapter import Adapter
from style_components.layers import find_attn2
from style_components.train import sd1
from icon_fixture import own_accelerator_state
from unets import SMALL_SD1_DIFFUSERS

transformers = pytest.importorskip("transformers")


def tiny_sd1(folder, dtype=torch.float32, variant=None):
    """unet/ vae/ text_encoder/ tokenizer/ scheduler/ as diffusers' SD1 pipelines lay them out
    (dtype: the weights' dtype on disk; many shared SD1 folders hold fp16; variant "fp16": as
    model hub downloads name them, model.fp16.safetensors)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    UNet2DConditionModel(**SMALL_SD1_DIFFUSERS).to(dtype).save_pretrained(folder / "unet", variant=variant)
    AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=8, latent_channels=4,
                  sample_size=32).to(dtype).save_pretrained(folder / "vae", variant=variant)
    # a character-level CLIP BPE vocabulary (no merges): enough to tokenise any lowercase caption
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in letters:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    (folder / "tokenizer").mkdir()
    (folder / "tokenizer" / "vocab.json").write_text(json.dumps(vocab))
    (folder / "tokenizer" / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(folder / "tokenizer" / "vocab.json"), str(folder / "tokenizer" / "merges.txt"),
                  model_max_length=16, pad_token="<|endoftext|>").save_pretrained(folder / "tokenizer")
    CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=64, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, max_position_embeddings=16, bos_token_id=0, eos_token_id=1,
                                 pad_token_id=1)).to(dtype).save_pretrained(folder / "text_encoder", variant=variant)
    DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).save_pretrained(
        folder / "scheduler")


def style_models(data_dir, run):
    """A 1-step extractor and its K=3 space in `run` (extractor.safetensors, s.safetensors)."""
    assert cli.main(["train", str(data_dir), str(run), "--steps", "1", "--eval-every", "0", "--width", "8",
                     "--dim", "16", "--batch-themes", "2", "--per-theme", "2", "--no-progress", "--cpu"]) == 0
    assert cli.main(["pca", str(data_dir), str(run / "extractor.safetensors"), str(run / "s.safetensors"),
                     "--k", "3"]) == 0
    return run


def test_captions_beside_images(tmp_path):
    Image.new("RGB", (40, 30), "red").save(tmp_path / "a.png")
    Image.new("RGB", (30, 40), "blue").save(tmp_path / "b.jpg")
    (tmp_path / "a.txt").write_text("a red square\n")
    Image.new("RGB", (30, 30), "green").save(tmp_path / "c.png")
    (tmp_path / "c.txt").write_bytes("\ufeff1girl, solo\r\n".encode("utf-8"))  # as Windows Notepad saves it
    paths, captions = sd1.captioned_images(tmp_path)
    assert [p.name for p in paths] == ["a.png", "b.jpg", "c.png"] and captions == ["a red square", "", "1girl, solo"]
    x = sd1.load_pixels(paths[0], 16)
    assert x.shape == (3, 16, 16) and torch.allclose(x[0], torch.ones(16, 16), atol=1e-2)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        sd1.captioned_images(tmp_path / "empty")
    # found in review: notebook checkpoints were trained on twice (and became an artist of their own)
    (tmp_path / ".ipynb_checkpoints").mkdir()
    Image.new("RGB", (30, 30), "red").save(tmp_path / ".ipynb_checkpoints" / "a-checkpoint.png")
    Image.new("RGB", (30, 30), "red").save(tmp_path / "d.tif")
    assert [p.name for p in sd1.captioned_images(tmp_path)[0]] == ["a.png", "b.jpg", "c.png", "d.tif"]
    (tmp_path / "a.txt").write_bytes("caf\xe9".encode("cp1252"))  # a caption saved in a Windows code page
    with pytest.raises(ValueError, match=r"a\.txt: not UTF-8 text"):
        sd1.captioned_images(tmp_path)


def test_clip_skip_takes_an_earlier_layer_through_the_final_norm(tmp_path):
    """A1111's Clip skip 2 (NAI-style anime models): the states one layer before the last, after
    the final LayerNorm (modules/sd_hijack_clip.py, encode_with_transformers)."""
    tiny_sd1(tmp_path)
    last, skip2 = sd1.SD1Denoiser(tmp_path), sd1.SD1Denoiser(tmp_path, clip_skip=2)
    names = ["a red square", ""]
    ids = last.tokenizer(names, padding="max_length", max_length=16, return_tensors="pt").input_ids
    text = getattr(last.text_encoder, "text_model", last.text_encoder)  # transformers 4 / 5
    with torch.no_grad():  # the tiny encoder has one layer: the state before it is the embeddings'
        want = text.final_layer_norm(text.embeddings(input_ids=ids))
    torch.testing.assert_close(skip2.text_condition(names), want)
    assert not torch.allclose(last.text_condition(names), want, atol=1e-3)
    with pytest.raises(ValueError, match="clip-skip 0"):
        sd1.SD1Denoiser(tmp_path, clip_skip=0)
    with pytest.raises(ValueError, match="clip-skip 3: this text encoder has 1 layers"):
        sd1.SD1Denoiser(tmp_path, clip_skip=3)


def test_train_adapter_on_an_sd1_folder(tmp_path, data_dir):
    model = tmp_path / "sd15"
    tiny_sd1(model)
    images = tmp_path / "images"
    images.mkdir()
    from style_components.train import dataset
    data = dataset.load(data_dir)
    for i in range(6):  # two artists, a sub-folder each
        folder = images / f"artist{i % 2}"
        folder.mkdir(exist_ok=True)
        Image.fromarray(data.images[i]).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(data.names[i].replace("-", " "))
    paths, _ = sd1.captioned_images(images)
    assert list(sd1.artist_labels(paths, images)) == [0, 0, 0, 1, 1, 1]
    run = style_models(data_dir, tmp_path / "enc")
    out = tmp_path / "adapter"
    assert cli.main(["train-adapter", str(images), str(out), "--sd-model", str(model), "--extractor",
                     str(run / "extractor.safetensors"), "--space", str(run / "s.safetensors"), "--resolution", "32",
                     "--steps", "2", "--batch", "2", "--lr", "1e-3", "--reference", "group", "--no-progress",
                     "--cpu"]) == 0
    adapter = Adapter.load(out / "adapter.safetensors")
    assert adapter.arch == "sd1" and adapter.d_in == 3 and adapter.cross_dim == 64
    assert np.isfinite(json.loads((out / "history.json").read_text())["loss"]).all()
    # the file says its base is SD1, so the WebUI lists it (it hides adapters made for the icon world)
    assert adapter.meta["base"] == "sd1" and adapter.meta["steps"] == "2"
    found = models.scan([out])
    assert [info.adapter for info in found.values()] == [out / "adapter.safetensors"]
    # to_v_ip started as the UNet's to_v (IP-Adapter's init; a random start would differ by ~0.1) and
    # training moved it, in every layer
    # (2 AdamW steps at lr 1e-3 move the weights ~1.3e-3 on average; the fp16 file rounds by at most ~6e-5)
    from diffusers import UNet2DConditionModel
    unet = UNet2DConditionModel.from_pretrained(model / "unet")
    for layer in find_attn2(unet):
        start = layer.module.to_v.weight.detach().half().float()
        moved = (adapter.layer(layer.key).to_v_ip.weight - start).abs()
        assert 5e-4 < moved.max() < 1e-2 and moved.mean() > 2.5e-4, (layer.name, moved.max(), moved.mean())
    # the checkpoint holds what trains, not the frozen SD model (4 GB for SD1.5 at every save) ...
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["model"] and all(k.startswith("adapter.") for k in state["model"])
    # ... and a longer run resumes from it, with the base read again from --sd-model
    assert cli.main(["train-adapter", str(images), str(out), "--sd-model", str(model), "--extractor",
                     str(run / "extractor.safetensors"), "--space", str(run / "s.safetensors"), "--resolution", "32",
                     "--steps", "3", "--batch", "2", "--lr", "1e-3", "--reference", "group", "--no-progress",
                     "--cpu"]) == 0
    assert json.loads((out / "history.json").read_text())["step"] == [1, 2, 3]


def test_train_adapter_on_an_fp16_sd1_folder_in_mixed_precision(tmp_path, data_dir):
    """Folders saved in fp16 (transformers 5 loads their text encoder in fp16 by default: a dtype
    clash with the fp32 UNet before); --mixed-precision bf16 stores the frozen base in bf16;
    without --batch/--lr an SD1 run takes IP-Adapter's batch 8 and lr 1e-4."""
    model, images = tmp_path / "sd15", tmp_path / "images"
    tiny_sd1(model, dtype=torch.float16)
    images.mkdir()
    from style_components.train import dataset
    data = dataset.load(data_dir)
    for i in range(4):
        Image.fromarray(data.images[i]).save(images / f"{i}.png")
    run = style_models(data_dir, tmp_path / "enc")
    train = ["train-adapter", str(images), None, "--sd-model", str(model), "--extractor",
             str(run / "extractor.safetensors"), "--space", str(run / "s.safetensors"), "--resolution", "32",
             "--steps", "1", "--no-progress", "--cpu"]
    for out, precision in ((tmp_path / "fp32", []), (tmp_path / "bf16", ["--mixed-precision", "bf16"])):
        train[2] = str(out)
        with own_accelerator_state():
            assert cli.main(train + precision) == 0
        assert np.isfinite(json.loads((out / "history.json").read_text())["loss"]).all()
        settings = torch.load(out / "checkpoint.pt", weights_only=True)["settings"]
        assert (settings["batch"], settings["lr"]) == (8, 1e-4)
        adapter = Adapter.load(out / "adapter.safetensors")
        assert adapter.arch == "sd1" and adapter.d_in == 3


def test_an_sd1_run_resumes_exactly_from_a_moved_fp16_variant_folder(tmp_path, data_dir, capsys):
    """Found in review: the VAE's posterior noise came from torch's global generator (a resumed run
    trained on other latents), a folder of only fp16-variant weights (a common download layout)
    failed to load, a moved model folder could not resume, and a mistyped --sd-model went to the
    model hub (30 s of retries)."""
    model, images = tmp_path / "sd15", tmp_path / "images"
    tiny_sd1(model, variant="fp16")
    assert not list(model.glob("unet/diffusion_pytorch_model.safetensors"))
    images.mkdir()
    from style_components.train import dataset
    data = dataset.load(data_dir)
    for i in range(4):
        Image.fromarray(data.images[i]).save(images / f"{i}.png")
    run = style_models(data_dir, tmp_path / "enc")
    train = lambda out, sd: ["train-adapter", str(images), str(out), "--sd-model", str(sd), "--extractor",  # noqa: E731
                             str(run / "extractor.safetensors"), "--space", str(run / "s.safetensors"),
                             "--resolution", "32", "--steps", "3", "--batch", "2", "--lr", "1e-2", "--save-every", "1",
                             "--no-progress", "--cpu"]
    assert cli.main(train(tmp_path / "straight", model)) == 0
    assert cli.main(train(tmp_path / "resumed", model) + ["--max-minutes", "1e-9"]) == 0  # stops after step 1
    model = model.rename(tmp_path / "moved")
    torch.manual_seed(123)  # a new process: torch's global generator is elsewhere
    assert cli.main(train(tmp_path / "resumed", model)) == 0
    straight, resumed = (Adapter.load(tmp_path / run_ / "adapter.safetensors") for run_ in ("straight", "resumed"))
    assert all(torch.equal(a, b) for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()))
    capsys.readouterr()
    assert cli.main(train(tmp_path / "typo", tmp_path / "sd51")) == 2
    assert "sd51: not a diffusers model folder (no unet, vae, text_encoder, tokenizer, scheduler)" in capsys.readouterr().err
