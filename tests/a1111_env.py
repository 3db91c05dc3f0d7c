"""Loading scripts/style_components.py into the A1111 v1.10 stand-in (tests/a1111_standin)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
STANDIN = Path(__file__).resolve().parent / "a1111_standin"


def import_standin():
    if str(STANDIN) not in sys.path:
        sys.path.insert(0, str(STANDIN))
    import modules.scripts  # noqa: F401
    return sys.modules["modules.scripts"]


def load_script(models_path):
    """Load the script file as A1111's script loader does; returns (module, ScriptRunner factory)."""
    import_standin()
    from modules import script_callbacks, scripts, shared
    shared.models_path = str(models_path)
    script_callbacks.remove_current_script_callbacks()
    scripts.scripts_data.clear()
    module = scripts.load_script(str(ROOT / "scripts" / "style_components.py"), str(ROOT))
    return module


def runner(module, is_img2img=False):
    """A ScriptRunner made as A1111 makes scripts_txt2img / scripts_img2img: from scripts_data
    (where load_script registered `module`'s script); the args ranges its UI would give."""
    from modules import scripts
    from style_components import script_args
    r = scripts.ScriptRunner()
    r.initialize_scripts(is_img2img)
    assert [type(s) for s in r.alwayson_scripts] == [module.StyleComponentsScript], "another script module is loaded"
    r.set_args_ranges(lambda s: script_args.N_ARGS)
    return r


def make_space(k: int, d: int, seed: int = 0):
    from style_components.space import StyleSpace
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, k, generator=g))
    return StyleSpace(torch.randn(d, generator=g) * 0.1, q.T.contiguous(), torch.rand(k, generator=g) + 0.5,
                      labels=tuple(f"label {i}" for i in range(k)), name="demo")


# -- generations and replays ------------------------------------------------------------------

def build_env(unet, tmp_path_factory, context_dim: int = 768):
    """A models folder with 'demo' (adapter + 30-component space fitting `unet`) and 'xl' (an
    SDXL-layout adapter), and the script loaded against it."""
    from factories import adapter_for
    from unets import SMALL_SDXL_DIFFUSERS, diffusers_unet
    models = tmp_path_factory.mktemp("models")
    folder = models / "StyleComponents"
    adapter = adapter_for(unet, d_in=64, hidden=None, seed=11)
    adapter.save(folder / "demo.adapter.safetensors")
    space = make_space(30, 64)
    space.save(folder / "demo.space.safetensors")
    xl = adapter_for(diffusers_unet(SMALL_SDXL_DIFFUSERS, device="meta"), d_in=30, hidden=None)
    xl.save(folder / "xl.adapter.safetensors")  # no space: takes the 30 components directly
    module = load_script(models)
    from modules import errors, processing, shared
    return dict(module=module, unet=unet, adapter=adapter, space=space, processing=processing, shared=shared,
                errors=errors, context_dim=context_dim, models=models)


def reset(env):
    shared = env["shared"]
    saved = dict(shared.opts.data)
    shared.state.reset()
    env["errors"].reported.clear()
    return saved


def restore(env, saved):
    from style_components import inject
    env["shared"].opts.data.clear()
    env["shared"].opts.data.update(saved)
    env["shared"].state.reset()
    inject.remove_all(env["unet"])


def args(**kw):
    """Positional script arguments (what the UI sends) from keyword values."""
    from style_components import script_args as sargs
    comps = kw.pop("components", ())
    values = dict(zip(sargs.ALL_NAMES, sargs.defaults()))
    values.update(enabled=True, model="demo")
    values.update(kw)
    values.update(zip(sargs.COMPONENT_NAMES, comps))
    return [values[n] for n in sargs.ALL_NAMES]


def generate(env, script_args, record=None, img2img=False, seed=1000, **kw):
    """process_images over the stand-in; `record` collects (x, t, context, output, hooked) per UNet call."""
    from style_components.layers import find_attn2
    proc = env["processing"]
    settings = dict(sd_model=proc.StandinSDModel(env["unet"], context_dim=env["context_dim"]), prompt="a castle",
                    negative_prompt="blurry", seed=seed, steps=1, width=64, height=64,
                    scripts=None, script_args=[])
    if script_args is not None:  # None: A1111 without the extension
        settings.update(scripts=runner(env["module"], is_img2img=img2img), script_args=[None] + list(script_args))
    settings.update(kw)
    cls = proc.StableDiffusionProcessingImg2Img if img2img else proc.StableDiffusionProcessingTxt2Img
    p = cls(**settings)
    handle = None
    if record is not None:
        layers = find_attn2(env["unet"])

        def hook(module, a, kwargs, out):
            hooked = any(l.module._forward_hooks for l in layers)
            record.append((a[0].clone(), a[1].clone(), kwargs["context"].clone(), out.clone(), hooked))
        handle = env["unet"].register_forward_hook(hook, with_kwargs=True)
    try:
        return p, proc.process_images(p)
    finally:
        if handle is not None:
            handle.remove()


def styles_for(env, seeds, multiplier=1.0):
    from style_components.params import random_components
    comps = torch.tensor([[v * multiplier for v in random_components(s, 30)] for s in seeds])
    return env["space"].to_embedding(comps)


def replay(env, calls, styles=None, rows=None, **kw):
    """Run recorded calls again in ONE UNet forward (they must share shapes), hooked by the core
    directly with explicit rows (a list per call), or plain when rows is None. Returns per-call outputs."""
    from style_components import inject
    x = torch.cat([c[0] for c in calls])
    t = torch.cat([c[1] for c in calls])
    ctx = torch.cat([c[2] for c in calls])
    with torch.no_grad():
        if rows is None:
            out = env["unet"](x, t, context=ctx)
        else:
            flat = [r for rs in rows for r in rs]
            with inject.apply(env["unet"], env["adapter"], styles, rows=flat, **kw):
                out = env["unet"](x, t, context=ctx)
    return list(out.split([c[0].shape[0] for c in calls]))


def close(a, b, tol=1e-5):
    return (a - b).abs().max().item() <= tol * b.abs().max().item()


def assert_unet_clean(env):
    """No hook left anywhere in the UNet (to_q's query hook included: found by mutation, the
    attn2-only check missed it)."""
    unet = env["unet"]
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in unet.modules())
