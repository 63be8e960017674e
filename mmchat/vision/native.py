"""Importing OpenCV and onnxruntime in a worker without freezing the window.

An extension module is mapped by ``dlopen`` inside the import, with the GIL held, so every other
thread waits for it, the GUI's too. When its shared libraries are not in the page cache (the first
picture after a reboot, or once other programs have pushed them out), the disk reads happen there:
measured with the files evicted, ``import cv2`` (70 MB, plus 84 MB of libraries its wheel bundles)
held the GIL 160-210 ms and the window froze that long; with the files cached, 21 ms. So the files
are read first, by plain reads, which release the GIL; the import then only links. (onnxruntime's
module set-up holds the GIL 30-45 ms cached or not; that part cannot be moved.)
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import re
import sys
from pathlib import Path
from types import ModuleType

log = logging.getLogger(__name__)

# The wheels a top-level package may come from, most likely first (looked up by name: scanning
# every installed distribution for the owner of a package took 0.3 s).
DISTRIBUTIONS = {
    "cv2": ("opencv-python-headless", "opencv-python", "opencv-contrib-python-headless", "opencv-contrib-python"),
    "onnxruntime": ("onnxruntime",),
}
_LIBRARY = re.compile(r"\.(so|dylib|dll|pyd)(\.[\d.]+)?$")  # libfoo.so.1.2, cv2.abi3.so
_CHUNK = 1 << 20


def import_cached(module: str) -> ModuleType:
    """``import module``, its wheel's shared libraries read into the page cache first."""
    if module not in sys.modules:
        for path in shared_libraries(module.partition(".")[0]):
            _read(path)
    return importlib.import_module(module)


def shared_libraries(package: str) -> list[Path]:
    """The shared libraries the wheel of top-level ``package`` installed (none if it is not installed)."""
    for name in DISTRIBUTIONS.get(package, (package,)):
        try:
            files = importlib.metadata.distribution(name).files or ()
        except importlib.metadata.PackageNotFoundError:
            continue
        return [Path(f.locate()) for f in files if _LIBRARY.search(f.name)]
    return []


def _read(path: Path) -> None:
    buffer = bytearray(_CHUNK)
    try:
        with path.open("rb", buffering=0) as f:
            while f.readinto(buffer):
                pass
    except OSError as exc:  # only a head start: the import itself says what is wrong
        log.debug("could not read %s ahead of its import: %s", path, exc)
