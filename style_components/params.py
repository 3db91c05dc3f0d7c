"""One style setting of a generation, and its one-line infotext form.

The infotext is what A1111 writes into PNG info under the key "Style components":

    model: demo [1a2b3c4d], components: 0.3 -1.2 0 0.01, multiplier: 0.5, strength: 0.8,
    blocks: custom, weights: 1 1 0 0.5, range: 0.1-0.9, seed: 1234, refs: "2 images: ..."

(on one line). `components` is always written, the other fields only when they differ from
their defaults. Numbers are written with Python's shortest exact repr, so a parse gives back
the very same floats. Strings holding a separator or an unprintable character are written as
JSON strings. `parse` never raises: it keeps what it can read and describes the rest.
"""

from __future__ import annotations

import json
import math
import operator
import re
from dataclasses import dataclass, fields

from .errors import UsageError
from .layers import PRESET_NAMES

BLOCK_PRESETS = (*PRESET_NAMES, "custom")  # "custom": per-layer weights given in `block_weights`
SEED_PER_IMAGE = -1
# The largest whole number a float keeps exactly: A1111's paste turns a number into a float, and a
# browser holds numbers as floats (torch.Generator would take seeds up to 2**64 - 1).
MAX_SEED = 2**53 - 1

# One way only to match any given number, so that failing matches stay linear in time.
_NUMBER = r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?"
_NUMBER_RE = re.compile(_NUMBER)
_RANGE_RE = re.compile(rf"\s*({_NUMBER})\s*-\s*({_NUMBER})\s*")
_SEED_RE = re.compile(r"[-+]?[0-9]{1,30}")
_HASH_RE = re.compile(r"[0-9a-fA-F]{8}")
_QUOTED_RE = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BARE_UNSAFE = set(',:"[]')
_JSON = json.JSONDecoder()


class _Bad(ValueError):
    """A field value that cannot be read; the message is shown to the user."""


