"""The sidebar: new chat, search, conversations grouped by day, rename, delete with undo."""

from __future__ import annotations

import time
from datetime import datetime, timedelta

from PySide6.QtCore import QSize, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QColor, QFont, QKeySequence
from PySide6.QtWidgets import (QAbstractItemView, QFrame, QHBoxLayout, QLabel, QLineEdit, QListWidget,
                               QListWidgetItem, QMenu, QPushButton, QStyledItemDelegate, QToolButton, QVBoxLayout,
                               QWidget)

from mmchat.store import ConversationStore
from mmchat_ui import icons, theme

SEARCH_DEBOUNCE_MS = 200
UNDO_MS = 10_000  # how long "Undo" stays offered after a delete
ID_ROLE = Qt.ItemDataRole.UserRole


def day_group(updated: float, *, now: float | None = None) -> str:
    """Which heading a conversation last touched at ``updated`` falls under."""
    today = datetime.fromtimestamp(now if now is not None else time.time()).date()
    day = datetime.fromtimestamp(updated).date()
    if day >= today:
        return "Today"
    if day == today - timedelta(days=1):
        return "Yesterday"
    if day > today - timedelta(days=7):
        return "Previous 7 days"
    if day > today - timedelta(days=30):
        return "Previous 30 days"
    return "Older"


