#!/usr/bin/env bash
# The style encoder's recipe for a lent GPU (issue 4), as one prepared device call.
#
# Here, once (the device machine reaches no package mirror or icon theme, and carries 64 MiB):
#   bash tools/device_encoder.sh pack /work/data/icons192      # -> .gpu/dataset.tar.xz (~23 MB)
# There, one call of the device tool (its image has torch, timm, accelerate, scikit-learn):
#   run(command="bash tools/device_encoder.sh train 4000 8", carry=[".gpu"], timeout_s=600)
#   -> $OUT: history.json, loss.png, checkpoint.pt and, when the schedule finished, extractor.safetensors
# To resume in a later call, put the returned files in .gpu/run/ and call `train` with the same STEPS.
#
#   train STEPS MINUTES [ARGS...]: STEPS is the cosine schedule's length; the run stops resumably
#   after MINUTES; ARGS go to `style-components train` after the recipe's and override them.
set -euo pipefail
cd "$(dirname "$0")/.."
GPU=.gpu
# the 192 px recipe of MODEL_CARD.md; per-theme 8 and width 32 are what helped on the last GPU run
RECIPE=(--loss ce --size 192 --per-theme 8 --width 32 --mixed-precision bf16 --eval-every 250 --no-progress)

case "${1:-}" in
  pack)
    [ -f "${2:-}/manifest.jsonl" ] || { echo "usage: $0 pack DATASET_DIR (a \`dataset\` build)" >&2; exit 2; }
    mkdir -p "$GPU"
    tar -C "$2" -cJf "$GPU/dataset.tar.xz" manifest.jsonl dataset.json shards
    ls -l "$GPU/dataset.tar.xz"
    ;;
  train)
    [ $# -ge 3 ] || { echo "usage: $0 train STEPS MINUTES [ARGS...]" >&2; exit 2; }
    steps=$2 minutes=$3; shift 3
    : "${OUT:?the device tool sets OUT, the folder whose files come back}"
    work=${TMPDIR:-/tmp}/style_encoder
    rm -rf "$work" && mkdir -p "$work/data"
    tar -C "$work/data" -xJf "$GPU/dataset.tar.xz"
    if [ -d "$GPU/run" ]; then cp -r "$GPU/run" "$work/run"; fi        # a returned run resumes
    nvidia-smi --query-gpu=name,memory.used --format=csv,noheader 2>/dev/null || echo "no GPU: $(nproc) CPU cores"
    status=0
    PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 "${PYTHON:-python3}" -m style_components train \
      "$work/data" "$work/run" "${RECIPE[@]}" --steps "$steps" --max-minutes "$minutes" "$@" || status=$?
    for f in history.json loss.png checkpoint.pt extractor.safetensors; do   # what exists comes back
      if [ -f "$work/run/$f" ]; then cp "$work/run/$f" "$OUT/"; fi
    done
    exit $status
    ;;
  *)
    sed -n '2,12p' "$0" >&2; exit 2 ;;
esac
