"""Mirrors modules/scripts.py: Script base class, AlwaysVisible, scripts_data, ScriptRunner.

ScriptRunner() takes no arguments and initialize_scripts(is_img2img) makes its scripts from
scripts_data, as A1111's do. The difference: A1111 gives each always-on script its slice of
p.script_args (args_from, args_to) while building the UI (create_script_ui counts the controls
its ui() returns); without gradio, set_args_ranges(n_args) does that. The hooks run the
always-on scripts in load order (A1111: ordered_scripts, the same order unless a script asks
otherwise), and catch and report every exception a script raises (as A1111's do), so a failing
script never stops the generation; tests read modules.errors.reported.
"""
import os
from collections import namedtuple

from modules import errors, script_loading

AlwaysVisible = object()
ScriptClassData = namedtuple("ScriptClassData", ["script_class", "path", "basedir", "module"])
scripts_data: list = []


def basedir():
    """Mirrors scripts.basedir(): the extension folder of the script being loaded."""
    return current_basedir


current_basedir = os.getcwd()


class Script:
    name = None
    section = None
    filename = None
    args_from = None
    args_to = None
    alwayson = False
    is_txt2img = False
    is_img2img = False
    infotext_fields = None
    paste_field_names = None
    api_info = None

    def title(self):
        raise NotImplementedError

    def ui(self, is_img2img):
        pass

    def show(self, is_img2img):
        return True

    def setup(self, p, *args):
        pass

    def before_process(self, p, *args):
        pass

    def process(self, p, *args):
        pass

    def before_process_batch(self, p, *args, **kwargs):
        pass

    def process_batch(self, p, *args, **kwargs):
        pass

    def process_before_every_sampling(self, p, *args, **kwargs):
        pass

    def postprocess_batch(self, p, *args, **kwargs):
        pass

    def postprocess(self, p, processed, *args):
        pass

    def before_hr(self, p, *args):
        pass

    def elem_id(self, item_id):
        return f"{'img2img' if self.is_img2img else 'txt2img'}_{(self.title() or '').lower().replace(' ', '_')}_{item_id}"


def load_script(path, extension_dir):
    """No A1111 counterpart: what A1111's load_scripts() does for each script file of an
    extension: load the file as a module and register its Script subclasses in scripts_data."""
    global current_basedir
    current_basedir = extension_dir
    module = script_loading.load_module(path)
    for key, cls in module.__dict__.items():
        if isinstance(cls, type) and issubclass(cls, Script) and cls is not Script:
            scripts_data.append(ScriptClassData(cls, path, extension_dir, module))
    return module


class ScriptRunner:
    """Mirrors ScriptRunner for always-on scripts: args slices and the per-hook error handling."""

    def __init__(self):
        self.scripts = []
        self.selectable_scripts = []
        self.alwayson_scripts = []
        self.inputs = [None]  # A1111 reserves args[0] for the selectable script's index

    def initialize_scripts(self, is_img2img):
        self.scripts.clear()
        self.alwayson_scripts.clear()
        self.selectable_scripts.clear()
        for script_data in scripts_data:
            try:
                script = script_data.script_class()
            except Exception:
                errors.report(f"Error # failed to initialize Script {script_data.module}: ", exc_info=True)
                continue
            script.filename = script_data.path
            script.is_txt2img = not is_img2img
            script.is_img2img = is_img2img
            script.tabname = "img2img" if is_img2img else "txt2img"
            visibility = script.show(script.is_img2img)
            if visibility == AlwaysVisible:
                self.scripts.append(script)
                self.alwayson_scripts.append(script)
                script.alwayson = True
            elif visibility:
                self.scripts.append(script)
                self.selectable_scripts.append(script)

    def set_args_ranges(self, n_args):
        """No A1111 counterpart: what create_script_ui does for each always-on script when A1111
        builds the UI, without gradio: n_args(script) says how many controls its ui() makes."""
        n = len(self.inputs)
        for script in self.alwayson_scripts:
            script.args_from, script.args_to = n, n + n_args(script)
            n = script.args_to

    def _call(self, method, p, *extra, **kwargs):
        """No A1111 counterpart: the loop each hook of A1111's ScriptRunner repeats."""
        for script in self.alwayson_scripts:
            try:
                getattr(script, method)(p, *extra, *p.script_args[script.args_from:script.args_to], **kwargs)
            except Exception:
                errors.report(f"Error running {method}: {script.filename}", exc_info=True)

    def before_process(self, p):
        self._call("before_process", p)

    def process(self, p):
        self._call("process", p)

    def before_process_batch(self, p, **kwargs):
        self._call("before_process_batch", p, **kwargs)

    def process_batch(self, p, **kwargs):
        self._call("process_batch", p, **kwargs)

    def process_before_every_sampling(self, p, **kwargs):
        self._call("process_before_every_sampling", p, **kwargs)

    def before_hr(self, p):
        self._call("before_hr", p)

    def postprocess_batch(self, p, images, **kwargs):
        self._call("postprocess_batch", p, images=images, **kwargs)

    def postprocess(self, p, processed):
        self._call("postprocess", p, processed)
