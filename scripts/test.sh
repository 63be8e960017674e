#!/usr/bin/env bash
# Set up the venv with test extras and run the whole test suite. Arguments go to pytest.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/scripts/setup-venv.sh" test
cd "$root"
status=0
QT_QPA_PLATFORM=offscreen "${MMCHAT_VENV:-$root/.venv}/bin/python" -m pytest "$@" || status=$?
if [[ $status -eq 5 ]]; then
    echo "mmchat: pytest collected no tests; that is a failure" >&2
    exit 1
fi
exit $status
