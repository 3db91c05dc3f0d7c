"""A1111 runs this file (with its own `launch` module) when the extension is installed or the
WebUI starts. It installs only what A1111's environment lacks, and never touches torch,
torchvision, gradio, numpy or any other package A1111 pins: timm (the style extractor's
backbone; usually already there through open-clip-torch) is installed with --no-deps."""

import launch

# package to check -> pip arguments; none of these may pull in a different torch
NEEDED = {
    "safetensors": "safetensors",
    "timm": "timm --no-deps",
}

for package, pip_args in NEEDED.items():
    if not launch.is_installed(package):
        launch.run_pip(f"install {pip_args}", f"{package} for Style Components")
