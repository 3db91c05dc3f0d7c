"""Style Components: style control for Stable Diffusion through interpretable style components.

The package imports nothing heavy at import time (A1111 imports extensions at start-up);
each submodule loads torch & co. when it is first used.
"""

__version__ = "0.1.0"
