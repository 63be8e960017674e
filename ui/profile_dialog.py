"""Profile & memory (Ctrl+Shift+P): who the user is, how they like replies, what is remembered.

Three tabs over the window's :class:`mmchat_ui.personal.Personalisation`: the typed profile fields,
the memory list (search, edit in place, pin, approve / reject pending ones, delete), and the data
(export to JSON, import, delete everything). A row at the top switches between local profiles or
makes a new one. Every read and write runs in the window's task runner; the dialog re-reads when
anything changed. Memory text is user data: it is shown only in plain-text item views and labels.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import (QAbstractItemView, QComboBox, QDialog, QDialogButtonBox, QFileDialog,
                               QFormLayout, QHBoxLayout, QHeaderView, QInputDialog, QLabel, QLineEdit,
                               QMessageBox, QPlainTextEdit, QPushButton, QTableWidget, QTableWidgetItem,
                               QTabWidget, QVBoxLayout, QWidget)

from mmchat.errors import MMChatError
from mmchat.profile import REPLY_LENGTHS
from mmchat_ui.memory_widgets import plain_label
from mmchat_ui.personal import Personalisation

SEARCH_DEBOUNCE_MS = 200
MAX_IMPORT_BYTES = 20_000_000  # a profile export is kilobytes; anything this big is not one
REPLY_LENGTH_LABELS = {"": "No preference", "short": "Short (two sentences)", "medium": "Medium (a paragraph)",
                       "long": "Long and thorough"}
TEXT_FIELDS = (("display_name", "Your name", "What the assistant calls you"),
               ("language", "Reply language", "e.g. French (empty: the language you write in)"),
               ("tone", "Tone", "e.g. friendly, formal, direct"),
               ("expertise", "Your expertise", "e.g. Python developer, nurse, beginner cook"),
               ("interests", "Your interests", "e.g. hiking, jazz, astronomy"))
COLUMNS = ("Memory", "Status", "Pinned")


def _write_json(path: Path, data: dict) -> None:
    """Write ``data`` whole or not at all (a temporary file renamed into place)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise MMChatError(f"Could not write {path}: {exc.strerror or exc}.") from exc


def _read_json(path: Path) -> object:
    try:
        if path.stat().st_size > MAX_IMPORT_BYTES:
            raise MMChatError(f"{path.name} is too big to be a profile export.")
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise MMChatError(f"Could not read the profile file {path.name}: it is not a readable JSON profile "
                          f"export ({exc}). Nothing was changed.") from exc


