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