class ConversationList(QFrame):
    conversation_selected = Signal(int)
    new_chat_requested = Signal()
    settings_requested = Signal()
    help_requested = Signal()
    profile_requested = Signal()
    conversation_deleted = Signal(int)
    conversation_restored = Signal(int)

    def __init__(self, store: ConversationStore, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("sidebar")
        self.store = store
        self._current: int | None = None
        self._refreshing = False
        self._deleted: list[tuple[int, str]] = []  # (id, title), most recent last

        self._refresh_pending = False
        layout = QVBoxLayout(self)
        layout.setContentsMargins(10, 12, 10, 10)
        layout.setSpacing(8)
        self.app_title = QLabel("mmchat", objectName="appTitle")
        layout.addWidget(self.app_title)
        self.new_button = QPushButton("  New chat", objectName="newChat")
        self.new_button.setToolTip("Start a new conversation (Ctrl+N)")
        self.new_button.setCursor(Qt.CursorShape.PointingHandCursor)
        self.new_button.clicked.connect(self.new_chat_requested)
        layout.addWidget(self.new_button)
        self.search = QLineEdit()
        self.search.setPlaceholderText("Search conversations")
        self.search.setClearButtonEnabled(True)
        self.search.setToolTip("Search titles and message text (Ctrl+K)")
        self._search_action = self.search.addAction(icons.icon("search", theme.current().muted),
                                                    QLineEdit.ActionPosition.LeadingPosition)
        self._debounce = QTimer(self, singleShot=True, interval=SEARCH_DEBOUNCE_MS)
        self._debounce.timeout.connect(self.refresh)
        self.search.textChanged.connect(lambda _t: self._debounce.start())
        layout.addWidget(self.search)
        layout.addWidget(self._build_list(), 1)
        self.empty_label = QLabel("No conversations yet", objectName="noticeLabel")
        self.empty_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        layout.addWidget(self.empty_label)
        layout.addWidget(self._build_undo_bar())
        bottom = QHBoxLayout()
        self.settings_button = self._tool("settings", "Settings (Ctrl+,)")
        self.settings_button.clicked.connect(self.settings_requested)
        self.help_button = self._tool("help", "Keyboard shortcuts and About (F1)")
        self.help_button.clicked.connect(self.help_requested)
        self.profile_button = self._tool("user", "Profile & memory (Ctrl+Shift+P)")
        self.profile_button.clicked.connect(self.profile_requested)
        bottom.addWidget(self.settings_button)
        bottom.addWidget(self.profile_button)
        bottom.addStretch(1)
        bottom.addWidget(self.help_button)
        layout.addLayout(bottom)
        self.apply_theme(theme.current())
        self.refresh()

    def _build_list(self) -> QListWidget:
        self.list = QListWidget()
        self.list.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.list.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.list.setEditTriggers(QAbstractItemView.EditTrigger.EditKeyPressed)
        self.list.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.list.customContextMenuRequested.connect(self._context_menu)
        self.list.itemClicked.connect(self._clicked)
        self.list.currentItemChanged.connect(self._current_changed)
        self.list.itemChanged.connect(self._renamed)
        delegate = QStyledItemDelegate(self.list)  # its own, so only this list hears its editor close
        delegate.closeEditor.connect(self._editor_closed, Qt.ConnectionType.QueuedConnection)
        self.list.setItemDelegate(delegate)
        rename = QAction("Rename", self.list, shortcut=QKeySequence(Qt.Key.Key_F2))
        rename.setShortcutContext(Qt.ShortcutContext.WidgetShortcut)
        rename.triggered.connect(self.rename_current)
        delete = QAction("Delete", self.list, shortcut=QKeySequence(QKeySequence.StandardKey.Delete))
        delete.setShortcutContext(Qt.ShortcutContext.WidgetShortcut)
        delete.triggered.connect(self.delete_current)
        self.list.addActions([rename, delete])
        return self.list

    def _build_undo_bar(self) -> QFrame:
        self.undo_bar = QFrame(objectName="undoBar")
        row = QHBoxLayout(self.undo_bar)
        row.setContentsMargins(12, 6, 6, 6)
        self.undo_label = QLabel()
        self.undo_label.setTextFormat(Qt.TextFormat.PlainText)
        self.undo_button = QPushButton("Undo")
        self.undo_button.setToolTip("Restore the conversation (Ctrl+Z)")
        self.undo_button.clicked.connect(self.undo_delete)
        row.addWidget(self.undo_label, 1)
        row.addWidget(self.undo_button)
        self.undo_bar.hide()
        self._undo_timer = QTimer(self, singleShot=True, interval=UNDO_MS)
        self._undo_timer.timeout.connect(self._undo_expired)
        return self.undo_bar

    def _tool(self, name: str, tooltip: str) -> QToolButton:
        button = QToolButton()
        button.setIconSize(QSize(18, 18))
        button.setToolTip(tooltip)
        button.setProperty("icon_name", name)
        button.setCursor(Qt.CursorShape.PointingHandCursor)
        return button

    # -- content ---------------------------------------------------------------------------------
    def set_store(self, store: ConversationStore) -> None:
        self.store = store
        self._deleted.clear()
        self.undo_bar.hide()
        self.refresh()

    def refresh(self) -> None:
        """Re-read the list from the store (after a send, rename, delete, or a search change).
        While a title is being edited in place the refresh waits, so the edit is not thrown away."""
        if self.list.state() == QAbstractItemView.State.EditingState:
            self._refresh_pending = True
            return
        self._refresh_pending = False
        query = self.search.text().strip()
        # A conversation with no messages yet (a send that failed) is not worth a row.
        conversations = [c for c in self.store.list_conversations(search=query or None) if c.message_count]
        self._refreshing = True
        try:
            self.list.clear()
            group = None
            for conversation in conversations:
                heading = day_group(conversation.updated)
                if heading != group and not query:
                    group = heading
                    self.list.addItem(self._heading(heading))
                item = QListWidgetItem(conversation.title)
                item.setData(ID_ROLE, conversation.id)
                item.setToolTip(f"{conversation.title}\n{conversation.message_count} messages")
                item.setFlags(item.flags() | Qt.ItemFlag.ItemIsEditable)
                self.list.addItem(item)
                if conversation.id == self._current:
                    self.list.setCurrentItem(item)
        finally:
            self._refreshing = False
        self.empty_label.setVisible(not conversations)
        self.empty_label.setText(f"Nothing matches “{query}”" if query else "No conversations yet")

    def _heading(self, text: str) -> QListWidgetItem:
        item = QListWidgetItem(text.upper())
        item.setFlags(Qt.ItemFlag.NoItemFlags)
        font = QFont(self.font())
        font.setPointSizeF(max(7.0, font.pointSizeF() - 2))
        font.setBold(True)
        item.setFont(font)
        item.setForeground(QColor(theme.current().muted))
        item.setSizeHint(QSize(0, 30))
        return item

    def ids(self) -> list[int]:
        return [self.list.item(i).data(ID_ROLE) for i in range(self.list.count())
                if self.list.item(i).data(ID_ROLE) is not None]

    def titles(self) -> list[str]:
        return [self.list.item(i).text() for i in range(self.list.count())
                if self.list.item(i).data(ID_ROLE) is not None]

    def item_for(self, conversation_id: int) -> QListWidgetItem | None:
        for i in range(self.list.count()):
            if self.list.item(i).data(ID_ROLE) == conversation_id:
                return self.list.item(i)
        return None

    def set_current(self, conversation_id: int | None) -> None:
        self._current = conversation_id
        self._refreshing = True
        try:
            item = self.item_for(conversation_id) if conversation_id is not None else None
            if item is None:
                self.list.clearSelection()
                self.list.setCurrentItem(None)
            else:
                self.list.setCurrentItem(item)
        finally:
            self._refreshing = False

    def _clicked(self, item: QListWidgetItem) -> None:
        conversation_id = item.data(ID_ROLE)
        if conversation_id is not None and conversation_id != self._current:
            self._current = conversation_id
            self.conversation_selected.emit(conversation_id)

    def _current_changed(self, item: QListWidgetItem | None, _previous) -> None:
        if self._refreshing or item is None:
            return
        self._clicked(item)

    # -- rename ----------------------------------------------------------------------------------
    def rename_current(self) -> None:
        item = self.list.currentItem()
        if item is not None and item.data(ID_ROLE) is not None:
            self.list.editItem(item)

    def _editor_closed(self, *_args) -> None:
        if self._refresh_pending:
            self.refresh()

    def _renamed(self, item: QListWidgetItem) -> None:
        if self._refreshing or item.data(ID_ROLE) is None:
            return
        self.store.rename_conversation(item.data(ID_ROLE), item.text())
        self.refresh()

    def rename(self, conversation_id: int, title: str) -> None:
        self.store.rename_conversation(conversation_id, title)
        self.refresh()

    # -- delete and undo -------------------------------------------------------------------------
    def delete_current(self) -> None:
        item = self.list.currentItem()
        if item is not None and item.data(ID_ROLE) is not None:
            self.delete(item.data(ID_ROLE))

    def delete(self, conversation_id: int) -> None:
        conversation = self.store.get_conversation(conversation_id)
        if conversation is None:
            return
        self.store.delete_conversation(conversation_id)
        self._deleted.append((conversation_id, conversation.title))
        self.undo_label.setText(f"Deleted “{_short(conversation.title)}”")
        self.undo_bar.show()
        self._undo_timer.start()
        if conversation_id == self._current:
            self._current = None
        self.refresh()
        self.conversation_deleted.emit(conversation_id)

    def undo_delete(self) -> bool:
        if not self._deleted or not self.undo_bar.isVisible():
            return False
        conversation_id, _title = self._deleted.pop()
        self.store.restore_conversation(conversation_id)
        if self._deleted:
            self.undo_label.setText(f"Deleted “{_short(self._deleted[-1][1])}”")
            self._undo_timer.start()
        else:
            self.undo_bar.hide()
        self.refresh()
        self.conversation_restored.emit(conversation_id)
        return True

    def _undo_expired(self) -> None:
        self.undo_bar.hide()
        self._deleted.clear()

    def _context_menu(self, pos) -> None:
        item = self.list.itemAt(pos)
        if item is None or item.data(ID_ROLE) is None:
            return
        self.list.setCurrentItem(item)
        menu = QMenu(self)
        menu.addAction(icons.icon("edit", theme.current().text), "Rename", lambda: self.list.editItem(item))
        menu.addAction(icons.icon("trash", theme.current().danger), "Delete",
                       lambda: self.delete(item.data(ID_ROLE)))
        menu.popup(self.list.viewport().mapToGlobal(pos))

    def apply_theme(self, t: theme.Theme) -> None:
        self.new_button.setIcon(icons.icon("plus", t.text))
        self._search_action.setIcon(icons.icon("search", t.muted))
        for button in (self.settings_button, self.profile_button, self.help_button):
            button.setIcon(icons.icon(button.property("icon_name"), t.muted))
        if not self._refreshing:
            self.refresh()


def _short(title: str, limit: int = 28) -> str:
    return title if len(title) <= limit else title[: limit - 1] + "…"
