"""The first-run welcome: what runs locally, where data lives, how to get better image understanding,
and the progress of the one-time model conversion.

Shown once, non-modal, right after the window's first paint (never by ``--screenshot``); closing it
records ``welcome_shown`` in the settings. The window forwards its engine's slot statuses to
:meth:`WelcomeDialog.update_status`, the same ones its status bar shows.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QDialog, QDialogButtonBox, QLabel, QProgressBar, QVBoxLayout, QWidget

from mmchat import registry

CLIP_FETCH = "mmchat models fetch clip-vit-b-32"
ROLE_WORDS = {"llm": "chat model", "asr": "speech model", "image": "image encoder", "ocr": "text reader"}


def welcome_text(*, data_dir: Path, cache_dir: Path) -> list[str]:
    """The welcome's paragraphs (plain text), from the registry's default models."""
    llm, asr = registry.default(registry.Role.LLM), registry.default(registry.Role.ASR)
    image, clip = registry.default(registry.Role.IMAGE), registry.get("clip-vit-b-32")
    return [
        f"Everything runs on this computer: the chat model ({llm.name}), speech recognition ({asr.name}), "
        "the image encoder and the voice that reads replies aloud. Nothing you type, show or say is sent "
        "anywhere, there is no account, and it works offline.",
        f"Your conversations and settings are kept in {data_dir}. Converted models are cached in "
        f"{cache_dir} (safe to delete; they are rebuilt).",
        "The first start converts the bundled models once, which takes about a minute; the progress "
        "shows below and in the status bar. Later starts load them in seconds.",
        f"Images: {image.name} (pretrained on ImageNet) names the animals, food and things it knows, and "
        "OCR reads the text in pictures and screenshots; both are bundled. CLIP is an optional upgrade "
        f"({clip.size_bytes / 1e6:.0f} MB, {clip.licence}, needs the internet once): Settings → Models, or run: "
        f"{CLIP_FETCH}",
    ]


class WelcomeDialog(QDialog):
    def __init__(self, *, data_dir: Path, cache_dir: Path, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Welcome to mmchat")
        self.setModal(False)
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("Welcome to mmchat", objectName="chatTitle"))
        self.paragraphs = welcome_text(data_dir=data_dir, cache_dir=cache_dir)
        for text in self.paragraphs:
            label = QLabel(text)
            label.setWordWrap(True)
            label.setTextFormat(Qt.TextFormat.PlainText)
            label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            layout.addWidget(label)
        self.progress_label = QLabel(objectName="noticeLabel")
        self.progress_label.setTextFormat(Qt.TextFormat.PlainText)
        self.progress = QProgressBar()
        self.progress.setTextVisible(False)
        self.progress.setRange(0, 1000)
        self.progress.hide()
        layout.addWidget(self.progress_label)
        layout.addWidget(self.progress)
        layout.addStretch(1)
        buttons = QDialogButtonBox()
        start = buttons.addButton("Get started", QDialogButtonBox.ButtonRole.AcceptRole)
        start.setObjectName("primary")
        buttons.accepted.connect(self.accept)
        layout.addWidget(buttons)
        self._states: dict[str, object] = {}
        self.resize(600, 380)

    def update_status(self, status) -> None:
        """One :class:`mmchat.engine.SlotStatus`: the conversion's progress, or which models are ready."""
        self._states[status.role] = status
        loading = [s for s in self._states.values() if s.state == "loading"]
        if loading:
            current = loading[0]
            what = f"{ROLE_WORDS.get(current.role, current.role)} {current.model}"
            self.progress_label.setText(f"Preparing the {what}: {current.detail or 'loading'}…")
            if current.progress is None:
                self.progress.setRange(0, 0)  # busy indicator
            else:
                self.progress.setRange(0, 1000)
                self.progress.setValue(int(current.progress * 1000))
            self.progress.show()
            return
        self.progress.hide()
        ready = [s for s in self._states.values() if s.state == "ready"]
        failed = [s for s in self._states.values() if s.state == "error"]
        if failed:
            self.progress_label.setText(f"Could not load the {ROLE_WORDS.get(failed[0].role, failed[0].role)}: "
                                        f"{failed[0].detail}")
        elif ready:
            self.progress_label.setText("Models ready: " + ", ".join(f"{ROLE_WORDS.get(s.role, s.role)} {s.model}"
                                                                    for s in ready) + ".")
