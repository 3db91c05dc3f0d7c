"""Mirrors modules/paths.py / paths_internal.py: where A1111 keeps models and scripts."""
import atexit
import os
import shutil
import tempfile

data_path = os.environ.get("STANDIN_DATA_PATH")
if data_path is None:  # a folder of our own, removed when the test process exits
    data_path = tempfile.mkdtemp(prefix="a1111-standin-")
    atexit.register(shutil.rmtree, data_path, ignore_errors=True)
models_path = os.path.join(data_path, "models")
script_path = data_path
