"""Memory in the conversation: the inline proposal note, the 👎 correction dialog, "Why this answer?".

Memory text is the user's data (and may have come from anywhere the user pasted from): every widget
here shows it as plain text — ``PlainText`` labels and item views, never rich text, tooltips or links.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QDialog, QDialogButtonBox, QFrame, QHBoxLayout, QLabel, QListWidget,
                               QPlainTextEdit, QPushButton, QVBoxLayout, QWidget)

MAX_CORRECTION_CHARS = 2_000  # what a correction may hold (the profile's own field limit)


def plain_label(text: str = "", *, object_name: str = "") -> QLabel:
    """A word-wrapped label that never interprets its text (no HTML, no links)."""
    label = QLabel(objectName=object_name)
    label.setTextFormat(Qt.TextFormat.PlainText)
    label.setWordWrap(True)
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    label.setText(text)
    return label


def flag_note(memory) -> str:
    return f" It reads like an instruction ({', '.join(memory.flags)}), so it is kept only if you confirm." \
        if memory.flags else ""


class MemoryNote(QFrame):
    """One candidate memory from the user's turn, inline and small: "Remember: …?" with Remember /
    Not now while it is pending (ask mode, or flagged in auto mode), "Remembered: …" with Undo once
    stored (auto mode)."""

    action = Signal(str, int)  # "approve" | "reject" | "delete", memory id

    def __init__(self, memory, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("memoryNote")
        self.memory = memory
        row = QHBoxLayout(self)
        row.setContentsMargins(12, 6, 8, 6)
        pending = memory.status == "pending"
        self.label = plain_label(f"Remember: “{memory.text}”?{flag_note(memory)}" if pending
                                 else f"Remembered: “{memory.text}”")
        row.addWidget(self.label, 1)
        self.buttons: list[QPushButton] = []
        choices = (("Remember", "approve"), ("Not now", "reject")) if pending else (("Undo", "delete"),)
        for title, verb in choices:
            button = QPushButton(title)
            button.setCursor(Qt.CursorShape.PointingHandCursor)
            button.clicked.connect(lambda _=False, v=verb: self._chosen(v))
            row.addWidget(button, 0, Qt.AlignmentFlag.AlignVCenter)
            self.buttons.append(button)

    def button(self, title: str) -> QPushButton:
        return next(b for b in self.buttons if b.text() == title)

    def _chosen(self, verb: str) -> None:
        for button in self.buttons:
            button.setEnabled(False)  # until the answer arrives (set_result or set_failed)
        self.action.emit(verb, self.memory.id)

    def set_result(self, text: str) -> None:
        self.label.setText(text)
        for button in self.buttons:
            button.hide()

    def set_failed(self, text: str) -> None:
        self.label.setText(text)
        for button in self.buttons:
            button.setEnabled(True)

    def apply_theme(self, _t) -> None:
        pass


class CorrectionDialog(QDialog):
    """After 👎: what was wrong, optionally ("too long", "answer in French", the right answer)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("What could be better?")
        layout = QVBoxLayout(self)
        layout.addWidget(plain_label(
            "Optional: say what was wrong or give the right answer. Preferences such as “too long”, "
            "“answer in French” or “be more formal” apply to later replies; anything else is kept as a "
            "pinned memory (see Profile & memory)."))
        self.editor = QPlainTextEdit()
        self.editor.setPlaceholderText("e.g. Too long — keep it to two sentences.")
        self.editor.textChanged.connect(self._limit)
        layout.addWidget(self.editor)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Cancel)
        self.send_button = self.buttons.addButton("Send feedback", QDialogButtonBox.ButtonRole.AcceptRole)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        layout.addWidget(self.buttons)
        self.resize(460, 240)

    def correction(self) -> str | None:
        return self.editor.toPlainText().strip() or None

    def _limit(self) -> None:
        text = self.editor.toPlainText()
        if len(text) > MAX_CORRECTION_CHARS:
            self.editor.setPlainText(text[:MAX_CORRECTION_CHARS])


class WhyDialog(QDialog):
    """The memories a reply used, as plain text; a way to the profile editor to change them."""

    manage_requested = Signal()

    def __init__(self, memories: list, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Why this answer?")
        layout = QVBoxLayout(self)
        intro = ("Your profile (name, language, reply length, tone, instructions) shapes every reply. "
                 + ("This reply also used these memories:" if memories else
                    "This reply used none of your memories."))
        layout.addWidget(plain_label(intro))
        self.list = QListWidget()
        for memory in memories:
            if memory.status == "deleted":
                self.list.addItem("(a memory you have deleted since)")
            else:
                pinned = "📌 " if memory.pinned else ""
                self.list.addItem(f"{pinned}{memory.text}")
        self.list.setVisible(bool(memories))
        layout.addWidget(self.list)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        manage = buttons.addButton("Profile && memory…", QDialogButtonBox.ButtonRole.ActionRole)
        manage.clicked.connect(self.manage_requested)
        manage.clicked.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)
        self.resize(480, 300)

    def texts(self) -> list[str]:
        return [self.list.item(i).text() for i in range(self.list.count())]
