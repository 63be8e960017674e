"""Small widgets for attachments: image thumbnails, a larger image viewer, and a voice-clip chip."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable

from PySide6.QtCore import QBuffer, QByteArray, QRectF, QSize, Qt, Signal
from PySide6.QtGui import QColor, QImage, QImageReader, QPainter, QPainterPath, QPixmap
from PySide6.QtWidgets import (QDialog, QHBoxLayout, QLabel, QScrollArea, QSizePolicy, QToolButton,
                               QVBoxLayout, QWidget)

from mmchat_ui import icons, theme

log = logging.getLogger(__name__)

THUMB_SIDE = 64  # px, composer thumbnails
MESSAGE_THUMB_SIDE = 200  # px, thumbnails in sent messages
WAVE_BARS = 36


def decode_image(data: bytes, *, max_side: int | None = None) -> QImage:
    """Encoded image bytes as a QImage, scaled down on reading to fit ``max_side`` if given."""
    array = QByteArray(data)
    buffer = QBuffer(array)  # the reader reads through these: they must outlive it
    reader = QImageReader(buffer)
    if max_side is not None:
        size = reader.size()
        if size.isValid() and max(size.width(), size.height()) > max_side:
            reader.setScaledSize(size.scaled(max_side, max_side, Qt.AspectRatioMode.KeepAspectRatio))
    return reader.read()


def encoded_size(data: bytes) -> QSize:
    """The pixel size of encoded image bytes, from the header alone."""
    array = QByteArray(data)
    buffer = QBuffer(array)
    return QImageReader(buffer).size()


def rounded_pixmap(image: QImage, size: QSize, *, radius: float, dpr: float) -> QPixmap:
    """``image`` scaled to fit ``size`` (logical px) with rounded corners, sharp at ``dpr``."""
    scaled = image.scaled(size * dpr, Qt.AspectRatioMode.KeepAspectRatio,
                          Qt.TransformationMode.SmoothTransformation)
    pixmap = QPixmap(scaled.size())
    pixmap.fill(Qt.GlobalColor.transparent)
    painter = QPainter(pixmap)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    path = QPainterPath()
    path.addRoundedRect(QRectF(0, 0, scaled.width(), scaled.height()), radius * dpr, radius * dpr)
    painter.setClipPath(path)
    painter.drawImage(0, 0, scaled)
    painter.end()
    pixmap.setDevicePixelRatio(dpr)
    return pixmap


class Thumbnail(QLabel):
    """A clickable image thumbnail; ``clicked`` carries the image to show larger.

    It draws from ``preview`` (a copy a little larger than the thumbnail); ``full`` decodes the
    whole picture only when it is asked for, since decoding a photo on the GUI thread stalls it."""

    clicked = Signal(QImage)

    def __init__(self, preview: QImage, *, full: Callable[[], QImage] | None = None, full_size: QSize | None = None,
                 side: int = MESSAGE_THUMB_SIDE, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("thumb")
        self.preview = preview
        self._full = full
        self.full_size = full_size if full_size is not None else preview.size()
        self.side = side
        self.setCursor(Qt.CursorShape.PointingHandCursor)
        self.setToolTip(f"{self.full_size.width()} × {self.full_size.height()} — click to view larger")
        self.setSizePolicy(QSizePolicy.Policy.Fixed, QSizePolicy.Policy.Fixed)
        self._render()

    @property
    def image(self) -> QImage:
        """The whole picture."""
        return self._full() if self._full is not None else self.preview

    def _render(self) -> None:
        dpr = self.devicePixelRatioF() or 1.0
        pixmap = rounded_pixmap(self.preview, QSize(self.side, self.side), radius=8, dpr=dpr)
        self.setPixmap(pixmap)
        self.setFixedSize(pixmap.deviceIndependentSize().toSize())

    def mouseReleaseEvent(self, event) -> None:
        if event.button() == Qt.MouseButton.LeftButton and self.rect().contains(event.position().toPoint()):
            self.clicked.emit(self.image)
        super().mouseReleaseEvent(event)


class PendingThumbnail(QWidget):
    """A composer thumbnail with a remove (×) button in its corner."""

    remove_requested = Signal(object)  # self
    clicked = Signal(QImage)

    def __init__(self, preview: QImage, name: str, full_size: QSize, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.name = name
        self.thumb = Thumbnail(preview, full_size=full_size, side=THUMB_SIDE, parent=self)
        self.thumb.clicked.connect(self.clicked)
        self.thumb.setToolTip(f"{name} — {full_size.width()} × {full_size.height()}")
        self.remove_button = QToolButton(self)
        self.remove_button.setObjectName("removeAttachment")
        self.remove_button.setIcon(icons.icon("close", "#ffffff"))
        self.remove_button.setIconSize(QSize(12, 12))
        self.remove_button.setToolTip(f"Remove {name}")
        self.remove_button.setStyleSheet("QToolButton { background: rgba(0,0,0,150); border-radius: 9px; padding: 2px; }")
        self.remove_button.setFixedSize(18, 18)
        self.remove_button.clicked.connect(lambda: self.remove_requested.emit(self))
        size = self.thumb.size()
        self.setFixedSize(size.width() + 6, size.height() + 6)
        self.thumb.move(0, 6)
        self.remove_button.move(size.width() - 12, 0)


class ImageViewer(QDialog):
    """The image at (nearly) full size; Esc or a click closes it."""

    def __init__(self, image: QImage, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle(f"Image — {image.width()} × {image.height()}")
        self.setModal(True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        screen = (parent.screen() if parent is not None else None)
        available = screen.availableGeometry().size() * 0.9 if screen is not None else QSize(1200, 900)
        target = image.size().scaled(available, Qt.AspectRatioMode.KeepAspectRatio) \
            if image.width() > available.width() or image.height() > available.height() else image.size()
        dpr = self.devicePixelRatioF() or 1.0
        pixmap = QPixmap.fromImage(image.scaled(target * dpr, Qt.AspectRatioMode.KeepAspectRatio,
                                                Qt.TransformationMode.SmoothTransformation))
        pixmap.setDevicePixelRatio(dpr)
        self.label = QLabel()
        self.label.setPixmap(pixmap)
        self.label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        area = QScrollArea()
        area.setWidget(self.label)
        area.setWidgetResizable(True)
        area.setFrameShape(QScrollArea.Shape.NoFrame)
        layout.addWidget(area)
        self.resize(target.width() + 4, target.height() + 4)

    def mouseReleaseEvent(self, event) -> None:
        self.accept()


def waveform_peaks(flac: bytes, bars: int = WAVE_BARS) -> list[float]:
    """``bars`` peak levels (0..1) of an audio attachment, for drawing; flat if it cannot be read."""
    try:
        import numpy as np
        import soundfile

        data, _ = soundfile.read(io.BytesIO(flac), dtype="float32", always_2d=True)
        mono = np.abs(data.mean(axis=1))
        if mono.size == 0:
            raise ValueError("empty")
        chunks = np.array_split(mono, bars)
        peaks = np.array([float(c.max()) if c.size else 0.0 for c in chunks])
        top = float(peaks.max()) or 1.0
        return [max(0.08, p / top) for p in peaks]
    except Exception as exc:  # an unreadable clip still gets a chip, just a flat one
        log.debug("no waveform for clip: %s", exc)
        return [0.3] * bars


class Waveform(QWidget):
    """Bars for a voice clip's loudness over time."""

    def __init__(self, peaks: list[float], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.peaks = peaks
        self.setFixedSize(QSize(len(peaks) * 4, 24))

    def paintEvent(self, _event) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(QColor(theme.current().accent))
        mid = self.height() / 2
        for i, peak in enumerate(self.peaks):
            h = max(2.0, peak * (self.height() - 2))
            painter.drawRoundedRect(QRectF(i * 4 + 0.5, mid - h / 2, 2.2, h), 1.1, 1.1)
        painter.end()


class VoiceChip(QWidget):
    """A voice message: waveform and duration."""

    def __init__(self, flac: bytes, duration_s: float, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("voiceChip")
        self.setAttribute(Qt.WidgetAttribute.WA_StyledBackground, True)
        row = QHBoxLayout(self)
        row.setContentsMargins(10, 6, 12, 6)
        row.setSpacing(8)
        icon = QLabel()
        icon.setPixmap(icons.icon("mic", theme.current().accent).pixmap(QSize(16, 16)))
        row.addWidget(icon)
        row.addWidget(Waveform(waveform_peaks(flac)))
        self.duration = QLabel(format_duration(duration_s))
        self.duration.setObjectName("messageMeta")
        row.addWidget(self.duration)
        self.setToolTip("Voice message")


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}:{seconds % 60:02d}"
