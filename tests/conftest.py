import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # tests/ helpers (unets.py, ...)
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def sd15_ldm():
    """The real SD1.5 UNet architecture A1111 runs (ldm UNetModel), random weights."""
    from unets import ldm_unet
    return ldm_unet()


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """An icon dataset (32 px) built by the real builder from the drawn fixture themes."""
    from icon_fixture import make_icon_tree
    from style_components.train import dataset
    root = tmp_path_factory.mktemp("icons")
    themes = make_icon_tree(root)
    out = tmp_path_factory.mktemp("data")
    dataset.build(out, themes, size=32, min_themes=2, workers=1, log=lambda *a: None)
    return out
