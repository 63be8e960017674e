"""The status bar: each model slot's state (idle, loading with progress, ready, error) and warnings."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QLabel, QProgressBar, QStatusBar, QToolButton, QWidget

from mmchat_ui import theme

ROLE_LABELS = {"llm": "Chat", "asr": "Speech", "image": "Images", "ocr": "OCR"}


class _Slot:
    """A coloured dot, a plain-text label and a progress bar for one model slot (plain text: the
    status bar is built before the first paint, and rich text would load Qt's text engine)."""

    def __init__(self, bar: QStatusBar, role: str) -> None:
        self.role = role
        self.dot = QLabel("●")
        self.label = QLabel(objectName="statusChip")
        self.label.setTextFormat(Qt.TextFormat.PlainText)
        self.progress = QProgressBar()
        self.progress.setTextVisible(False)
        self.progress.setFixedWidth(80)
        self.progress.hide()
        bar.addPermanentWidget(self.dot)
        bar.addPermanentWidget(self.label)
        bar.addPermanentWidget(self.progress)
        self.status = None


class ModelStatusBar(QStatusBar):
    stop_training_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setSizeGripEnabled(False)
        self.training = QLabel(objectName="statusChip")
        self.training_progress = QProgressBar()
        self.training_progress.setTextVisible(False)
        self.training_progress.setFixedWidth(100)
        self.training_stop = QToolButton(text="Stop training")
        self.training_stop.clicked.connect(self.stop_training_requested)
        for widget in (self.training, self.training_progress, self.training_stop):
            self.addPermanentWidget(widget)
            widget.hide()
        self.warning = QLabel(objectName="statusWarning")
        self.warning.hide()
        self.addPermanentWidget(self.warning)
        self.slots = {role: _Slot(self, role) for role in ROLE_LABELS}

    def show_training(self, phase: str, done: int, total: int) -> None:
        """Fusion training progress (``total`` 0: unknown)."""
        self.training.setText(f"Fusion: {phase} {done}/{total}" if total else f"Fusion: {phase}…")
        if total:
            self.training_progress.setRange(0, total)
            self.training_progress.setValue(done)
        else:
            self.training_progress.setRange(0, 0)
        for widget in (self.training, self.training_progress, self.training_stop):
            widget.show()

    def hide_training(self) -> None:
        for widget in (self.training, self.training_progress, self.training_stop):
            widget.hide()

    def update_status(self, status) -> None:
        """Show one :class:`mmchat.engine.SlotStatus` (called on the GUI thread)."""
        slot = self.slots.get(status.role)
        if slot is None:
            return
        slot.status = status
        t = theme.current()
        colour, word = {
            "idle": (t.muted, "not loaded"),
            "loading": (t.warning, status.detail or "loading…"),
            "ready": (t.success, status.detail or "ready"),  # "pretrained"/"untrained" for an image encoder
            "error": (t.danger, "failed"),
        }.get(status.state, (t.muted, status.state))
        slot.dot.setStyleSheet(f"color: {colour}; padding-left: 6px;")
        slot.label.setText(f"{ROLE_LABELS[status.role]}: {status.model} ({word})")
        slot.label.setToolTip(status.detail if status.state == "error" else
                              f"{ROLE_LABELS[status.role]} model {status.model}: {word}")
        loading = status.state == "loading"
        slot.progress.setVisible(loading)
        if loading:
            if status.progress is None:
                slot.progress.setRange(0, 0)  # busy indicator
            else:
                slot.progress.setRange(0, 1000)
                slot.progress.setValue(int(status.progress * 1000))
        if status.role == "image":
            untrained = status.state == "ready" and status.detail == "untrained"
            self.warning.setVisible(untrained)
            self.warning.setText("⚠ Image encoder untrained")
            self.warning.setTextFormat(Qt.TextFormat.PlainText)
            self.warning.setToolTip("The image encoder is a seeded random initialisation: images are not really "
                                    "understood. Fetch CLIP in Settings → Models, then train the fusion "
                                    "(mmchat train-fusion).")

    def text_of(self, role: str) -> str:
        return self.slots[role].label.text()

    def apply_theme(self, _t: theme.Theme) -> None:
        for slot in self.slots.values():
            if slot.status is not None:
                self.update_status(slot.status)
