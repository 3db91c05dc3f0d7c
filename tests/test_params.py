"""StyleParams: infotext round trip, parsing of garbled text, validation, random styles."""

from __future__ import annotations

import json
import math
import random
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from style_components.params import BLOCK_PRESETS, MAX_SEED, StyleParams, random_components

# Hypothesis: 2,000 examples in all. With the plain-random tests below, ~3,800 settings are
# round-tripped and ~7,000 garbled strings parsed, in ~10 s.
FUZZ = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def exact(p: StyleParams) -> str:
    """A comparison key stricter than ==, which takes -0.0 for 0.0 and 1 for 1.0."""
    return repr(p)


def assert_round_trip(p: StyleParams) -> str:
    text = p.to_infotext()
    assert text.isprintable(), text  # one line, nothing a PNG text chunk or a UI would mangle
    back, problems = StyleParams.parse(text)
    assert problems == []
    assert exact(back) == exact(p), text
    return text


def a1111_round_trip(text: str) -> str:
    """What A1111 does to the value: quote it into the infotext line, find it, unquote it."""
    value = json.dumps(text, ensure_ascii=False) if any(c in text for c in ",:\n") else text
    prefix = "Steps: 20, Style components: "
    line = prefix + value + ", Seed: 1"
    assert "\n" not in line
    found, _ = json.JSONDecoder().raw_decode(line, len(prefix))
    return found


# -- round trip -----------------------------------------------------------------------

HAND_CASES = [
    StyleParams(),
    StyleParams(model="demo", model_hash="1a2b3c4d", components=(0.3, -1.2, 0.0, 0.01),
                strength=0.8, blocks="style", seed=1234,
                refs="2 images: 1a2b3c4d×0.5, 9f8e7d6c×1"),
    StyleParams(components=(1e-300, -0.0, 0.1 + 0.2, 5e-324, 1.7976931348623157e308, -1e16, 1.0)),
    StyleParams(multiplier=-0.0, strength=0.0, start=-0.0, end=0.0),
    StyleParams(start=0.25, end=0.75, seed=-1),
    StyleParams(seed=0), StyleParams(seed=MAX_SEED),
    StyleParams(model="my, model: v2 [x]", model_hash="DEADBEEF"),
    StyleParams(model="", model_hash="1a2b3c4d"),
    StyleParams(model="風景 スタイル v2"),
    StyleParams(model=' "quoted" \\back\\slash ', refs="line\nbreak\ttab\u2028sep\x85\x00"),
    StyleParams(model="emoji 😀 and zwj 👩\u200d💻", refs="\U000e0001 astral format char"),
    StyleParams(blocks="custom", block_weights=(1.0, 0.0, 0.5) + (1.0,) * 13),
    StyleParams(blocks="custom", block_weights=tuple(i / 70 for i in range(70))),
    StyleParams(components=(0.0,) * 30),
    # not valid, but still written and read back faithfully
    StyleParams(model_hash="a]b, c", blocks="", block_weights=(2.0,), start=0.9, end=0.1, seed=-7),
    StyleParams(blocks="none", refs="none"),
]


@pytest.mark.parametrize("p", HAND_CASES, ids=range(len(HAND_CASES)))
def test_round_trip_hand_cases(p):
    text = assert_round_trip(p)
    still_quoted = (json.dumps(text), json.dumps(text, ensure_ascii=False))
    for returned in (a1111_round_trip(text), *still_quoted):
        assert exact(StyleParams.parse(returned)[0]) == exact(p)


def test_infotext_format():
    p = StyleParams(model="demo", model_hash="1a2b3c4d", components=(0.3, -1.2, 0.0, 0.01),
                    multiplier=0.5, strength=0.8, blocks="custom", block_weights=(1, 1, 0, 0.5),
                    start=0.1, end=0.9, seed=1234, refs="2 images: 1a2b3c4d×0.5, 9f8e7d6c×1")
    assert p.to_infotext() == (
        "model: demo [1a2b3c4d], components: 0.3 -1.2 0 0.01, multiplier: 0.5, strength: 0.8, "
        "blocks: custom, weights: 1 1 0 0.5, range: 0.1-0.9, seed: 1234, "
        'refs: "2 images: 1a2b3c4d×0.5, 9f8e7d6c×1"')
    assert StyleParams().to_infotext() == "components: none"
    assert StyleParams(components=(-0.0, 1e-300), start=-0.0).to_infotext() == \
        "components: -0 1e-300, range: -0-1"
    assert StyleParams(model="my, model: v2 [x]").to_infotext() == \
        'model: "my, model: v2 [x]", components: none'
    assert StyleParams(refs="a\u2028b").to_infotext() == 'components: none, refs: "a\\u2028b"'


