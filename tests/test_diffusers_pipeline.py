"""README's diffusers recipe on real diffusers pipelines (tiny random SD1 and SDXL built with the
real classes, tests/pipelines.py): uncond rows first, several images per prompt, guidance <= 1,
start/end driven by the step callback; checked against tests/reference.py's decoupled attention."""

import pytest
import torch

import pipelines
import reference
from factories import adapter_for
from style_components import NULL, apply, guidance_rows
from style_components.errors import StyleComponentsError
from style_components.layers import find_attn2

PROMPTS, PER_PROMPT = ["a red cat", "a blue dog"], 2
IMAGE_STYLES = [0, 2, 1, 1]  # the four images come out as p0, p0, p1, p1


@pytest.fixture(scope="module", params=["sd1", "sdxl"])
def pipe(request, tmp_path_factory):
    return getattr(pipelines, request.param)(tmp_path_factory.mktemp("tokenizer"))


def generate(pipe, guidance=7.5, steps=2, callback=None):
    with torch.no_grad():
        return pipe(PROMPTS, num_images_per_prompt=PER_PROMPT, guidance_scale=guidance, num_inference_steps=steps,
                    height=32, width=32, generator=torch.Generator().manual_seed(0), output_type="pt",
                    callback_on_step_end=callback).images


def styled(pipe, adapter, styles, guidance=7.5, steps=2, **kwargs):
    """README's recipe."""
    with apply(pipe.unet, adapter, styles, rows=guidance_rows(IMAGE_STYLES, cond_first=False), **kwargs) as style:
        style.set_progress(0.0)
        step = lambda p, i, t, kw: (style.set_progress((i + 1) / p.num_timesteps), kw)[1]  # noqa: E731
        return generate(pipe, guidance, steps, step), style.layer_calls


def close(a, b):
    return (a - b).abs().max().item() <= 1e-4 * b.abs().max().item()


@pytest.mark.parametrize("tokens", [1, 4])
@pytest.mark.parametrize("guidance", [7.5, 1.0])
def test_readme_recipe_matches_the_reference(pipe, tokens, guidance):
    adapter = adapter_for(pipe.unet, tokens=tokens)
    styles = torch.randn(3, 30, generator=torch.Generator().manual_seed(1))
    base = generate(pipe, guidance)
    got, _ = styled(pipe, adapter, styles, guidance)
    # diffusers puts the uncond rows first; guidance <= 1 runs the cond rows alone
    rows = ([NULL] * len(IMAGE_STYLES) if guidance > 1 else []) + IMAGE_STYLES
    with torch.no_grad():
        table = adapter(torch.cat([styles, adapter.null_input()]))
    layers = find_attn2(pipe.unet)
    undo = reference.install(layers, adapter, table[torch.tensor(rows)], [1.0] * len(layers))
    try:
        want = generate(pipe, guidance)
    finally:
        undo()
    assert close(got, want) and not close(got, base)
    assert torch.equal(generate(pipe, guidance), base)  # nothing left behind


def test_start_and_end_follow_the_step_callback(pipe):
    adapter = adapter_for(pipe.unet)
    styles = torch.randn(3, 30)
    n_layers = len(find_attn2(pipe.unet))
    for start, end, styled_steps in ((0.0, 1.0, 4), (0.5, 1.0, 2), (0.25, 0.75, 2), (0.0, 0.25, 1)):
        _, calls = styled(pipe, adapter, styles, steps=4, start=start, end=end)
        assert calls == styled_steps * n_layers, (start, end)  # one UNet call per step (cond and uncond batched)


def test_a_batch_the_rows_do_not_describe_is_a_clear_error(pipe):
    adapter = adapter_for(pipe.unet)
    with apply(pipe.unet, adapter, torch.randn(3, 30), rows=guidance_rows([0, 1, 2], cond_first=False)):
        with pytest.raises(StyleComponentsError, match="called with 8 rows; the style rows are for 3 images"):
            generate(pipe)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in pipe.unet.modules())
