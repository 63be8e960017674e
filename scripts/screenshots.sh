#!/usr/bin/env bash
# Refresh docs/screenshots/ from the test suite's renderings (tests/test_screenshots.py writes them to
# test-results/screenshots/): the window in the light and dark theme, showing a conversation the real
# shipped models have there and then about a real photo and a rendered screenshot, and the first-run
# welcome. Offscreen, none of your data. Arguments go to pytest.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${MMCHAT_VENV:-$root/.venv}/bin/python
cd "$root"
QT_QPA_PLATFORM=offscreen "$python" -m pytest -q -p no:cacheprovider tests/test_screenshots.py "$@"
mkdir -p docs/screenshots
for name in app-light app-dark welcome; do
    cp "test-results/screenshots/$name.png" "docs/screenshots/$name.png"
done
echo "mmchat: refreshed docs/screenshots/ (app-light, app-dark, welcome)" >&2
