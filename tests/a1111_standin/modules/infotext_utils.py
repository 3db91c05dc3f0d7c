"""Mirrors modules/infotext_utils.py quote/unquote and parse_generation_parameters (the
"key: value, key: value" last line, values with ',' ':' or newlines JSON-quoted)."""
import json
import re

re_param = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


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


def parse_generation_parameters(x: str) -> dict:
    res = {}
    *lines, lastline = x.strip().split("\n")
    res["Prompt"] = lines[0] if lines else ""
    for k, v in re_param.findall(lastline):
        res[k] = unquote(v)
    return res


def send_to_fields(source_fields, fields, paste_field_names, send_seed=True):
    """Mirrors connect_paste_params_buttons' "Send to img2img/inpaint" binding: the source tab's
    fields whose name is in the list feed, in order, the destination tab's fields of those names
    (fields are (component, name) pairs; a name is an infotext key or a reader function)."""
    names = ['Prompt', 'Negative prompt', 'Steps', 'Face restoration'] + (["Seed"] if send_seed else []) \
        + paste_field_names
    return [f for f, n in source_fields if n in names], [f for f, n in fields if n in names]
