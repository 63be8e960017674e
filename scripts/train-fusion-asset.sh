#!/usr/bin/env bash
# Rebuild the fusion checkpoint shipped in assets/fusion/ for the default LLM and CLIP (its seeded random
# init, whose projector the app uses when CLIP is chosen without fetched weights), from data generated
# here (nothing downloaded). Deterministic (seed 1). Measured on a 2-core CPU: see
# assets/fusion/README.md for the time each stage took and the held-out evaluation.
#   scripts/train-fusion-asset.sh            # writes assets/fusion/qwen2.5-coder-0.5b-instruct/clip-vit-b-32/
#   scripts/train-fusion-asset.sh --out DIR  # anywhere else
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/scripts/setup-venv.sh"
# These are train-fusion's defaults, spelled out. Each image becomes 32 tokens (slots_mlp over all 7×7
# CLIP patches, standardised) trained to spell its caption in the LLM's input embeddings; each clip one
# token per word piece heard (ctc_mlp, CTC on 80 ms stacks of Whisper frames). Alignment steps only, no
# LLM forward pass; no answer-loss steps (--steps 0): on this CPU they cost 6-7 s each and undid part
# of the alignment.
exec "${MMCHAT_VENV:-$root/.venv}/bin/mmchat" train-fusion --image-encoder clip-vit-b-32 --seed 1 --images 8000 --speech 1200 \
    --image-projector slots_mlp --audio-projector ctc_mlp --image-grid 7 --image-slots 32 --image-stats \
    --align-steps 4500 --steps 0 \
    --eval-limit 20 --no-resume --out "$root/assets/fusion/qwen2.5-coder-0.5b-instruct/clip-vit-b-32" "$@"
