#!/usr/bin/env bash
# Set up (first time: a few minutes) and run mmchat. Arguments go to `mmchat`, e.g. `scripts/run.sh chat`.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/scripts/setup-venv.sh"
exec "${MMCHAT_VENV:-$root/.venv}/bin/mmchat" "$@"
