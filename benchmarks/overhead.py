"""What the style term costs per UNet call: SD1.5 architecture, fp32, on this machine.

Prints the median UNet forward time without style, with a 1-token adapter (the per-row
bias fast path) and with a 4-token adapter (decoupled attention), and their ratios; then
the hooks alone, timed in isolation on the real attn2 outputs, as a share of a forward
(whole-forward noise is larger than the 1-token hook's cost, so both views are printed).

    python benchmarks/overhead.py                 # 512 px (64x64 latent), batch 2
    python benchmarks/overhead.py --latent 32 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))  # the tests' real-UNet builders
from factories import adapter_for  # noqa: E402
from unets import ldm_unet  # noqa: E402

from style_components.inject import NULL, _StyleTerm, apply  # noqa: E402
from style_components.layers import find_attn2  # noqa: E402


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latent", type=int, default=64, help="latent size (64 = 512 px)")
    ap.add_argument("--batch", type=int, default=2, help="UNet batch (2 = one image, cond + uncond)")
    ap.add_argument("--repeats", type=int, default=5, help="forwards per setting (median taken)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    unet = ldm_unet()
    adapters = {"1-token": adapter_for(unet, d_in=768, hidden=1536), "4-token": adapter_for(unet, tokens=4)}
    x = torch.randn(args.batch, 4, args.latent, args.latent)
    t, ctx = torch.full((args.batch,), 500), torch.randn(args.batch, 77, 768)
    rows = [0] * (args.batch // 2) + [NULL] * (args.batch - args.batch // 2)
    forward = lambda: unet(x, t, context=ctx)

    def with_style(name):
        adapter = adapters[name]
        with apply(unet, adapter, torch.randn(1, adapter.d_in), rows=rows):
            forward()  # untimed: the first call builds the cached per-style terms, once per generation
            return timed(forward)

    settings = {"no style": lambda: timed(forward), "1-token": lambda: with_style("1-token"),
                "4-token": lambda: with_style("4-token")}
    times = {name: [] for name in settings}
    with torch.no_grad():
        forward()  # warm-up
        for _ in range(args.repeats):  # interleaved, so drift hits every setting alike
            for name, run in settings.items():
                times[name].append(run())
        isolated = {name: hooks_alone(unet, adapter, forward, rows) for name, adapter in adapters.items()}

    base = statistics.median(times["no style"])
    print(f"SD1.5 UNet, latent {args.latent}x{args.latent}, batch {args.batch}, fp32, "
          f"{args.threads} thread(s), median of {args.repeats}")
    for name, ts in times.items():
        print(f"  {name:9s} forward {statistics.median(ts):8.3f} s   ratio {statistics.median(ts) / base:.4f}")
    for name, seconds in isolated.items():
        print(f"  {name:9s} hooks alone {seconds * 1e3:8.2f} ms per forward = {seconds / base:.2%} of a forward "
              f"(isolated ratio {1 + seconds / base:.4f})")


def hooks_alone(unet, adapter, forward, rows, repeats: int = 5) -> float:
    """Median time of running just the 16 style hooks on captured attn2 inputs/outputs (and, for
    several tokens, the Q each layer's own to_q computed, which the term takes over)."""
    layers = find_attn2(unet)
    captured, queries = {}, {}
    grab = [l.module.register_forward_hook(
        lambda m, a, kw, out: captured.__setitem__(m, (a, kw, out)), with_kwargs=True) for l in layers]
    grab += [l.module.to_q.register_forward_hook(
        lambda m, a, out, attn=l.module: queries.__setitem__(attn, out)) for l in layers]
    forward()
    for h in grab:
        h.remove()
    with apply(unet, adapter, torch.randn(1, adapter.d_in), rows=rows):
        terms = [(next(h for h in l.module._forward_hooks.values() if isinstance(h, _StyleTerm)),
                  l.module.to_q, queries[l.module], *captured[l.module]) for l in layers]

        def run():
            for term, to_q, q, a, kw, out in terms:
                term.keep_query(to_q, a[:1] or (kw.get("x"),), q)  # as the layer's own to_q call hands it over
                term(None, a, kw, out)
        run()  # first call builds the cached per-style terms
        return statistics.median(timed(run) for _ in range(repeats))


if __name__ == "__main__":
    main()
