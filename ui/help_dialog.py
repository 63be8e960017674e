"""Help → Keyboard shortcuts: every shortcut the window binds, from one table; and the way to About."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QDialog, QDialogButtonBox, QLabel, QPushButton, QTableWidget, QTableWidgetItem,
                               QVBoxLayout)

SHORTCUTS = (
    ("Enter", "Send the message"),
    ("Shift+Enter", "New line in the message"),
    ("Esc", "Stop the reply · cancel a recording · stop reading aloud · cancel an edit"),
    ("Hold F8", "Hold to talk (release to finish)"),
    ("Ctrl+N", "New chat"),
    ("Ctrl+Shift+N", "New temporary chat (never stored)"),
    ("Ctrl+K", "Search conversations"),
    ("Ctrl+L", "Focus the message box"),
    ("Ctrl+O", "Attach images"),
    ("Ctrl+V", "Paste text, an image, or image files"),
    ("Ctrl+R", "Regenerate the last reply"),
    ("Ctrl+Shift+C", "Copy the last reply"),
    ("Ctrl+Shift+S", "Read the last reply aloud"),
    ("F2", "Rename the selected conversation"),
    ("Delete", "Delete the selected conversation"),
    ("Ctrl+Z", "Undo the last delete"),
    ("Ctrl+,", "Settings"),
    ("Ctrl+Shift+P", "Profile & memory: who you are, how you like replies, what is remembered"),
    ("F1", "This list"),
    ("Ctrl+Q", "Quit"),
)


class HelpDialog(QDialog):
    about_requested = Signal()

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Keyboard shortcuts")
        layout = QVBoxLayout(self)
        intro = QLabel("Drag images onto the window, paste them, or use the paperclip. "
                       "Hold the mic button (or F8) to talk.")
        intro.setWordWrap(True)
        layout.addWidget(intro)
        self.table = QTableWidget(len(SHORTCUTS), 2)
        self.table.setHorizontalHeaderLabels(["Keys", "Action"])
        self.table.verticalHeader().hide()
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.setSelectionMode(QTableWidget.SelectionMode.NoSelection)
        self.table.setShowGrid(False)
        self.table.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        for row, (keys, action) in enumerate(SHORTCUTS):
            key_item = QTableWidgetItem(keys)
            font = key_item.font()
            font.setBold(True)
            key_item.setFont(font)
            self.table.setItem(row, 0, key_item)
            self.table.setItem(row, 1, QTableWidgetItem(action))
        self.table.resizeColumnsToContents()
        self.table.horizontalHeader().setStretchLastSection(True)
        layout.addWidget(self.table)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        self.about_button = QPushButton("About mmchat")
        self.about_button.clicked.connect(self.about_requested)
        buttons.addButton(self.about_button, QDialogButtonBox.ButtonRole.HelpRole)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)
        self.resize(560, 560)
