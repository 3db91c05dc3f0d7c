"""Style Components: style control for Stable Diffusion through interpretable style components.

    from style_components import Adapter, StyleSpace, apply, cfg_rows

Importing the package loads nothing heavy (A1111 imports extensions at start-up): each
name below is imported from its module, with torch & co., on first use.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "Adapter": "adapter",
    "StyleSpace": "space",
    "Extractor": "extract",
    "StyleParams": "params",
    "apply": "inject",
    "remove_all": "inject",
    "cfg_rows": "inject",
    "guidance_rows": "inject",
    "NULL": "inject",
    "find_attn2": "layers",
    "PRESETS": "layers",
    "StyleComponentsError": "errors",
    "ModelFileError": "errors",
    "IncompatibleModelError": "errors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