@dataclass(frozen=True)
class StyleParams:
    model: str = ""                        # model name as shown in the dropdown
    model_hash: str = ""                   # 8 hex digits (short sha256 of the adapter file) or ""
    components: tuple[float, ...] = ()     # slider values
    multiplier: float = 1.0                # scales the components
    strength: float = 1.0                  # scales the style term
    blocks: str = "all"                    # one of BLOCK_PRESETS
    block_weights: tuple[float, ...] = ()  # per-layer weights in call order, for "custom"
    start: float = 0.0                     # fraction of the schedule where the style starts
    end: float = 1.0                       # ... and ends
    seed: int | None = None                # None: sliders; -1: each image's seed; >= 0: fixed seed
    refs: str = ""                         # free-text note on reference images

    def __post_init__(self):
        # UI widgets hand over lists, ints and integral float seeds; store one canonical form
        # so that equality and the infotext do not depend on where a value came from.
        def set_(name, value):
            object.__setattr__(self, name, value)  # the dataclass is frozen

        set_("components", tuple(float(v) for v in self.components))
        set_("block_weights", tuple(float(v) for v in self.block_weights))
        for name in ("multiplier", "strength", "start", "end"):
            set_(name, float(getattr(self, name)))
        if self.seed is not None:
            set_("seed", _as_int(self.seed))

    def to_infotext(self) -> str:
        """The one-line infotext; `parse` turns it back into an equal StyleParams."""
        items = []
        if self.model or self.model_hash:
            items.append("model: " + _quote(self.model)
                         + (f" [{_quote(self.model_hash)}]" if self.model_hash else ""))
        items.append("components: " + (_numbers(self.components) or "none"))
        for name in ("multiplier", "strength"):
            if format_number(getattr(self, name)) != format_number(_DEFAULTS[name]):
                items.append(f"{name}: {format_number(getattr(self, name))}")
        if self.blocks != _DEFAULTS["blocks"]:
            items.append("blocks: " + _quote(self.blocks))
        if self.block_weights:
            items.append("weights: " + _numbers(self.block_weights))
        if (format_number(self.start), format_number(self.end)) != (format_number(_DEFAULTS["start"]), format_number(_DEFAULTS["end"])):
            items.append(f"range: {format_number(self.start)}-{format_number(self.end)}")
        if self.seed is not None:
            items.append(f"seed: {self.seed}")
        if self.refs:
            items.append("refs: " + _quote(self.refs))
        return ", ".join(items)

    @classmethod
    def parse(cls, text: str | None) -> tuple[StyleParams, list[str]]:
        """Read an infotext. Never raises: unreadable fields keep their defaults and each
        problem becomes one message. Checks syntax only; call `validate` for the ranges."""
        text = _unwrap("" if text is None else str(text).strip())
        values: dict = {}
        problems: list[str] = []
        seen: set[str] = set()
        for item in _split_items(text):
            if not item.strip():
                continue  # stray or doubled comma: nothing lost
            key, colon, value = item.partition(":")
            key = key.strip().lower()
            if not colon:
                problems.append(f"{_show(item.strip())} is not a 'name: value' field, ignored")
            elif key not in _FIELD_READERS:
                problems.append(f"unknown field {_show(key)} ignored")
            elif key in seen:
                problems.append(f"field {key!r} given twice, the second is ignored")
            else:
                seen.add(key)
                try:
                    values.update(_FIELD_READERS[key](value))
                except _Bad as e:
                    problems.append(f"{key}: {e}")
        return cls(**values), problems

    def validate(self, layers: int | None = None) -> list[str]:
        """Problems that make this setting unusable, as messages; [] when it is fine.
        `layers`: the adapter's number of style layers, to check custom block weights."""
        problems = []
        for name in ("multiplier", "strength", "start", "end"):
            if not math.isfinite(getattr(self, name)):
                problems.append(f"{name}: {format_number(getattr(self, name))} is not a finite number")
        for key, values in (("components", self.components), ("weights", self.block_weights)):
            bad = [v for v in values if not math.isfinite(v)]
            if bad:
                problems.append(f"{key}: {format_number(bad[0])} is not a finite number")
        if math.isfinite(self.start) and math.isfinite(self.end):
            if not 0 <= self.start <= self.end <= 1:
                problems.append(f"range: start {format_number(self.start)} and end {format_number(self.end)}"
                                " must satisfy 0 <= start <= end <= 1")
        if self.blocks not in BLOCK_PRESETS:
            problems.append(f"blocks: unknown preset {_show(self.blocks)}"
                            f" (known: {', '.join(BLOCK_PRESETS)})")
        elif self.blocks == "custom":
            if not self.block_weights:
                problems.append("blocks: 'custom' needs per-layer weights")
            elif layers is not None and len(self.block_weights) != layers:
                problems.append(f"weights: {len(self.block_weights)} given,"
                                f" the adapter has {layers} style layers")
        elif self.block_weights:
            problems.append(f"weights: per-layer weights are only used with blocks 'custom',"
                            f" not {self.blocks!r}")
        if self.model_hash and not _HASH_RE.fullmatch(self.model_hash):
            problems.append(f"model: hash {_show(self.model_hash)} is not 8 hex digits")
        if self.seed is not None and not SEED_PER_IMAGE <= self.seed <= MAX_SEED:
            problems.append(f"seed: {self.seed} is neither -1 (each image's seed)"
                            f" nor a seed from 0 to {MAX_SEED}")
        return problems

    def slider_values(self, k: int, image_seed: int | None = None) -> tuple[float, ...]:
        """The K slider values of one image, before the multiplier. seed None: the sliders,
        padded with 0 or cut to k; -1: random from `image_seed`; >= 0: random from `seed`."""
        if self.seed is None:
            return (self.components + (0.0,) * k)[:k]
        if self.seed == SEED_PER_IMAGE:
            if image_seed is None:
                raise UsageError("seed -1 takes each image's seed, but no image seed was given")
            # any seed A1111 accepts (a typed -5, 2**60 through the API) draws a style
            return random_components(int(image_seed) % (MAX_SEED + 1), k)
        return random_components(self.seed, k)

    def effective_components(self, k: int, image_seed: int | None = None) -> tuple[float, ...]:
        """The K component values used for one image: `slider_values` times the multiplier."""
        return tuple(v * self.multiplier for v in self.slider_values(k, image_seed))


_DEFAULTS = {f.name: f.default for f in fields(StyleParams)}


def random_components(seed: int, k: int) -> tuple[float, ...]:
    """k N(0, 1) slider values from `seed`, rounded to the slider step (0.01) so that typing
    them into the sliders gives the same image. The same on every platform, and the first
    n values do not depend on k."""
    import torch  # lazily: this module must import without torch

    if not 0 <= seed <= MAX_SEED:
        raise UsageError(f"seed {seed} is outside 0..{MAX_SEED}")
    g = torch.Generator().manual_seed(seed)
    # One value per call: torch draws tensors of 16 or more values with a different
    # (vectorised) algorithm, which would make the first values depend on k.
    draws = (torch.randn(1, generator=g, dtype=torch.float64).item() for _ in range(k))
    return tuple(round(v, 2) + 0.0 for v in draws)  # + 0.0 turns -0.0 into 0.0


# -- writing --------------------------------------------------------------------------

def format_number(x: float) -> str:
    """Shortest exact form: repr, with a trailing '.0' dropped ('1', '-0', '1e+16')."""
    r = repr(float(x))
    return r[:-2] if r.endswith(".0") else r


def _numbers(values: tuple[float, ...]) -> str:
    return " ".join(format_number(v) for v in values)


def _quote(s: str) -> str:
    """s as is when it reads back unchanged, else a JSON string with every unprintable
    character escaped, so the infotext stays one printable line."""
    if s and s == s.strip() and s.isprintable() and not _BARE_UNSAFE.intersection(s):
        return s
    return "".join(c if c.isprintable() else _escape(c) for c in json.dumps(s, ensure_ascii=False))