class ProfileDialog(QDialog):
    def __init__(self, personal: Personalisation, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Profile & memory")
        self.personal = personal
        self.profile = None  # as shown in the fields
        self.memories: list = []  # the rows of the table
        layout = QVBoxLayout(self)
        layout.addLayout(self._profile_row())
        self.tabs = QTabWidget()
        self.tabs.addTab(self._fields_tab(), "About you")
        self.tabs.addTab(self._memories_tab(), "Memories")
        self.tabs.addTab(self._data_tab(), "Data")
        layout.addWidget(self.tabs, 1)
        self.status = plain_label(object_name="messageMeta")
        layout.addWidget(self.status)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)
        self.resize(720, 560)
        personal.changed.connect(self.reload)
        personal.ready.connect(self.reload)
        self.reload()

    # -- layout ----------------------------------------------------------------------------------
    def _profile_row(self) -> QHBoxLayout:
        row = QHBoxLayout()
        self.profile_box = QComboBox()
        self.profile_box.setMinimumWidth(200)
        self.profile_box.activated.connect(self._profile_chosen)
        self.new_profile_button = QPushButton("New profile…")
        self.new_profile_button.clicked.connect(self.ask_new_profile)
        row.addWidget(QLabel("Profile"))
        row.addWidget(self.profile_box)
        row.addWidget(self.new_profile_button)
        row.addStretch(1)
        return row

    def _fields_tab(self) -> QWidget:
        page = QWidget()
        form = QFormLayout(page)
        self.fields: dict[str, QLineEdit] = {}
        for key, label, hint in TEXT_FIELDS:
            edit = QLineEdit()
            edit.setPlaceholderText(hint)
            self.fields[key] = edit
            form.addRow(label, edit)
        self.reply_length = QComboBox()
        for value in REPLY_LENGTHS:
            self.reply_length.addItem(REPLY_LENGTH_LABELS[value], value)
        form.addRow("Reply length", self.reply_length)
        self.instructions = QPlainTextEdit()
        self.instructions.setPlaceholderText("Anything else the assistant should always keep in mind")
        form.addRow("Custom instructions", self.instructions)
        self.save_button = QPushButton("Save", objectName="primary")
        self.save_button.clicked.connect(self.save_fields)
        form.addRow("", self.save_button)
        return page

    def _memories_tab(self) -> QWidget:
        page = QWidget()
        column = QVBoxLayout(page)
        self.search = QLineEdit()
        self.search.setPlaceholderText("Search memories")
        self.search.setClearButtonEnabled(True)
        self._debounce = QTimer(self, singleShot=True, interval=SEARCH_DEBOUNCE_MS)
        self._debounce.timeout.connect(self.reload)
        self.search.textChanged.connect(lambda _t: self._debounce.start())
        column.addWidget(self.search)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.verticalHeader().hide()
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.DoubleClicked
                                   | QAbstractItemView.EditTrigger.EditKeyPressed)
        self.table.setWordWrap(True)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(2, QHeaderView.ResizeMode.ResizeToContents)
        self.table.itemChanged.connect(self._edited)
        self.table.itemSelectionChanged.connect(self._update_buttons)
        column.addWidget(self.table, 1)
        self.empty = plain_label("Nothing remembered yet. Facts you mention in a chat are suggested here "
                                 "(Settings → Memory), or add one below.", object_name="noticeLabel")
        column.addWidget(self.empty)
        add_row = QHBoxLayout()
        self.new_memory = QLineEdit()
        self.new_memory.setPlaceholderText("Add a memory, e.g. I'm vegetarian")
        self.new_memory.returnPressed.connect(self.add_memory)
        add = QPushButton("Add")
        add.clicked.connect(self.add_memory)
        add_row.addWidget(self.new_memory, 1)
        add_row.addWidget(add)
        column.addLayout(add_row)
        actions = QHBoxLayout()
        self.edit_button = QPushButton("Edit")
        self.edit_button.clicked.connect(lambda: self.table.editItem(self.table.item(self.table.currentRow(), 0)))
        self.pin_button = QPushButton("Pin")
        self.pin_button.setToolTip("Pinned memories are in every reply's prompt; others only when relevant")
        self.pin_button.clicked.connect(self.toggle_pin)
        self.approve_button = QPushButton("Approve")
        self.approve_button.clicked.connect(lambda: self._on_selected("approve"))
        self.reject_button = QPushButton("Reject")
        self.reject_button.clicked.connect(lambda: self._on_selected("reject"))
        self.delete_button = QPushButton("Delete…", objectName="danger")
        self.delete_button.clicked.connect(self.confirm_delete)
        for button in (self.edit_button, self.pin_button, self.approve_button, self.reject_button):
            actions.addWidget(button)
        actions.addStretch(1)
        actions.addWidget(self.delete_button)
        column.addLayout(actions)
        self._update_buttons()
        return page

    def _data_tab(self) -> QWidget:
        page = QWidget()
        column = QVBoxLayout(page)
        column.addWidget(plain_label("Your profile, memories and feedback stay on this computer. Export them "
                                     "to a JSON file to keep a copy or move them to another computer; "
                                     "importing merges such a file into this profile."))
        row = QHBoxLayout()
        export = QPushButton("Export…")
        export.clicked.connect(self.choose_export)
        import_button = QPushButton("Import…")
        import_button.clicked.connect(self.choose_import)
        row.addWidget(export)
        row.addWidget(import_button)
        row.addStretch(1)
        column.addLayout(row)
        column.addSpacing(16)
        column.addWidget(plain_label("Delete everything forgets this profile's memories, feedback and fields "
                                     "for good. Conversations are not touched."))
        self.wipe_button = QPushButton("Delete everything…", objectName="danger")
        self.wipe_button.clicked.connect(self.confirm_wipe)
        column.addWidget(self.wipe_button, 0, Qt.AlignmentFlag.AlignLeft)
        column.addStretch(1)
        return page

    # -- reading ---------------------------------------------------------------------------------
    def reload(self) -> None:
        search = self.search.text().strip() or None

        def job(service):
            return service.profiles.profiles(), service.memories(search=search)

        self.personal.run("list", job, done=self._show, failed=self.status.setText, changes=False)

    def _show(self, result) -> None:
        profiles, memories = result
        profile = self.personal.profile
        self.profile_box.clear()
        for p in profiles:
            self.profile_box.addItem(p.name, p.id)
        self.profile_box.setCurrentIndex(max(0, self.profile_box.findData(profile.id)))
        if self.profile is None or profile.id != self.profile.id or not self._fields_edited():
            self._fill_fields(profile)
        self._fill_table(memories)

    def _fill_fields(self, profile) -> None:
        self.profile = profile
        for key, edit in self.fields.items():
            edit.setText(getattr(profile, key))
        self.reply_length.setCurrentIndex(max(0, self.reply_length.findData(profile.reply_length)))
        self.instructions.setPlainText(profile.custom_instructions)

    def _field_values(self) -> dict[str, str]:
        values = {key: edit.text() for key, edit in self.fields.items()}
        values.update(reply_length=self.reply_length.currentData(),
                      custom_instructions=self.instructions.toPlainText())
        return values

    def _fields_edited(self) -> bool:
        return any(value.strip() != getattr(self.profile, key) for key, value in self._field_values().items())

    def _fill_table(self, memories: list) -> None:
        selected = self.selected()
        self.memories = memories
        self.table.blockSignals(True)
        self.table.setRowCount(len(memories))
        for row, memory in enumerate(memories):
            text = QTableWidgetItem(memory.text)  # an item view: plain text, never HTML
            status = "waiting for approval" if memory.status == "pending" else "remembered"
            if memory.flags:
                status += f" · reads like an instruction ({', '.join(memory.flags)})"
            state = QTableWidgetItem(status)
            state.setFlags(state.flags() & ~Qt.ItemFlag.ItemIsEditable)
            pin = QTableWidgetItem("📌" if memory.pinned else "")
            pin.setFlags(pin.flags() & ~Qt.ItemFlag.ItemIsEditable)
            for column, item in enumerate((text, state, pin)):
                self.table.setItem(row, column, item)
            if selected is not None and memory.id == selected.id:
                self.table.selectRow(row)
        self.table.blockSignals(False)
        self.table.resizeRowsToContents()
        self.empty.setVisible(not memories and not self.search.text())
        self._update_buttons()

    def selected(self):
        rows = self.table.selectionModel().selectedRows() if self.table.selectionModel() else []
        return self.memories[rows[0].row()] if rows and rows[0].row() < len(self.memories) else None

    def row_texts(self) -> list[str]:
        return [self.table.item(row, 0).text() for row in range(self.table.rowCount())]

    def select(self, memory_id: int) -> None:
        row = next(i for i, m in enumerate(self.memories) if m.id == memory_id)
        self.table.selectRow(row)

    def _update_buttons(self) -> None:
        memory = self.selected()
        pending = memory is not None and memory.status == "pending"
        for button in (self.edit_button, self.pin_button, self.delete_button):
            button.setEnabled(memory is not None)
        self.approve_button.setEnabled(pending)
        self.reject_button.setEnabled(pending)
        self.pin_button.setText("Unpin" if memory is not None and memory.pinned else "Pin")

    # -- writing ---------------------------------------------------------------------------------
    def _do(self, name: str, job, message: str = "") -> None:
        self.personal.run(name, job, done=lambda _r: message and self.status.setText(message),
                          failed=self._write_failed)

    def save_fields(self) -> None:
        values = self._field_values()
        self._do("save", lambda service: service.set_profile(**values), "Profile saved.")
        self.profile = None  # refill from what was stored (values are normalised)

    def add_memory(self) -> None:
        text = self.new_memory.text().strip()
        if text:
            self.new_memory.clear()
            self._do("add", lambda service: service.add(text), "Memory added.")

    def _edited(self, item: QTableWidgetItem) -> None:
        if item.column() != 0 or item.row() >= len(self.memories):
            return
        memory, text = self.memories[item.row()], item.text()
        if text != memory.text:
            self._do("edit", lambda service: service.edit(memory.id, text), "Memory changed.")

    def toggle_pin(self) -> None:
        memory = self.selected()
        if memory is not None:
            self._do("pin", lambda service: service.pin(memory.id, not memory.pinned))

    def _on_selected(self, verb: str) -> None:
        memory = self.selected()
        if memory is not None:
            self._do(verb, lambda service: getattr(service, verb)(memory.id),
                     "Memory approved." if verb == "approve" else "Memory rejected; it will not be suggested again.")

    def confirm_delete(self) -> None:
        memory = self.selected()
        if memory is None:
            return
        self.confirm = _plain_box(self, QMessageBox.Icon.Warning, "Delete this memory?",
                                  f"“{memory.text}”\n\nIt is forgotten for good and will not be suggested again.")
        self.confirm.setStandardButtons(QMessageBox.StandardButton.Cancel)
        delete = self.confirm.addButton("Delete", QMessageBox.ButtonRole.DestructiveRole)
        self.confirm.setDefaultButton(QMessageBox.StandardButton.Cancel)
        self.confirm.buttonClicked.connect(lambda button: button is delete and self._do(
            "delete", lambda service: service.delete(memory.id), "Memory deleted."))
        self.confirm.open()

    def _profile_chosen(self, index: int) -> None:
        profile_id = self.profile_box.itemData(index)
        if self.profile is not None and profile_id != self.profile.id:
            self.personal.switch(profile_id, failed=self._error)

    def ask_new_profile(self) -> None:
        self.name_prompt = QInputDialog(self)
        self.name_prompt.setWindowTitle("New profile")
        self.name_prompt.setLabelText("Name of the new profile (its conversations and memories are separate):")
        self.name_prompt.textValueSelected.connect(self.create_profile)
        self.name_prompt.open()

    def create_profile(self, name: str) -> None:
        if name.strip():
            self.personal.create(name, failed=self._error)

    # -- data ------------------------------------------------------------------------------------
    def choose_export(self) -> None:
        path, _filter = QFileDialog.getSaveFileName(self, "Export profile", "mmchat-profile.json", "JSON (*.json)")
        if path:
            self.export_to(Path(path))

    def choose_import(self) -> None:
        path, _filter = QFileDialog.getOpenFileName(self, "Import profile", "", "JSON (*.json);;All files (*)")
        if path:
            self.import_from(Path(path))

    def export_to(self, path: Path) -> None:
        def job(service):
            _write_json(path, service.profiles.export_profile(service.profile_id))

        self.personal.run("export", job, done=lambda _r: self.status.setText(f"Exported to {path}."),
                          failed=self._error, changes=False)

    def import_from(self, path: Path) -> None:
        from mmchat.memory import import_profile

        def job(service):
            return import_profile(service, _read_json(path))

        self.personal.run("import", job, done=lambda counts: self.status.setText(
            f"Imported {counts['memories']} memories and {counts['fields']} profile fields from {path.name}."),
            failed=self._write_failed)
        self.profile = None  # show the imported fields

    def confirm_wipe(self) -> None:
        if self.profile is None:
            return
        self.wipe_confirm = WipeConfirmation(self.profile.name, self)
        self.wipe_confirm.accepted.connect(self.wipe)
        self.wipe_confirm.open()

    def wipe(self) -> None:
        def job(service):
            service.profiles.wipe(service.profile_id)
            service.use_profile(service.profile_id)  # drop the service's in-memory index and caches

        self._do("wipe", job, "Everything about this profile was deleted.")
        self.profile = None

    # -- errors ----------------------------------------------------------------------------------
    def _error(self, text: str) -> None:
        self.status.setText(text)
        self.error_box = _plain_box(self, QMessageBox.Icon.Warning, "Profile & memory", text)
        self.error_box.open()

    def _write_failed(self, text: str) -> None:
        self._error(text)
        self.reload()  # show what is stored (an edit that failed goes back to the stored text)


