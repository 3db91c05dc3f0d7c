"""Mirrors modules/ui_settings.py create_setting_component (the branch without a refresh
button): the gradio component the Settings page builds for an option."""
import gradio as gr

from modules.shared import opts


def create_setting_component(key, is_quicksettings=False):
    def fun():
        return opts.data[key] if key in opts.data else opts.data_labels[key].default

    info = opts.data_labels[key]
    t = type(info.default)
    args = info.component_args() if callable(info.component_args) else info.component_args
    if info.component is not None:
        comp = info.component
    elif t == str:
        comp = gr.Textbox
    elif t == int:
        comp = gr.Number
    elif t == bool:
        comp = gr.Checkbox
    else:
        raise Exception(f'bad options item type: {t} for key {key}')
    return comp(label=info.label, value=fun(), elem_id=f"setting_{key}", **(args or {}))
