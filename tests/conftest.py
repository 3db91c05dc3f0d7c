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