def test_constructor_normalises_widget_values():
    p = StyleParams(components=[1, 2], block_weights=[0], multiplier=2, start=0, end=1, seed=12.0)
    assert exact(p) == exact(StyleParams(components=(1.0, 2.0), block_weights=(0.0,),
                                         multiplier=2.0, seed=12))
    with pytest.raises(TypeError):
        StyleParams(seed=1.5)


finite = st.floats(allow_nan=False, allow_infinity=False)
slider = st.integers(-300, 300).map(lambda i: i / 100)
seeds = st.one_of(st.none(), st.just(-1), st.integers(0, MAX_SEED))
hashes = st.one_of(st.just(""), st.text("0123456789abcdefABCDEF", min_size=8, max_size=8))


# Short lists and texts: every value is written on its own, so length adds little but time
# (the hand cases hold the 30- and 70-long ones).
@st.composite
def valid_params(draw) -> StyleParams:
    blocks = draw(st.sampled_from(BLOCK_PRESETS))
    start, end = sorted(draw(st.floats(-0.0, 1.0)) for _ in range(2))
    weights = draw(st.lists(finite, min_size=1, max_size=8)) if blocks == "custom" else []
    return StyleParams(
        model=draw(st.text(max_size=20)), model_hash=draw(hashes),
        components=draw(st.lists(st.one_of(slider, finite), max_size=8)),
        multiplier=draw(finite), strength=draw(finite), blocks=blocks, block_weights=weights,
        start=start, end=end, seed=draw(seeds), refs=draw(st.text(max_size=20)))


@settings(max_examples=500, deadline=None)
@given(valid_params())
def test_round_trip_valid(p):
    assert p.validate() == []
    text = assert_round_trip(p)
    assert exact(StyleParams.parse(a1111_round_trip(text))[0]) == exact(p)


@settings(max_examples=250, deadline=None)
@given(st.builds(StyleParams, st.text(max_size=20), st.text(max_size=20),
                 st.lists(finite, max_size=8), finite, finite, st.text(max_size=20),
                 st.lists(finite, max_size=8), finite, finite,
                 st.one_of(st.none(), st.integers(-10**25, 10**25)), st.text(max_size=20)))
def test_round_trip_any_finite(p):
    assert_round_trip(p)


# Hypothesis spends ~5 ms making each example; this plain generator makes thousands more in
# a second: floats from random bit patterns (subnormals, huge, -0.0), text from all planes.
def random_float(rng: random.Random) -> float:
    while not math.isfinite(x := struct.unpack("<d", rng.randbytes(8))[0]):
        pass
    return rng.choice([x, rng.randint(-300, 300) / 100, -0.0, 0.1 + 0.2])


def random_text(rng: random.Random) -> str:
    codes = [rng.choice([rng.randrange(32, 127), rng.randrange(0x110000)])
             for _ in range(rng.randrange(12))]
    return "".join(chr(c) for c in codes if not 0xD800 <= c < 0xE000)  # no lone surrogates


def random_params(rng: random.Random) -> StyleParams:
    def floats(n: int) -> list[float]:
        return [random_float(rng) for _ in range(n)]

    blocks = rng.choice(BLOCK_PRESETS)
    return StyleParams(
        model=random_text(rng), model_hash=rng.choice(["", f"{rng.getrandbits(32):08x}"]),
        components=floats(rng.choice([0, 1, 5, 30])), multiplier=random_float(rng),
        strength=random_float(rng), blocks=blocks,
        block_weights=floats(rng.choice([1, 16, 70])) if blocks == "custom" else (),
        start=rng.choice([0.0, -0.0, rng.random() / 2]),
        end=rng.choice([1.0, 1 - rng.random() / 2]),
        seed=rng.choice([None, -1, rng.getrandbits(rng.choice([8, 32, 53]))]),
        refs=rng.choice(["", random_text(rng)]))


