#!/usr/bin/env bash
# Creates .venv with everything the library, its tests and benchmarks need. Idempotent.
# torch comes first, pinned to the builds this project's machines have on disk (timm needs torchvision,
# and PyPI's torchvision only imports beside the matching torch).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# pip on these machines warns about every missing local index folder: keep its errors, drop that noise
pip_install() { .venv/bin/python -m pip --disable-pip-version-check -q install "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }; }
case "$(uname -m)" in
  aarch64|arm64) TORCH="torch==2.9.1 torchvision==0.24.1" ;;
  *) TORCH="torch==2.14.1 torchvision==0.29.1" ;;
esac
pip_install $TORCH
.venv/bin/python -c "import torch, torchvision" # fail here, clearly, if the pair does not import
pip_install -e ".[test,ui]"  # ui: A1111's gradio pins, so the UI tests build the real widgets
# A1111's `ldm` package; its declared pins (CUDA torch, old transformers) break Python 3.11: no deps.
pip_install --no-deps stable-diffusion-sdkit
# CLIP for the SD1.x adapter-training path: no deps, or pip would replace A1111's pydantic 1 pin with 2
pip_install --no-deps transformers==5.23.0 tokenizers==0.23.3
.venv/bin/python -c "import style_components, ldm.modules.attention, diffusers, timm, sklearn, gradio, transformers"
echo "set up: .venv"
