"""The status bar: each model slot's state (idle, loading with progress, ready, error) and warnings."""

from __future__ import annotations

import html

from PySide6.QtWidgets import QLabel, QProgressBar, QStatusBar, QWidget

from mmchat_ui import theme

ROLE_LABELS = {"llm": "Chat", "asr": "Speech", "image": "Images"}


class _Slot:
    def __init__(self, bar: QStatusBar, role: str) -> None:
        self.role = role
        self.label = QLabel(objectName="statusChip")
        self.progress = QProgressBar()
        self.progress.setTextVisible(False)
        self.progress.setFixedWidth(80)
        self.progress.hide()
        bar.addPermanentWidget(self.label)
        bar.addPermanentWidget(self.progress)
        self.status = None


class ModelStatusBar(QStatusBar):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setSizeGripEnabled(False)
        self.warning = QLabel(objectName="statusWarning")
        self.warning.hide()
        self.addPermanentWidget(self.warning)
        self.slots = {role: _Slot(self, role) for role in ROLE_LABELS}

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
            "ready": (t.success, "ready"),
            "error": (t.danger, "failed"),
        }.get(status.state, (t.muted, status.state))
        name = html.escape(status.model)
        slot.label.setText(f"<span style='color:{colour}'>●</span> {ROLE_LABELS[status.role]}: {name} "
                           f"<span style='color:{t.muted}'>({html.escape(word)})</span>")
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
            self.warning.setToolTip("The image encoder is a seeded random initialisation: images are not really "
                                    "understood. Fetch CLIP in Settings → Models, then train the fusion "
                                    "(mmchat train-fusion).")

    def text_of(self, role: str) -> str:
        return self.slots[role].label.text()

    def apply_theme(self, _t: theme.Theme) -> None:
        for slot in self.slots.values():
            if slot.status is not None:
                self.update_status(slot.status)