def test_round_trip_random_params():
    rng = random.Random(2024)
    for _ in range(3000):
        p = random_params(rng)
        assert p.validate() == []
        assert_round_trip(p)


# -- garbled input --------------------------------------------------------------------

def assert_parses_safely(text) -> None:
    p, problems = StyleParams.parse(text)
    assert isinstance(p, StyleParams)
    assert isinstance(problems, list) and all(isinstance(m, str) and m for m in problems)
    numbers = p.components + p.block_weights + (p.multiplier, p.strength, p.start, p.end)
    assert all(math.isfinite(x) for x in numbers)
    assert all(isinstance(m, str) for m in p.validate())
    assert_round_trip(p)  # whatever parse gives is itself a faithful setting


@settings(FUZZ, max_examples=750)
@given(st.text())
def test_fuzz_any_text(text):
    assert_parses_safely(text)


SEPARATORS = list(',:"[]\\- .eE0123456789') + ["model:", "components:", "range:", "seed:", "refs:"]


@settings(FUZZ, max_examples=300)
@given(st.lists(st.one_of(st.sampled_from(SEPARATORS), st.text(max_size=3))).map("".join))
def test_fuzz_separator_soup(text):
    assert_parses_safely(text)


INJECTED = list('",:[]\\ -.e\n\t\x00') + ["\u2028", "é", "😀", "nan", "inf", '\\"', "\\u12",
                                        '"x"']


def mutate(text: str, rng: random.Random) -> str:
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(len(text) + 1)
        op = rng.randrange(6)
        if op == 0:
            text = text[:i]                                     # truncation
        elif op == 1:
            text = text[:i] + text[i + 1:]                      # deleted character
        elif op == 2 and any(c in text for c in ',:"[]'):
            j = rng.choice([k for k, c in enumerate(text) if c in ',:"[]'])
            text = text[:j] + text[j] * rng.randint(0, 2) + text[j + 1:]  # separator gone/doubled
        elif op == 3 and len(text) > 1:
            j = rng.randrange(len(text) - 1)
            text = text[:j] + text[j + 1] + text[j] + text[j + 2:]  # swapped characters
        else:
            text = text[:i] + rng.choice(INJECTED) + text[i:]  # injected quote/bracket/unicode
    return text


@settings(FUZZ, max_examples=200)
@given(valid_params(), st.randoms(use_true_random=False))
def test_fuzz_mutated_infotexts(p, rng):
    text = p.to_infotext()
    for _ in range(10):
        assert_parses_safely(mutate(text, rng))
    assert_parses_safely(json.dumps(mutate(text, rng)))


def test_fuzz_mutated_infotexts_fixed_seed():
    rng = random.Random(1234)
    for p, n in [(p, 100) for p in HAND_CASES] + [(random_params(rng), 40) for _ in range(50)]:
        text = p.to_infotext()
        for _ in range(n):
            assert_parses_safely(mutate(text, rng))


def test_pathological_input_parses_safely_and_scans_quotes_once(monkeypatch):
    """Huge fields, thousands of items and quotes that never close parse safely. Work is counted, not
    timed: the quoted-string scan (it reads to the end of the text) runs once for the 30,000 unclosed
    quotes, not once per quote (a quadratic rescan; backtracking regexes would hang the suite)."""
    from style_components import params

    scans = []

    class CountingQuotedRe:
        def match(self, text, pos=0):
            scans.append(pos)
            return QUOTED.match(text, pos)
    QUOTED = params._QUOTED_RE
    monkeypatch.setattr(params, "_QUOTED_RE", CountingQuotedRe())
    for text in ["range: " + "1" * 30_000, '"\\' * 30_000, "seed: " + "9" * 30_000,
                 ",".join(["x"] * 10_000), "components: " + "1 " * 30_000]:
        scans.clear()
        assert_parses_safely(text)
        assert len(scans) <= 2, (text[:20], len(scans))  # parse, then the round trip's re-parse
    # quotes that do close are each scanned once, and commas inside them split nothing
    scans.clear()
    _, problems = StyleParams.parse(", ".join(f'refs{i}: "a,b"' for i in range(1000)))
    assert len(scans) == 1000 and len(problems) == 1000


