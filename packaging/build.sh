#!/usr/bin/env bash
# Build the one-folder app bundle dist/mmchat/ with PyInstaller, then smoke-run it offscreen:
# `mmchat app --demo --screenshot` must write a PNG and `mmchat doctor --json` must report the bundled models.
# Exits non-zero if the build or either run fails. Prints the build time and the bundle size.
#   PYTHON=...                 interpreter whose environment is bundled (default: build/portable-venv's, which
#                              packaging/portable-venv.sh makes: .venv with a portable llama.cpp, every CPU variant)
#   MMCHAT_BUNDLE_MODELS=all   all | default | none: which model packages' files go in (see mmchat.spec)
#   MMCHAT_SMOKE_CHAT=1        also answer one chat message with the bundled LLM (minutes on first run)
#   MMCHAT_SKIP_BUILD=1        only smoke-run the bundle already in dist/mmchat
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dist="$root/dist"
cd "$root"

start=$(date +%s)
if [[ "${MMCHAT_SKIP_BUILD:-0}" != 1 ]]; then
    # Never .venv's own llama.cpp: it is built for this CPU and would crash (SIGILL) on an older one.
    python=${PYTHON:-$("$root/packaging/portable-venv.sh")}
    if ! "$python" -m PyInstaller --version >/dev/null 2>&1; then
        echo "mmchat: installing PyInstaller into $("$python" -c 'import sys; print(sys.prefix)')" >&2
        "$python" -m pip --disable-pip-version-check -q install "pyinstaller>=6.10"
    fi
    "$python" -m PyInstaller --noconfirm --log-level WARN --distpath "$dist" --workpath "$root/build/pyinstaller" \
        "$root/packaging/mmchat.spec"
fi
python=${python:-${PYTHON:-$root/.venv/bin/python}}  # the smoke checks below need any python
build_s=$(( $(date +%s) - start ))
app="$dist/mmchat/mmchat"
[[ -x "$app" ]] || { echo "mmchat: no bundle at $app" >&2; exit 1; }
echo "mmchat: $app built in ${build_s} s; bundle size $(du -sh "$dist/mmchat" | cut -f1)" >&2

# Smoke runs, with a throwaway data folder (the user's conversations and settings are never read).
smoke=$(mktemp -d)
trap 'rm -rf "$smoke"' EXIT
export QT_QPA_PLATFORM=offscreen MMCHAT_DATA_DIR="$smoke/data"
"$app" app --demo --screenshot "$smoke/out.png"  # the throwaway data folder has no conversation
"$python" - "$smoke/out.png" <<'PY'
import sys
from pathlib import Path
data = Path(sys.argv[1]).read_bytes()
assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, f"{sys.argv[1]}: not a real screenshot"
print(f"mmchat: smoke screenshot ok ({len(data) // 1024} KiB)", file=sys.stderr)
PY
"$app" doctor --json > "$smoke/doctor.json"
"$python" - "$smoke/doctor.json" "${MMCHAT_BUNDLE_MODELS:-all}" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
missing = [m["name"] for m in report["models"] if m["state"].startswith("missing")
           and (sys.argv[2] == "all" or (sys.argv[2] == "default" and m["default"]))]
assert not missing, f"the bundle lacks the model files of {missing}"
assert report["features"]["qt"]["ok"], report["features"]["qt"]
print(f"mmchat: smoke doctor ok (mmchat {report['mmchat']}, assets {report['paths']['assets']})", file=sys.stderr)
PY
if command -v desktop-file-validate >/dev/null; then
    desktop-file-validate "$root/packaging/mmchat.desktop"
    echo "mmchat: desktop-file-validate packaging/mmchat.desktop: ok" >&2
fi
if [[ "${MMCHAT_SMOKE_CHAT:-0}" == 1 ]]; then
    "$app" chat --temporary --seed 0 --max-tokens 16 --once "What is the capital of France? One word."
fi
echo "mmchat: bundle ok: $dist/mmchat ($(du -sh "$dist/mmchat" | cut -f1), built in ${build_s} s)" >&2