def _escape(c: str) -> str:
    code = ord(c)
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000  # astral: a UTF-16 surrogate pair, as JSON requires
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


# -- reading --------------------------------------------------------------------------

def _unwrap(text: str) -> str:
    """Undo one layer of JSON quoting, as found when the infotext comes back from A1111
    still quoted. Our own infotexts never start with a quote."""
    if len(text) >= 2 and text[0] == text[-1] == '"':
        try:
            inner = json.loads(text)
        except ValueError:
            return text
        return inner.strip() if isinstance(inner, str) else text
    return text


def _split_items(text: str) -> list[str]:
    """Split at commas outside JSON strings; an unclosed quote counts as a plain character."""
    items, start, i = [], 0, 0
    quotes_close = True
    while i < len(text):
        if text[i] == '"' and quotes_close:
            if m := _QUOTED_RE.match(text, i):
                i = m.end()
                continue
            # The failed scan read every later quote as escaped, and a scan from one of
            # them would go on the same way: none can close. Skip them (linear time).
            quotes_close = False
        if text[i] == ",":
            items.append(text[start:i])
            start = i + 1
        i += 1
    items.append(text[start:])
    return items


def _show(s: str, limit: int = 60) -> str:
    """A value quoted for a message, cut short so garbage cannot flood the UI."""
    return repr(s if len(s) <= limit else s[:limit - 3] + "...")


def is_number_text(s: str) -> bool:
    """Whether s is a number as the infotext writes one (no 'nan', '1_0' or non-ASCII digits)."""
    return bool(_NUMBER_RE.fullmatch(s.strip()))


def _number(s: str) -> float:
    s = s.strip()
    if not is_number_text(s):
        # float() would also take 'nan', 'inf', '1_0' and non-ASCII digits
        lowered = s.lower().lstrip("+-")
        if lowered in ("nan", "inf", "infinity"):
            raise _Bad(f"{_show(s)} is not a finite number")
        raise _Bad(f"{_show(s)} is not a number")
    x = float(s)
    if not math.isfinite(x):  # overflow, e.g. 1e999
        raise _Bad(f"{_show(s)} is not a finite number")
    return x


def _number_list(s: str) -> tuple[float, ...]:
    words = s.split()
    if words == ["none"]:
        return ()
    values = []
    for i, w in enumerate(words, 1):
        try:
            values.append(_number(w))
        except _Bad as e:
            raise _Bad(f"value {i} of {len(words)}: {e}") from None
    return tuple(values)


def _string(s: str, stop: str = "") -> tuple[str, str]:
    """Read a JSON string or a bare word at the start of s (a bare one ends before any
    character of `stop`); returns it and the rest of s."""
    s = s.lstrip()
    if s.startswith('"'):
        try:
            value, end = _JSON.raw_decode(s)
        except ValueError:
            raise _Bad(f"{_show(s)} is not a valid quoted string (unclosed quote?)") from None
        return value, s[end:]
    end = next((i for i, c in enumerate(s) if c in stop), len(s))
    return s[:end].strip(), s[end:]


def _whole_string(s: str) -> str:
    value, rest = _string(s)
    if rest.strip():
        raise _Bad(f"unexpected {_show(rest.strip())} after the quoted text")
    return value


def _read_model(s: str) -> dict:
    name, rest = _string(s, stop="[")
    rest = rest.strip()
    if not rest:
        return {"model": name, "model_hash": ""}
    if not rest.startswith("["):
        raise _Bad(f"unexpected {_show(rest)} after the model name")
    model_hash, tail = _string(rest[1:], stop="]")
    tail = tail.strip()
    if not tail.startswith("]"):
        raise _Bad(f"the hash in {_show(s.strip())} is not closed with ']'")
    if tail != "]":
        raise _Bad(f"unexpected {_show(tail[1:].strip())} after the hash")
    return {"model": name, "model_hash": model_hash}


def _read_range(s: str) -> dict:
    m = _RANGE_RE.fullmatch(s)
    if not m:
        raise _Bad(f"{_show(s.strip())} is not 'start-end' (e.g. 0.2-0.8)")
    return {"start": _number(m[1]), "end": _number(m[2])}


def _read_seed(s: str) -> dict:
    s = s.strip()
    if not _SEED_RE.fullmatch(s):
        raise _Bad(f"{_show(s)} is not a whole number")
    return {"seed": int(s)}


_FIELD_READERS = {
    "model": _read_model,
    "components": lambda s: {"components": _number_list(s)},
    "multiplier": lambda s: {"multiplier": _number(s)},
    "strength": lambda s: {"strength": _number(s)},
    "blocks": lambda s: {"blocks": _whole_string(s)},
    "weights": lambda s: {"block_weights": _number_list(s)},
    "range": _read_range,
    "seed": _read_seed,
    "refs": lambda s: {"refs": _whole_string(s)},
}


def _as_int(v) -> int:
    """An int from an int or an integral float (gradio's Number gives floats)."""
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return operator.index(v)