@pytest.mark.parametrize("blank", ["", "   ", None, '""', '"  "'])
def test_blank_gives_defaults(blank):
    assert StyleParams.parse(blank) == (StyleParams(), [])


GARBLED = [
    ("strength: abc", {}, ["strength: 'abc' is not a number"]),
    ("foo: 1, components: 1", {"components": (1.0,)}, ["unknown field 'foo' ignored"]),
    ("strength: nan", {}, ["strength: 'nan' is not a finite number"]),
    ("multiplier: -inf", {}, ["multiplier: '-inf' is not a finite number"]),
    ("strength: 1e999", {}, ["strength: '1e999' is not a finite number"]),
    ("strength: 1_0", {}, ["strength: '1_0' is not a number"]),
    ("strength: ١٢", {}, ["strength: '١٢' is not a number"]),
    ("strength: ", {}, ["strength: '' is not a number"]),
    ("components: 1 x 3, strength: 0.5", {"strength": 0.5},
     ["components: value 2 of 3: 'x' is not a number"]),
    ("components: 1 nan", {}, ["components: value 2 of 2: 'nan' is not a finite number"]),
    ("range: 0.8", {}, ["range: '0.8' is not 'start-end' (e.g. 0.2-0.8)"]),
    ("range: 0.2-x", {}, ["range: '0.2-x' is not 'start-end' (e.g. 0.2-0.8)"]),
    ("seed: 1.5", {}, ["seed: '1.5' is not a whole number"]),
    ("seed: abc", {}, ["seed: 'abc' is not a whole number"]),
    ("model: demo [1a2b", {}, ["model: the hash in 'demo [1a2b' is not closed with ']'"]),
    ("model: demo [1a2b3c4d] x", {}, ["model: unexpected 'x' after the hash"]),
    ('model: "demo" v2', {}, ["model: unexpected 'v2' after the model name"]),
    ('refs: "unclosed', {}, ['refs: \'"unclosed\' is not a valid quoted string (unclosed quote?)']),
    ('refs: "a" b', {}, ["refs: unexpected 'b' after the quoted text"]),
    ("hello, strength: 2", {"strength": 2.0}, ["'hello' is not a 'name: value' field, ignored"]),
    ("strength: 2, strength: 3", {"strength": 2.0},
     ["field 'strength' given twice, the second is ignored"]),
    # harmless: stray commas, spaces, case, a leading +
    (",, components: 1 ,, Strength : +2 ,", {"components": (1.0,), "strength": 2.0}, []),
    ("components:", {}, []),
    ("model: [1a2b3c4d]", {"model_hash": "1a2b3c4d"}, []),
    ("range: 0.2 - 0.8", {"start": 0.2, "end": 0.8}, []),
    # syntax is fine, so parse keeps it: validate() is what rejects it
    ("range: 0.9-0.1, blocks: nope, seed: -5", {"start": 0.9, "end": 0.1, "blocks": "nope",
                                                  "seed": -5}, []),
    ('"components: 1, strength: 0.5"', {"components": (1.0,), "strength": 0.5}, []),
]


@pytest.mark.parametrize("text, changed, messages", GARBLED)
def test_garbled_messages(text, changed, messages):
    p, problems = StyleParams.parse(text)
    assert problems == messages
    assert exact(p) == exact(StyleParams(**changed))


def test_long_garbage_is_cut_short_in_messages():
    _, problems = StyleParams.parse("x" * 10_000)
    assert len(problems) == 1 and len(problems[0]) < 120


# -- validation -----------------------------------------------------------------------

