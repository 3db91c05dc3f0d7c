"""Mirrors modules/infotext_utils.py quote/unquote and parse_generation_parameters (the
"key: value, key: value" last line, values with ',' ':' or newlines JSON-quoted; a value like
"512x768" becomes "Key-1" and "Key-2", as Size does; keys in skip_fields, by default
opts.infotext_skip_pasting, are dropped). Left out of parse_generation_parameters: extracting
styles from the prompt, and the defaults it fills in for A1111's own fields when missing (Clip
skip, Hires *, RNG, Schedule *, ...), which no extension field reads."""
import json
import re

from modules import shared

re_param_code = r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)'
re_param = re.compile(re_param_code)
re_imagesize = re.compile(r"^(\d+)x(\d+)$")


def quote(text):
    if ',' not in str(text) and '\n' not in str(text) and ':' not in str(text):
        return text
    return json.dumps(text, ensure_ascii=False)


def unquote(text):
    if len(text) == 0 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except Exception:
        return text


def parse_generation_parameters(x: str, skip_fields: list[str] | None = None):
    if skip_fields is None:
        skip_fields = shared.opts.infotext_skip_pasting
    res = {}
    prompt, negative_prompt, done_with_prompt = "", "", False

    *lines, lastline = x.strip().split("\n")
    if len(re_param.findall(lastline)) < 3:
        lines.append(lastline)
        lastline = ''

    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            done_with_prompt = True
            line = line[16:].strip()
        if done_with_prompt:
            negative_prompt += ("" if negative_prompt == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line

    for k, v in re_param.findall(lastline):
        try:
            if v[0] == '"' and v[-1] == '"':  # an empty value raises here: A1111 drops the key
                v = unquote(v)
            m = re_imagesize.match(v)
            if m is not None:
                res[f"{k}-1"] = m.group(1)
                res[f"{k}-2"] = m.group(2)
            else:
                res[k] = v
        except Exception:
            print(f"Error parsing \"{k}: {v}\"")

    res["Prompt"] = prompt
    res["Negative prompt"] = negative_prompt

    for key in skip_fields:
        res.pop(key, None)
    return res


def send_to_fields(source_fields, fields, paste_field_names, send_seed=True):
    """No A1111 counterpart: the "Send to img2img/inpaint" binding that connect_paste_params_buttons
    makes (its `binding.source_tabname` branch), as a function: the source tab's fields whose name
    is in the list feed, in order, the destination tab's fields of those names (fields are
    (component, name) pairs; a name is an infotext key or a reader function)."""
    names = ['Prompt', 'Negative prompt', 'Steps', 'Face restoration'] + (["Seed"] if send_seed else []) \
        + paste_field_names
    return [f for f, n in source_fields if n in names], [f for f, n in fields if n in names]
