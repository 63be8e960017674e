#!/usr/bin/env bash
# Set up the venv (with test extras and the benchmark-only baseline, stock openai-whisper), then run
# the benchmarks: results go to benchmarks/results.json and docs/benchmarks.md. Arguments go to
# `python -m benchmarks` (e.g. --only llm voice).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/scripts/setup-venv.sh" test
py="${MMCHAT_VENV:-$root/.venv}/bin/python"
# openai-whisper without its dependencies: it would pull triton (~1 GB) that a CPU run never uses.
if ! "$py" -c "import whisper.transcribe" 2>/dev/null; then
    "$py" -m pip install --quiet --no-deps openai-whisper==20250625 tiktoken more-itertools numba llvmlite
fi
cd "$root"
QT_QPA_PLATFORM=offscreen OMP_WAIT_POLICY=PASSIVE "$py" -m benchmarks "$@"
