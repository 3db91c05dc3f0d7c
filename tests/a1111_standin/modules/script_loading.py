"""Mirrors modules/script_loading.py load_module(): exec a script file as a fresh module
named after its file (A1111 uses importlib.util.spec_from_file_location(basename, path))."""
import importlib.util
import os


def load_module(path):
    module_spec = importlib.util.spec_from_file_location(os.path.basename(path), path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module
