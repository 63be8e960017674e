#!/usr/bin/env bash
# Make build/portable-venv, the environment packaging/build.sh bundles: the developer's .venv with a
# portable llama.cpp laid over it. Prints its python on stdout. A second run with nothing changed takes a second.
#
# Why: .venv's llama.cpp is built for this machine's CPU (GGML_NATIVE, scripts/setup-venv.sh): fast here,
# SIGILL on an older one. The bundle carries llama.cpp's dynamic-backend build instead: libggml without CPU
# code, and one libggml-cpu-<variant>.so per x86 level (x64, sse42, sandybridge, haswell, skylakex, icelake,
# zen4, alderlake, sapphirerapids, ...) that ggml scores against the CPU it runs on, loading the best
# (mmchat.llm.gguf.load_backends asks it to: llama-cpp-python does not look in its own lib folder).
#   GGML_NATIVE=OFF            nothing tuned to the build machine, libggml-base and libllama included
#   GGML_BACKEND_DL=ON         backends as modules loaded at run time, which ...
#   GGML_CPU_ALL_VARIANTS=ON   ... every CPU variant needs
#   GGML_OPENMP=OFF            ggml's own thread pool, as in .venv (why: scripts/setup-venv.sh)
#   CMAKE_INSTALL_BINDIR=llama_cpp/lib
#                              ggml installs backend modules to CMAKE_INSTALL_BINDIR, by default "bin" under the
#                              wheel's root (site-packages/bin); llama-cpp-python's CMakeLists copies only targets
#                              it names (ggml-cpu, not ggml-cpu-haswell) to llama_cpp/lib. This puts the variants
#                              beside libggml.so, where load_backends and the spec look.
#
# How: pip builds one wheel per (version, flags, machine) into a cache folder (10-25 minutes on 2 cores,
# once); pip's own wheel cache is keyed by version only and could hand back the native build, or hand the
# portable one to setup-venv.sh. The wheel goes into a venv holding only it (and PyInstaller, which build.sh
# adds) that sees .venv's site-packages through a .pth file, behind its own: the bundle gets exactly .venv's
# packages, .venv is never written to, and its 2.4 GB are not copied. A venv of its own built from
# pyproject.toml would do too, at the cost of a second torch and a second set of model packages to keep in step.
#   MMCHAT_DEV_VENV        the environment laid under it (default: .venv)
#   MMCHAT_PORTABLE_VENV   where (default: build/portable-venv)
#   MMCHAT_LLAMA_WHEELS    the wheel cache (default: build/llama-wheels; share it between checkouts)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dev=${MMCHAT_DEV_VENV:-$root/.venv}
venv=${MMCHAT_PORTABLE_VENV:-$root/build/portable-venv}
wheels=${MMCHAT_LLAMA_WHEELS:-$root/build/llama-wheels}
LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON -DGGML_OPENMP=OFF"
LLAMA_CMAKE_ARGS+=" -DCMAKE_INSTALL_BINDIR=llama_cpp/lib"

[[ -x "$dev/bin/python" ]] || { echo "mmchat: no $dev/bin/python: run scripts/setup-venv.sh first" >&2; exit 1; }
version=$("$dev/bin/python" -c "import importlib.metadata as m; print(m.version('llama-cpp-python'))")
key=$(printf '%s\n' "$version" "$LLAMA_CMAKE_ARGS" "$(uname -m)" | sha256sum | cut -c1-16)
cache="$wheels/$version-$key"
if ! compgen -G "$cache/llama_cpp_python-*.whl" >/dev/null; then
    echo "mmchat: building a portable llama.cpp (llama-cpp-python $version, every CPU variant): 10-25 minutes, once" >&2
    rm -rf "$cache.partial"
    CMAKE_ARGS="$LLAMA_CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
        "$dev/bin/python" -m pip --disable-pip-version-check -q wheel --no-deps --no-cache-dir -w "$cache.partial" \
        "llama-cpp-python==$version"
    mv "$cache.partial" "$cache"  # only a finished build is found next time
fi
wheel=$(compgen -G "$cache/llama_cpp_python-*.whl" | head -n 1)

stamp="$venv/.mmchat-portable"
want="$dev $wheel"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -x "$venv/bin/python" ]]; then
    echo "$venv/bin/python"
    exit 0
fi
if [[ ! -x "$venv/bin/python" ]]; then
    echo "mmchat: creating $venv over $dev" >&2
    "$dev/bin/python" -m venv "$venv"  # on .venv's base interpreter
fi
# Plain paths, so .venv's own .pth files stay out (its editable mmchat points at one checkout; the spec
# and PYTHONPATH choose the checkout).
sitedirs='import sysconfig; print("\n".join(dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))))'
purelib=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
"$dev/bin/python" -c "$sitedirs" > "$purelib/mmchat-dev-venv.pth"
"$venv/bin/python" -m pip --disable-pip-version-check -q install --no-deps --no-index --force-reinstall "$wheel"

# The check: this llama_cpp, not .venv's, with its CPU variants beside it, picks one for this CPU.
PYTHONPATH="$root" "$venv/bin/python" - "$venv" <<'PY' >&2
import sys
from pathlib import Path
import llama_cpp
import llama_cpp.llama_cpp as bindings
from mmchat.llm import gguf
lib = Path(bindings._base_path)
assert lib.is_relative_to(Path(sys.argv[1]).resolve()), f"{lib}: not the portable build"
variants = sorted(p.name for p in lib.glob("libggml-cpu-*.so"))
assert variants, f"no libggml-cpu-*.so in {lib}"
gguf.load_backends()
info = bindings.llama_print_system_info().decode()
assert info.startswith("CPU : "), f"no CPU backend registered: {info!r}"
print(f"mmchat: portable llama-cpp-python {llama_cpp.__version__} in {lib}, {len(variants)} CPU variants;",
      f"this CPU gets {info}")
PY
echo "$want" > "$stamp"
echo "$venv/bin/python"
