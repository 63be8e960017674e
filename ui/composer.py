"""The composer: text, image attachments, a pending voice clip, and the Send / Stop, attach and mic buttons.

Images arrive by the attach button, drag and drop (here or anywhere on the window), or paste
(image data or file URLs). Each is read and checked off the GUI thread by :func:`mmchat.images.load_image`;
a bad or oversized file gets an inline message and nothing else in the composer is touched.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from PySide6.QtCore import QBuffer, QByteArray, QIODevice, QMimeData, QSize, Qt, Signal
from PySide6.QtGui import QImage
from PySide6.QtWidgets import (QFileDialog, QFrame, QHBoxLayout, QLabel, QSizePolicy, QToolButton,
                               QVBoxLayout, QWidget)

from mmchat_ui import icons, theme
from mmchat_ui.chat_view import PromptEdit
from mmchat_ui.media_widgets import PendingThumbnail, format_duration
from mmchat_ui.voice import LevelMeter
from mmchat_ui.workers import Task, TaskRunner

log = logging.getLogger(__name__)

MAX_PROMPT_LINES = 8  # the text box grows up to this many lines, then scrolls
MAX_ATTACHED_IMAGES = 8
THUMB_DECODE_SIDE = 256  # px: thumbnails are made from this size, off the GUI thread
IMAGE_FILTER = "Images (*.png *.jpg *.jpeg *.webp *.gif *.bmp);;All files (*)"


@dataclass
class PendingImage:
    image: object  # PIL.Image.Image, RGB, checked
    thumbnail: QImage
    name: str


@dataclass
class Draft:
    """What the user is about to send."""

    text: str = ""
    images: list[PendingImage] = field(default_factory=list)
    audio: object | None = None  # np.ndarray, 16 kHz mono
    transcript: str | None = None  # the reviewed transcript of ``audio``

    @property
    def empty(self) -> bool:
        return not self.text.strip() and not self.images and self.audio is None


def media_from_mime(mime: QMimeData) -> tuple[list[Path], list[QImage]]:
    """Local files and image data carried by a drop or paste (files win when both are there)."""
    paths = [Path(url.toLocalFile()) for url in mime.urls() if url.isLocalFile()] if mime.hasUrls() else []
    if paths:
        return paths, []
    if mime.hasImage():
        image = mime.imageData()
        if isinstance(image, QImage) and not image.isNull():
            return [], [image]
    return [], []


def _qimage_png(image: QImage) -> bytes:
    data = QByteArray()
    buffer = QBuffer(data)
    buffer.open(QIODevice.OpenModeFlag.WriteOnly)
    image.save(buffer, "PNG")
    buffer.close()
    return bytes(data.data())


def _load(source: Path | QImage, name: str) -> PendingImage:
    """Read and check one image (runs in a worker): raises MMChatError for a bad file."""
    from mmchat.images import load_image, thumbnail, to_png_bytes

    image = load_image(_qimage_png(source) if isinstance(source, QImage) else source)
    small = thumbnail(image, max_side=THUMB_DECODE_SIDE)
    return PendingImage(image, QImage.fromData(to_png_bytes(small)), name)


class ComposerEdit(PromptEdit):
    """The prompt box: pasted or dropped images and files go to the composer, text stays text."""

    media_received = Signal(list, list)  # paths, images

    def canInsertFromMimeData(self, source: QMimeData) -> bool:
        paths, images = media_from_mime(source)
        return bool(paths or images) or super().canInsertFromMimeData(source)

    def insertFromMimeData(self, source: QMimeData) -> None:
        paths, images = media_from_mime(source)
        if paths or images:
            self.media_received.emit(paths, images)
        else:
            self.insertPlainText(source.text())


class Composer(QFrame):
    submitted = Signal(object)  # Draft
    stop_requested = Signal()
    mic_pressed = Signal()
    mic_released = Signal()
    image_clicked = Signal(QImage)

    def __init__(self, runner: TaskRunner, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("composerFrame")
        self.runner = runner
        self._images: list[PendingImage] = []
        self._thumbs: list[PendingThumbnail] = []
        self._audio = None
        self._transcript: str | None = None
        self._loading = 0
        self._busy = False
        self.setAcceptDrops(True)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(12, 10, 10, 8)
        layout.setSpacing(6)
        self.attachments = QWidget()
        self.attachment_row = QHBoxLayout(self.attachments)
        self.attachment_row.setContentsMargins(0, 0, 0, 0)
        self.attachment_row.setSpacing(8)
        self.attachment_row.addStretch(1)
        self.attachments.hide()
        layout.addWidget(self.attachments)
        self.error = QLabel(objectName="inlineError")
        self.error.setWordWrap(True)
        self.error.setTextFormat(Qt.TextFormat.PlainText)
        self.error.hide()
        layout.addWidget(self.error)
        self.edit = ComposerEdit(objectName="promptEdit")
        self.edit.setPlaceholderText("Message mmchat — Enter to send, Shift+Enter for a new line")
        self.edit.setTabChangesFocus(True)
        self.edit.submitted.connect(self.submit)
        self.edit.media_received.connect(self._add_media)
        self.edit.textChanged.connect(self._on_text_changed)
        self.edit.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        layout.addWidget(self.edit)
        layout.addLayout(self._build_button_row())
        self._fit_height()
        self._update_buttons()

    def _build_button_row(self) -> QHBoxLayout:
        row = QHBoxLayout()
        row.setSpacing(4)
        self.attach_button = self._tool("paperclip", "Attach images (Ctrl+O)")
        self.attach_button.clicked.connect(self.choose_files)
        self.mic_button = self._tool("mic", "Hold to talk (or hold F8)")
        self.mic_button.setObjectName("micButton")
        self.mic_button.pressed.connect(self.mic_pressed)
        self.mic_button.released.connect(self.mic_released)
        row.addWidget(self.attach_button)
        row.addWidget(self.mic_button)
        row.addWidget(self._build_recording_bar())
        self.status = QLabel(objectName="messageMeta")
        row.addWidget(self.status)
        row.addStretch(1)
        self.send_button = QToolButton(objectName="sendButton")
        self.send_button.setFixedSize(32, 32)
        self.send_button.setIconSize(QSize(18, 18))
        self.send_button.setCursor(Qt.CursorShape.PointingHandCursor)
        self.send_button.clicked.connect(self._send_or_stop)
        row.addWidget(self.send_button)
        return row

    def _build_recording_bar(self) -> QFrame:
        """Level meter, elapsed time and a hint, shown while the mic is held."""
        self.recording = QFrame(objectName="recordingBar")
        row = QHBoxLayout(self.recording)
        row.setContentsMargins(10, 2, 10, 2)
        self.meter = LevelMeter()
        self.elapsed = QLabel("0:00")
        self.recording_hint = QLabel("Release to finish · Esc cancels")
        self.recording_hint.setObjectName("messageMeta")
        row.addWidget(self.meter)
        row.addWidget(self.elapsed)
        row.addWidget(self.recording_hint)
        self.recording.hide()
        return self.recording

    def _tool(self, name: str, tooltip: str) -> QToolButton:
        button = QToolButton()
        button.setIcon(icons.icon(name, theme.current().muted))
        button.setIconSize(QSize(20, 20))
        button.setToolTip(tooltip)
        button.setProperty("icon_name", name)
        button.setCursor(Qt.CursorShape.PointingHandCursor)
        return button

    # -- text ------------------------------------------------------------------------------------
    def text(self) -> str:
        return self.edit.toPlainText()

    def set_text(self, text: str) -> None:
        self.edit.setPlainText(text)
        cursor = self.edit.textCursor()
        cursor.movePosition(cursor.MoveOperation.End)
        self.edit.setTextCursor(cursor)

    def _on_text_changed(self) -> None:
        self._fit_height()
        self._update_buttons()

    def _fit_height(self) -> None:
        lines = max(1, min(MAX_PROMPT_LINES, int(self.edit.document().size().height())))
        line = self.edit.fontMetrics().lineSpacing()
        margins = self.edit.contentsMargins()
        height = lines * line + 2 * int(self.edit.document().documentMargin()) + margins.top() + margins.bottom() + 4
        self.edit.setFixedHeight(height)

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self._fit_height()

    # -- images ----------------------------------------------------------------------------------
    @property
    def images(self) -> list[PendingImage]:
        return list(self._images)

    @property
    def loading(self) -> bool:
        return self._loading > 0

    def choose_files(self) -> None:
        files, _ = QFileDialog.getOpenFileNames(self, "Attach images", str(Path.home()), IMAGE_FILTER)
        self.add_paths([Path(f) for f in files])

    def add_from_mime(self, mime: QMimeData) -> bool:
        paths, images = media_from_mime(mime)
        self._add_media(paths, images)
        return bool(paths or images)

    def add_paths(self, paths: list[Path]) -> None:
        self._add_media(paths, [])

    def _add_media(self, paths: list, images: list) -> None:
        for path in paths:
            self._start_load(Path(path), Path(path).name)
        for i, image in enumerate(images):
            self._start_load(image, "pasted image" if len(images) == 1 else f"pasted image {i + 1}")

    def _start_load(self, source: Path | QImage, name: str) -> None:
        if len(self._images) + self._loading >= MAX_ATTACHED_IMAGES:
            self.show_error(f"{name} was not attached: at most {MAX_ATTACHED_IMAGES} images per message.")
            return
        self._loading += 1
        self._update_buttons()
        pending = [True]

        def settle() -> None:  # once per image, as soon as its outcome is known
            if pending.pop() if pending else False:
                self._loading -= 1
                self._update_buttons()

        def loaded(image: PendingImage) -> None:
            settle()
            self._image_loaded(image)

        def failed(text: str) -> None:
            settle()
            self.show_error(text)

        self.runner.start(Task("load-image", lambda emit, stop: _load(source, name)),
                          succeeded=loaded, failed=failed, finished=settle)

    def _image_loaded(self, pending: PendingImage) -> None:
        self._images.append(pending)
        thumb = PendingThumbnail(pending.thumbnail, pending.name, QSize(*pending.image.size))
        thumb.remove_requested.connect(self._remove_thumb)
        thumb.clicked.connect(lambda _img, p=pending: self.image_clicked.emit(_full_qimage(p.image)))
        self._thumbs.append(thumb)
        self.attachment_row.insertWidget(self.attachment_row.count() - 1, thumb)
        self._refresh_attachments()

    def _remove_thumb(self, thumb: PendingThumbnail) -> None:
        index = self._thumbs.index(thumb)
        self._thumbs.pop(index)
        self._images.pop(index)
        self.attachment_row.removeWidget(thumb)
        thumb.deleteLater()
        self._refresh_attachments()

    # -- voice -----------------------------------------------------------------------------------
    def set_voice_clip(self, audio, transcript: str) -> None:
        """A recorded clip waiting to be sent; its transcript goes into the box for review."""
        self.clear_voice_clip()
        self._audio = audio
        self._transcript = transcript
        seconds = len(audio) / 16_000
        self.voice_chip = QFrame(objectName="attachmentChip")
        row = QHBoxLayout(self.voice_chip)
        row.setContentsMargins(8, 4, 4, 4)
        icon = QLabel()
        icon.setPixmap(icons.icon("mic", theme.current().accent).pixmap(QSize(16, 16)))
        row.addWidget(icon)
        row.addWidget(QLabel(f"Voice message {format_duration(seconds)}"))
        remove = QToolButton()
        remove.setIcon(icons.icon("close", theme.current().muted))
        remove.setIconSize(QSize(12, 12))
        remove.setToolTip("Remove the voice message (the text stays)")
        remove.clicked.connect(self.clear_voice_clip)
        row.addWidget(remove)
        self.attachment_row.insertWidget(self.attachment_row.count() - 1, self.voice_chip)
        existing = self.text().strip()
        self.set_text(f"{existing} {transcript}".strip() if existing else transcript)
        self.edit.setFocus()
        self._refresh_attachments()

    def clear_voice_clip(self) -> None:
        chip = getattr(self, "voice_chip", None)
        if chip is not None:
            self.attachment_row.removeWidget(chip)
            chip.deleteLater()
            self.voice_chip = None
        self._audio = None
        self._transcript = None
        self._refresh_attachments()

    @property
    def has_voice_clip(self) -> bool:
        return self._audio is not None

    def show_recording(self, recording: bool) -> None:
        self.recording.setVisible(recording)
        self.status.setVisible(not recording)
        self.mic_button.setProperty("recording", "true" if recording else "false")
        self.mic_button.setIcon(icons.icon("mic", "#ffffff" if recording else theme.current().muted))
        self.mic_button.style().unpolish(self.mic_button)
        self.mic_button.style().polish(self.mic_button)
        if recording:
            self.meter.set_level(0.0)
            self.elapsed.setText("0:00")

    def update_recording(self, level: float, elapsed_s: float, max_s: float) -> None:
        self.meter.set_level(level)
        self.elapsed.setText(f"{format_duration(elapsed_s)} / {format_duration(max_s)}")

    def set_status(self, text: str) -> None:
        self.status.setText(text)

    def set_mic_available(self, available: bool, reason: str) -> None:
        self.mic_button.setEnabled(available)
        self.mic_button.setIcon(icons.icon("mic" if available else "mic-off", theme.current().muted))
        self.mic_button.setProperty("icon_name", "mic" if available else "mic-off")
        self.mic_button.setToolTip("Hold to talk (or hold F8)" if available else f"Voice input is off: {reason}")

    # -- sending ---------------------------------------------------------------------------------
    def draft(self) -> Draft:
        return Draft(self.text(), list(self._images), self._audio, self._transcript)

    def submit(self) -> None:
        if self._busy:
            return
        if self._loading:
            self.show_error("Still reading an image; send again in a moment.")
            return
        draft = self.draft()
        if draft.empty:
            return
        self.hide_error()
        self.submitted.emit(draft)

    def clear(self) -> None:
        self.edit.clear()
        for thumb in list(self._thumbs):
            self._remove_thumb(thumb)
        self.clear_voice_clip()

    def restore(self, draft: Draft) -> None:
        """Put a draft that could not be sent back (only into an empty composer: typing wins)."""
        if not self.draft().empty:
            return
        self.set_text(draft.text)
        for pending in draft.images:
            self._image_loaded(pending)
        if draft.audio is not None:
            text = self.text()
            self.set_voice_clip(draft.audio, draft.transcript or "")
            self.set_text(text)

    def _send_or_stop(self) -> None:
        if self._busy:
            self.stop_requested.emit()
        else:
            self.submit()

    def set_busy(self, busy: bool) -> None:
        self._busy = busy
        self._update_buttons()

    def _update_buttons(self) -> None:
        t = theme.current()
        if self._busy:
            self.send_button.setObjectName("stopButton")
            self.send_button.setIcon(icons.icon("stop", t.window))
            self.send_button.setToolTip("Stop the reply (Esc)")
            self.send_button.setEnabled(True)
        else:
            self.send_button.setObjectName("sendButton")
            ready = not self.draft().empty and not self._loading
            self.send_button.setIcon(icons.icon("send", t.accent_text if ready else t.muted))
            self.send_button.setToolTip("Send (Enter)")
            self.send_button.setEnabled(ready)
        self.send_button.style().unpolish(self.send_button)
        self.send_button.style().polish(self.send_button)

    # -- errors ----------------------------------------------------------------------------------
    def show_error(self, text: str) -> None:
        self.error.setText(text)
        self.error.show()

    def hide_error(self) -> None:
        self.error.hide()

    def _refresh_attachments(self) -> None:
        self.attachments.setVisible(bool(self._thumbs) or self._audio is not None)
        self._update_buttons()

    # -- drag and drop onto the frame ------------------------------------------------------------
    def set_dragging(self, dragging: bool) -> None:
        self.setProperty("dragging", "true" if dragging else "false")
        self.style().unpolish(self)
        self.style().polish(self)

    def dragEnterEvent(self, event) -> None:
        paths, images = media_from_mime(event.mimeData())
        if paths or images:
            self.set_dragging(True)
            event.acceptProposedAction()

    def dragLeaveEvent(self, event) -> None:
        self.set_dragging(False)

    def dropEvent(self, event) -> None:
        self.set_dragging(False)
        if self.add_from_mime(event.mimeData()):
            event.acceptProposedAction()

    def apply_theme(self, t: theme.Theme) -> None:
        for button in (self.attach_button, self.mic_button):
            button.setIcon(icons.icon(button.property("icon_name"), t.muted))
        self._update_buttons()


def _full_qimage(image) -> QImage:
    """A PIL image as a QImage (for the larger view)."""
    from mmchat.images import to_png_bytes

    return QImage.fromData(to_png_bytes(image))
