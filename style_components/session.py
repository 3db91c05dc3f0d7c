"""One generation's style: resolve the setting once, hook the UNet for each sampling pass.

Host-agnostic lifecycle (A1111's script calls these; see scripts/style_components.py):

    gen = Generation(params, model)                 # once per job, after validation
    gen.start_pass(unet, image_seeds)               # before each sampling pass (hires: again)
    gen.step(labels, step, total_steps)             # when the host announces a sampling step
    ...the host calls the UNet any number of times; each call takes the next rows...
    gen.follow(other_unet)                          # the host swapped the UNet mid-pass (refiner)
    gen.end_pass()                                  # pass over, failed or interrupted
    gen.close()                                     # job over

Between passes, and on any UNet call that does not belong to an announced step, the UNet
runs exactly as without the extension.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Callable, Sequence

from .errors import IncompatibleModelError, StyleComponentsError
from .rows import RowTracker


def sampling_progress(step: int, total_steps: int | None) -> float:
    """Fraction of sampling done, for the start/end range; below 1 even past the announced end.

    Samplers such as DPM adaptive or Restart call the denoiser more often than the host's step
    count says; those extra calls belong to the last step, so `end = 1` keeps the style to the end.
    """
    if not total_steps:
        return 0.0
    return min(step, total_steps - 1) / total_steps


OFF = math.inf  # a progress value outside every start-end range: hooks installed but inert


class Generation:
    def __init__(self, params, model, warn: Callable[[str], None] = print):
        """params: params.StyleParams (validated); model: models.LoadedModel."""
        self.params, self.model, self.warn = params, model, warn
        self.unet = None     # the UNet of the pass under way, hooked or not
        self.handle = None
        self.tracker = RowTracker()
        self.progress = 0.0
        self.passes = 0      # passes with the style hooked (all or part of the pass)
        self.components: list[tuple[float, ...]] = []  # per image of the current pass
        self._pre_hook = None
        self._pass_styled = False
        self._told: set[str] = set()
        # this pass: UNet calls of its steps, those with the style on, style terms added, calls it
        # missed (rows unknown)
        self._calls_stepped = self._calls_on = self._layer_calls = self._missed = 0
        self._pass_done = False  # the pass reached its last announced step

    # -- the style of each image ---------------------------------------------------------
    def image_components(self, image_seeds: Sequence[int | None]) -> list[tuple[float, ...]]:
        k = self.model.k
        return [self.params.effective_components(k, seed) for seed in image_seeds]

    def layer_weights(self):
        p = self.params
        return list(p.block_weights) if p.blocks == "custom" else p.blocks

    # -- passes --------------------------------------------------------------------------
    def start_pass(self, unet, image_seeds: Sequence[int | None]) -> bool:
        """Hook `unet` with one style per image; False (one warning per message and job) when
        the model does not fit this UNet: the pass then runs without style."""
        self.end_pass()
        self.components = self.image_components(image_seeds)
        self._pass_styled = False
        self._calls_stepped = self._calls_on = self._layer_calls = self._missed = 0
        self._pass_done = False
        self.progress = OFF  # until the host announces a step: calls before it are not the sampler's
        consequence = "This pass runs" if self.passes else "This image is generated"
        return self._hook(unet, f"{consequence} without the style.")

    def follow(self, unet) -> bool:
        """The host swapped the UNet in the middle of a pass (A1111's refiner): carry the
        pass's styles over when the model fits the new UNet; otherwise the rest of the pass
        runs without the style. True when the style is on from here."""
        if unet is self.unet:
            return self.handle is not None
        self._unhook()
        return self._hook(unet, "The steps after the switch run without the style.")

    def _hook(self, unet, consequence: str) -> bool:
        from . import inject
        self.unet = unet
        try:
            inputs = self.model.style_inputs(self.components)
            p = self.params
            self.handle = inject.apply(unet, self.model.adapter, inputs, strength=p.strength,
                                       weights=self.layer_weights(), start=p.start, end=p.end)
        except IncompatibleModelError as e:
            self._tell(f"Style Components: {e}. {consequence}")
            return False
        self.handle.set_progress(OFF)
        self._pre_hook = unet.register_forward_pre_hook(self._before_unet_call, with_kwargs=True)
        self.tracker.clear()
        if not self._pass_styled:
            self._pass_styled = True
            self.passes += 1
        return True

    def step(self, labels: Sequence[int] | Callable[[], Sequence[int]], step: int, total_steps: int | None) -> None:
        """The host is about to run sampling step `step` of `total_steps` on a batch with `labels`
        (or a function giving them at the step's first UNet call)."""
        self.progress = sampling_progress(step, total_steps)
        self._pass_done = not total_steps or step >= total_steps - 1
        self.tracker.new_step(labels)

    def _before_unet_call(self, module, args, kwargs):
        if self.handle is None:
            return None
        x = args[0] if args else kwargs.get("x", kwargs.get("sample"))
        rows = self.tracker.next_call(x.shape[0])
        if rows is None:
            self.handle.set_progress(OFF)
            self._missed += self.handle.start <= self.progress < self.handle.end
        else:
            self.handle.set_rows(rows)
            self.handle.set_progress(self.progress)
            self._calls_stepped += self.handle.n_terms > 0
            self._calls_on += self.handle.active and self.handle.n_terms > 0
        return None

    def check_pass(self) -> None:
        """At the end of a pass: raise when the style was on for UNet calls and none of its
        layers ran (something runs in place of the UNet's modules: the image would lack the
        style); say so when its range held none of the pass's steps, or some calls could not be
        matched to the step's rows."""
        layer_calls = self._layer_calls + (self.handle.layer_calls if self.handle is not None else 0)
        if self._calls_on and not layer_calls:
            raise StyleComponentsError(
                f"the style was on for {self._calls_on} UNet calls, but none of the UNet's cross-attention "
                "layers ran: something runs in its place (in A1111, the 'SD Unet' setting, e.g. a TensorRT "
                "engine). Set SD Unet to None, or turn the style off")
        if self._calls_stepped and not self._calls_on and self._pass_done:  # (not when interrupted before the range)
            self._tell(f"Style Components: the style's range (start {self.params.start:g}, end {self.params.end:g}) "
                       "holds none of this pass's sampling steps; it ran without the style. Widen the range.")
        if self._missed:
            self._tell("Style Components: some UNet calls had rows that match no sampling step's batch "
                       "(another extension calling the UNet?); they ran without the style.")

    def end_pass(self) -> None:
        self._unhook()
        self.unet = None

    def _unhook(self) -> None:
        if self._pre_hook is not None:
            self._pre_hook.remove()
            self._pre_hook = None
        if self.handle is not None:
            self._layer_calls += self.handle.layer_calls
            self.handle.remove()
            self.handle = None
        self.tracker.clear()

    def _tell(self, message: str) -> None:
        if message not in self._told:
            self._told.add(message)
            self.warn(message)

    def close(self) -> None:
        self.end_pass()


def with_components(params, components: Sequence[float]):
    """params with explicit slider values (e.g. extracted from reference images)."""
    return replace(params, components=tuple(float(c) for c in components), seed=None)


def wrap_sampling(sampler, methods: Sequence[str], before: Callable[[], None] | None, after: Callable[[], None],
                  on_return: Callable[[], None] | None = None):
    """Run `after` when the sampler's pass ends however it ends (return, exception, interruption),
    `before` when it starts and `on_return` when it returns (either may raise to fail the pass).

    Wraps the named bound methods on the sampler *instance* (the class is untouched); each
    wrapper restores the original on its first call's exit, so it runs once per pass.
    """
    originals = {}

    def restore():
        for name, original in originals.items():
            if sampler.__dict__.get(name) is wrappers.get(name):
                del sampler.__dict__[name]
                if name in own:
                    setattr(sampler, name, own[name])

    def make(name, original):
        def wrapper(*args, **kwargs):
            try:
                if before is not None:
                    before()
                result = original(*args, **kwargs)
                if on_return is not None:
                    on_return()
                return result
            finally:
                restore()
                after()
        return wrapper

    own = {name: sampler.__dict__[name] for name in methods if name in sampler.__dict__}
    wrappers = {}
    for name in methods:
        original = getattr(sampler, name, None)
        if original is None:
            continue
        originals[name] = original
        wrappers[name] = make(name, original)
        setattr(sampler, name, wrappers[name])
    return restore


class ArgumentError(StyleComponentsError):
    """A script argument (UI, API, infotext) that cannot be used."""
