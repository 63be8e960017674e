"""Render the app icon from its SVG source: PNGs 16..512 px (freedesktop hicolor layout), .ico, .icns.

Usage: python scripts/render_icons.py   (no display needed; the outputs are committed, ~100 KB in all)
Qt's QSvgRenderer draws the PNGs; Pillow packs the Windows .ico and the macOS .icns from them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PIL import Image  # noqa: E402
from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtGui import QGuiApplication, QImage, QPainter  # noqa: E402
from PySide6.QtSvg import QSvgRenderer  # noqa: E402

ICONS = Path(__file__).resolve().parent.parent / "assets" / "icons"
SOURCE = ICONS / "mmchat.svg"
SIZES = (16, 22, 24, 32, 48, 64, 128, 256, 512)  # px, square
ICO_SIZES = (16, 24, 32, 48, 64, 128, 256)  # px; Windows reads at most 256
ICNS_SIZES = (16, 32, 64, 128, 256, 512)  # px


def png_path(size: int) -> Path:
    return ICONS / "hicolor" / f"{size}x{size}" / "apps" / "mmchat.png"


def render(renderer: QSvgRenderer, size: int) -> QImage:
    image = QImage(size, size, QImage.Format.Format_ARGB32)
    image.fill(Qt.GlobalColor.transparent)
    painter = QPainter(image)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    renderer.render(painter)
    painter.end()
    return image


def main() -> int:
    app = QGuiApplication.instance() or QGuiApplication(sys.argv[:1])  # noqa: F841  (QImage needs it)
    renderer = QSvgRenderer(str(SOURCE))
    if not renderer.isValid():
        print(f"cannot read {SOURCE}", file=sys.stderr)
        return 1
    for size in SIZES:
        path = png_path(size)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not render(renderer, size).save(str(path), "PNG"):
            print(f"cannot write {path}", file=sys.stderr)
            return 1
    largest = Image.open(png_path(max(SIZES))).convert("RGBA")
    largest.save(ICONS / "mmchat.ico", sizes=[(s, s) for s in ICO_SIZES])
    largest.save(ICONS / "mmchat.icns", sizes=[(s, s) for s in ICNS_SIZES])
    print(f"rendered {len(SIZES)} PNG sizes, mmchat.ico and mmchat.icns into {ICONS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
