"""Mirrors modules/paths.py / paths_internal.py: where A1111 keeps models and scripts."""
import os
import tempfile

data_path = os.environ.get("STANDIN_DATA_PATH", tempfile.mkdtemp(prefix="a1111-standin-"))
models_path = os.path.join(data_path, "models")
script_path = data_path
