"""The package stays light to import (A1111 imports extensions at start-up) and exports its API."""

import subprocess
import sys

import style_components


def test_import_loads_no_heavy_module():
    code = ("import sys, style_components, style_components.errors; "
            "heavy = [m for m in ('torch', 'numpy', 'timm', 'safetensors', 'sklearn', 'PIL') if m in sys.modules]; "
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_lazy_exports_resolve():
    for name in style_components.__all__:
        assert getattr(style_components, name) is not None, name
    from style_components.inject import apply
    assert style_components.apply is apply
