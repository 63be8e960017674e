#!/usr/bin/env bash
# Rebuild the fusion checkpoint shipped for the default LLM and the default image encoder
# (EfficientNet-Lite0) in assets/fusion/qwen2.5-coder-0.5b-instruct/efficientnet-lite0/, from data made
# here (nothing downloaded). Deterministic (seed 1); measured on a 2-core CPU: assets/fusion/README.md.
#   scripts/train-vision-fusion-asset.sh            # writes the shipped folder
#   scripts/train-vision-fusion-asset.sh --out DIR  # anywhere else
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/scripts/setup-venv.sh" eval  # scikit-image: its bundled photos are part of the data
assets="$root/assets/fusion/qwen2.5-coder-0.5b-instruct"
# 8000 drawings in many shades and on pale backgrounds, 1500 augmented views of scikit-image's training
# photos captioned "a photo", 1200 synthesized clips (the CLIP checkpoint's own). The image branch is
# aligned (slots_mlp over all 7×7 cells of EfficientNet features and cell colours, standardised, into 32
# tokens); the audio branch is the CLIP checkpoint's, bit for bit, with its weight; then answer-loss
# steps on images train the image weight alone. `--start-from DIR` goes on from a checkpoint's
# projectors instead of aligning afresh (how the shipped weights were retrained).
exec "${MMCHAT_VENV:-$root/.venv}/bin/mmchat" train-fusion --seed 1 --images 8000 --photos 1500 --speech 1200 \
    --audio-from "$assets/clip-vit-b-32" \
    --image-projector slots_mlp --image-grid 7 --image-slots 32 --image-stats \
    --align-steps 4500 --steps 60 --train weights --lr 0.05 \
    --eval-limit 20 --no-resume --out "$assets/efficientnet-lite0" "$@"