class WipeConfirmation(QDialog):
    """Delete everything: only after typing the profile's name."""

    def __init__(self, name: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Delete everything?")
        self.name = name
        layout = QVBoxLayout(self)
        layout.addWidget(plain_label(f"Every memory, all feedback and the fields of the profile “{name}” will be "
                                     "deleted from this computer. This cannot be undone.\n\n"
                                     "Type the profile's name to confirm:"))
        self.typed = QLineEdit()
        self.typed.setPlaceholderText(name)
        layout.addWidget(self.typed)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Cancel)
        self.delete_button = self.buttons.addButton("Delete everything", QDialogButtonBox.ButtonRole.DestructiveRole)
        self.delete_button.setObjectName("danger")
        self.delete_button.setEnabled(False)
        self.delete_button.clicked.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        self.typed.textChanged.connect(lambda text: self.delete_button.setEnabled(text.strip() == name))
        layout.addWidget(self.buttons)


def _plain_box(parent: QWidget, icon: QMessageBox.Icon, title: str, text: str) -> QMessageBox:
    """A message box whose text (it may quote a memory) is never read as rich text."""
    box = QMessageBox(parent)
    box.setIcon(icon)
    box.setWindowTitle(title)
    box.setTextFormat(Qt.TextFormat.PlainText)
    box.setText(text)
    return box