@pytest.mark.parametrize("p, message", [
    (StyleParams(strength=math.nan), "strength: nan is not a finite number"),
    (StyleParams(multiplier=math.inf), "multiplier: inf is not a finite number"),
    (StyleParams(components=(0.0, -math.inf)), "components: -inf is not a finite number"),
    (StyleParams(blocks="custom", block_weights=(1.0, math.nan)),
     "weights: nan is not a finite number"),
    (StyleParams(start=0.8, end=0.2),
     "range: start 0.8 and end 0.2 must satisfy 0 <= start <= end <= 1"),
    (StyleParams(end=1.5), "range: start 0 and end 1.5 must satisfy 0 <= start <= end <= 1"),
    (StyleParams(start=math.nan), "start: nan is not a finite number"),
    (StyleParams(blocks="Style"),
     "blocks: unknown preset 'Style' (known: all, style, texture, composition, custom)"),
    (StyleParams(blocks="custom"), "blocks: 'custom' needs per-layer weights"),
    (StyleParams(blocks="style", block_weights=(1.0,)),
     "weights: per-layer weights are only used with blocks 'custom', not 'style'"),
    (StyleParams(model_hash="1a2b3c4"), "model: hash '1a2b3c4' is not 8 hex digits"),
    (StyleParams(seed=-2),
     f"seed: -2 is neither -1 (each image's seed) nor a seed from 0 to {MAX_SEED}"),
    (StyleParams(seed=MAX_SEED + 1),
     f"seed: {MAX_SEED + 1} is neither -1 (each image's seed) nor a seed from 0 to {MAX_SEED}"),
])
def test_validate(p, message):
    assert p.validate() == [message]


def test_validate_layer_count():
    p = StyleParams(blocks="custom", block_weights=(1.0,) * 16)
    assert p.validate() == p.validate(layers=16) == []
    assert p.validate(layers=70) == ["weights: 16 given, the adapter has 70 style layers"]


def test_validate_accepts_edges():
    for p in [StyleParams(start=1.0, end=1.0), StyleParams(start=-0.0, end=0.0),
              StyleParams(seed=-1), StyleParams(seed=MAX_SEED), StyleParams(model_hash="DEADbeef")]:
        assert p.validate() == []


# -- random styles --------------------------------------------------------------------

def test_random_components_known_values():
    # computed once with torch 2.14 (CPU generator, float64); they must never change
    assert random_components(0, 5) == (1.54, -0.29, -2.18, 0.57, -1.08)
    assert random_components(1234, 30)[25:] == (0.09, -0.86, 0.16, 0.82, -0.76)


def test_random_components_properties():
    assert random_components(7, 30) == random_components(7, 30)
    assert random_components(7, 30) != random_components(8, 30)
    assert random_components(0, 30) != random_components(MAX_SEED, 30)
    for seed in (0, 1, 4_294_967_295, MAX_SEED):
        long = random_components(seed, 70)
        for k in (0, 1, 5, 10, 15, 16, 17, 30):
            assert random_components(seed, k) == long[:k]  # prefix stable across K
        assert all(round(v, 2) == v for v in long)  # on the slider step
        assert not any(v == 0 and math.copysign(1, v) < 0 for v in long)  # no "-0" sliders
    values = random_components(99, 4000)
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    assert abs(mean) < 0.06 and abs(std - 1) < 0.06


@pytest.mark.parametrize("seed", [-1, MAX_SEED + 1])
def test_random_components_rejects_out_of_range_seeds(seed):
    with pytest.raises(ValueError):
        random_components(seed, 3)


def test_effective_components():
    sliders = StyleParams(components=(1.0, -2.0, 0.5), multiplier=2.0)
    assert sliders.effective_components(5) == (2.0, -4.0, 1.0, 0.0, 0.0)
    assert sliders.effective_components(2, image_seed=3) == (2.0, -4.0)

    fixed = StyleParams(components=(1.0,), seed=42, multiplier=0.5)
    assert fixed.effective_components(30) == tuple(v * 0.5 for v in random_components(42, 30))
    assert fixed.effective_components(30, image_seed=7) == fixed.effective_components(30)

    per_image = StyleParams(seed=-1)
    assert per_image.effective_components(30, image_seed=7) == random_components(7, 30)
    assert per_image.effective_components(30, 7) != per_image.effective_components(30, 8)
    with pytest.raises(ValueError, match="image seed"):
        per_image.effective_components(30)
    with pytest.raises(ValueError):
        StyleParams(seed=-3).effective_components(30, image_seed=7)


def test_module_imports_without_torch():
    code = ("import sys; sys.modules['torch'] = None; "
            "from style_components.params import StyleParams; "
            "print(StyleParams.parse(StyleParams(seed=3).to_infotext())[0].seed)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "3"
