"""The script's gradio UI builds with A1111's gradio (3.41.2) and matches the argument layout.

Skipped where gradio is absent (the project's .venv); CI runs it in an environment with A1111's
pins: gradio==3.41.2 fastapi==0.94.0 httpx==0.24.1 'pydantic<2'."""

import pytest

gr = pytest.importorskip("gradio")

import a1111_env  # noqa: E402
from style_components import script_args as sargs  # noqa: E402


@pytest.fixture(scope="module")
def module(tmp_path_factory):
    return a1111_env.load_script(tmp_path_factory.mktemp("models"))


def test_accordion_controls_follow_the_argument_layout(module):
    script = module.StyleComponentsScript()
    with gr.Blocks():
        controls = script.ui(False)
    assert len(controls) == sargs.N_ARGS
    from modules.ui_components import InputAccordion
    assert isinstance(controls[0], InputAccordion)
    labels = [getattr(c, "label", None) for c in controls]
    assert labels[1:4] == ["Style model", "Multiplier", "Strength"]
    assert labels[sargs.ALL_NAMES.index("c1")] == "Style component 1"
    values = [c.value for c in controls]
    parsed = sargs.parse(values)  # the UI's initial values are valid, disabled arguments
    assert parsed.enabled is False and parsed.params.components == ()
    assert len(script.infotext_fields) == sargs.N_ARGS - 1  # every control but the image upload
    assert script.paste_field_names == [sargs.INFOTEXT_KEY]


def test_extension_tab_builds(module):
    with gr.Blocks():
        tabs = module.on_ui_tabs()
    assert tabs[0][1:] == ("Style Components", "style_components")
