"""The conversation: user bubbles, assistant replies rendered from Markdown, notices, an empty state.

:class:`ChatView` shows what it is given (stored :class:`Message` s, then events of the reply in
progress) and reports what the user asks for through signals; it never talks to the engine.
All message text is treated as untrusted: user text is shown as plain text, replies go through
:mod:`mmchat_ui.markdown`.
"""

from __future__ import annotations

import dataclasses

from PySide6.QtCore import QSize, Qt, QTimer, Signal
from PySide6.QtGui import QGuiApplication, QImage
from PySide6.QtWidgets import (QFrame, QGridLayout, QHBoxLayout, QLabel, QPlainTextEdit, QPushButton,
                               QScrollArea, QSizePolicy, QToolButton, QVBoxLayout, QWidget)

from mmchat.store import Message
from mmchat_ui import icons, theme
from mmchat_ui.media_widgets import MESSAGE_THUMB_SIDE, Thumbnail, VoiceChip, decode_image, encoded_size
from mmchat_ui.memory_widgets import MemoryNote
from mmchat_ui.rich_text import COPIED_FEEDBACK_MS, MarkdownView

COLUMN_MAX_WIDTH = 800  # px, the readable width of the conversation column
BUBBLE_WIDTH_FRACTION = 0.8  # of the column, for user bubbles
STICK_TO_BOTTOM_PX = 48  # within this of the bottom, new text keeps the view scrolled down
SUGGESTIONS = (
    ("Explain a concept", "Explain how a hash map works, with a short Python example."),
    ("Write some code", "Write a Python function that checks whether a string is a palindrome."),
    ("Summarise", "Summarise the main ideas of the scientific method in three bullet points."),
    ("Brainstorm", "Give me five names for a cosy neighbourhood café."),
)


def _action(name: str, tooltip: str) -> QToolButton:
    button = QToolButton()
    button.setObjectName("messageAction")
    button.setIcon(icons.icon(name, theme.current().muted))
    button.setIconSize(QSize(15, 15))
    button.setToolTip(tooltip)
    button.setCursor(Qt.CursorShape.PointingHandCursor)
    button.setProperty("icon_name", name)
    return button


def _refresh_action_icons(widget: QWidget, t: theme.Theme) -> None:
    for button in widget.findChildren(QToolButton, "messageAction"):
        name = button.property("icon_name")
        if name:
            button.setIcon(icons.icon(name, t.muted))


def _copy_with_feedback(button: QToolButton, text: str) -> None:
    QGuiApplication.clipboard().setText(text)
    button.setIcon(icons.icon("check", theme.current().success))
    QTimer.singleShot(COPIED_FEEDBACK_MS, button,  # the button as context: no call once it is gone
                      lambda: button.setIcon(icons.icon(button.property("icon_name"), theme.current().muted)))


class PromptEdit(QPlainTextEdit):
    """Plain-text input where Enter submits and Shift+Enter starts a new line."""

    submitted = Signal()
    cancelled = Signal()

    def keyPressEvent(self, event) -> None:
        if event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter) and not (
                event.modifiers() & (Qt.KeyboardModifier.ShiftModifier | Qt.KeyboardModifier.AltModifier)):
            event.accept()
            self.submitted.emit()
            return
        if event.key() == Qt.Key.Key_Escape:
            event.accept()
            self.cancelled.emit()
            return
        super().keyPressEvent(event)


class UserMessage(QWidget):
    """A user bubble with its images and voice clip; Edit turns it into an editor."""

    edit_submitted = Signal(int, str)  # message id, new text
    image_clicked = Signal(QImage)

    def __init__(self, message: Message, *, previews: list[QImage] | None = None,
                 parent: QWidget | None = None) -> None:
        """``previews``: small copies of the message's images, in order, when the caller has them
        (the composer made them off the GUI thread); otherwise they are decoded here, scaled on reading."""
        super().__init__(parent)
        self.message = message
        outer = QHBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addStretch(1)
        column = QVBoxLayout()
        column.setSpacing(2)
        outer.addLayout(column)
        self.bubble = QFrame(objectName="userBubble")
        self.bubble.setSizePolicy(QSizePolicy.Policy.Maximum, QSizePolicy.Policy.Preferred)
        inner = QVBoxLayout(self.bubble)
        inner.setContentsMargins(14, 10, 14, 10)
        inner.setSpacing(8)
        self.thumbnails: list[Thumbnail] = []
        images = [a for a in message.attachments if a.kind == "image"]
        if images:
            row = QHBoxLayout()
            row.setSpacing(6)
            for i, attachment in enumerate(images):
                data = attachment.data
                preview = previews[i] if previews else decode_image(data, max_side=2 * MESSAGE_THUMB_SIDE)
                thumb = Thumbnail(preview, full=lambda data=data: decode_image(data), full_size=encoded_size(data))
                thumb.clicked.connect(self.image_clicked)
                self.thumbnails.append(thumb)
                row.addWidget(thumb)
            row.addStretch(1)
            inner.addLayout(row)
        self.voice: VoiceChip | None = None
        for attachment in message.attachments:
            if attachment.kind == "audio":
                self.voice = VoiceChip(attachment.data, float(attachment.meta.get("duration_s", 0)))
                inner.addWidget(self.voice, 0, Qt.AlignmentFlag.AlignLeft)
        self.label = QLabel()
        self.label.setTextFormat(Qt.TextFormat.PlainText)  # user text is never interpreted
        self.label.setWordWrap(True)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.label.setText(message.content)
        inner.addWidget(self.label)
        self.label.setVisible(bool(message.content))  # only once parented: a parentless show opens a window
        self.editor: QWidget | None = None
        column.addWidget(self.bubble, 0, Qt.AlignmentFlag.AlignRight)
        actions = QHBoxLayout()
        actions.setSpacing(0)
        actions.addStretch(1)
        self.copy_button = _action("copy", "Copy message")
        self.copy_button.clicked.connect(lambda: _copy_with_feedback(self.copy_button, self.message.content))
        self.edit_button = _action("edit", "Edit and resend")
        self.edit_button.clicked.connect(self.start_editing)
        actions.addWidget(self.copy_button)
        actions.addWidget(self.edit_button)
        column.addLayout(actions)

    @property
    def text(self) -> str:
        return self.message.content

    def set_max_width(self, width: int) -> None:
        self.bubble.setMaximumWidth(width)
        # A word-wrapped label guesses a narrow width; ask for the text's own width up to the limit.
        metrics = self.label.fontMetrics()
        longest = max((metrics.horizontalAdvance(line) for line in self.message.content.splitlines()), default=0)
        margins = self.bubble.layout().contentsMargins()
        self.label.setMinimumWidth(min(width - margins.left() - margins.right(), longest + 2))
        if self.editor is not None:
            self.bubble.setMinimumWidth(min(width, 520))

    def start_editing(self) -> None:
        if self.editor is not None:
            return
        self.editor = QWidget()
        layout = QVBoxLayout(self.editor)
        layout.setContentsMargins(0, 0, 0, 0)
        self.edit_box = PromptEdit(objectName="editBox")
        self.edit_box.setPlainText(self.message.content)
        self.edit_box.setMinimumHeight(80)
        self.edit_box.submitted.connect(self._submit_edit)
        self.edit_box.cancelled.connect(self.stop_editing)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        cancel = QPushButton("Cancel")
        cancel.clicked.connect(self.stop_editing)
        send = QPushButton("Send", objectName="primary")
        send.clicked.connect(self._submit_edit)
        buttons.addWidget(cancel)
        buttons.addWidget(send)
        layout.addWidget(self.edit_box)
        layout.addLayout(buttons)
        self.label.hide()
        self.bubble.layout().addWidget(self.editor)
        self.bubble.setMinimumWidth(min(self.bubble.maximumWidth(), 520))
        self.edit_box.setFocus()
        cursor = self.edit_box.textCursor()
        cursor.movePosition(cursor.MoveOperation.End)
        self.edit_box.setTextCursor(cursor)

    def stop_editing(self) -> None:
        if self.editor is None:
            return
        self.editor.deleteLater()
        self.editor = None
        self.bubble.setMinimumWidth(0)
        self.label.setVisible(bool(self.message.content))

    def _submit_edit(self) -> None:
        text = self.edit_box.toPlainText().strip()
        if text or self.message.attachments:
            self.edit_submitted.emit(self.message.id, text)

    def set_busy(self, busy: bool) -> None:
        self.edit_button.setEnabled(not busy)

    def apply_theme(self, t: theme.Theme) -> None:
        _refresh_action_icons(self, t)


class Avatar(QLabel):
    SIZE = 30  # px

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setFixedSize(self.SIZE, self.SIZE)
        self.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.apply_theme(theme.current())

    def apply_theme(self, t: theme.Theme) -> None:
        self.setStyleSheet(f"background: {t.accent}; border-radius: {self.SIZE // 2}px;")
        self.setPixmap(icons.icon("sparkle", t.accent_text).pixmap(QSize(18, 18)))


class AssistantMessage(QWidget):
    """A reply: Markdown with code blocks, a typing indicator while waiting, and actions."""

    regenerate_requested = Signal()
    read_aloud_requested = Signal(str)
    rated = Signal(int, int)  # message id, +1 / -1
    why_requested = Signal(int)  # message id

    def __init__(self, message: Message | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.message = message
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.setSpacing(12)
        self.avatar = Avatar()
        row.addWidget(self.avatar, 0, Qt.AlignmentFlag.AlignTop)
        column = QVBoxLayout()
        column.setSpacing(4)
        row.addLayout(column, 1)
        self.body = MarkdownView(message.content if message else "")
        self.typing = QLabel("Thinking…", objectName="noticeLabel")
        self._dots = 0
        self._typing_timer = QTimer(self, interval=400)
        self._typing_timer.timeout.connect(self._animate)
        if message is None:
            self._typing_timer.start()
        self.status = QLabel(objectName="messageMeta")
        self.status.hide()
        column.addWidget(self.typing)
        column.addWidget(self.body)
        column.addWidget(self.status)
        self.typing.setVisible(message is None)
        actions = QHBoxLayout()
        actions.setSpacing(0)
        self.copy_button = _action("copy", "Copy reply")
        self.copy_button.clicked.connect(lambda: _copy_with_feedback(self.copy_button, self.text))
        self.speak_button = _action("volume", "Read aloud")
        self.speak_button.clicked.connect(lambda: self.read_aloud_requested.emit(self.text))
        self.regenerate_button = _action("refresh", "Regenerate reply (Ctrl+R)")
        self.regenerate_button.clicked.connect(self.regenerate_requested)
        self.up_button = _action("thumbs-up", "Good reply")
        self.down_button = _action("thumbs-down", "Bad reply… (optionally say what was wrong)")
        self.why_button = _action("info", "Why this answer? (the memories it used)")
        for button, rating in ((self.up_button, 1), (self.down_button, -1)):
            button.setCheckable(True)
            button.clicked.connect(lambda _=False, r=rating: self._rate(r))
        self.why_button.clicked.connect(lambda: self.message and self.why_requested.emit(self.message.id))
        self.personal_buttons = (self.up_button, self.down_button, self.why_button)
        for button in (self.copy_button, self.speak_button, self.regenerate_button, *self.personal_buttons):
            actions.addWidget(button)
        actions.addStretch(1)
        self.actions = QWidget()
        self.actions.setLayout(actions)
        policy = self.actions.sizePolicy()
        policy.setRetainSizeWhenHidden(True)
        self.actions.setSizePolicy(policy)
        column.addWidget(self.actions)
        self.actions.setVisible(message is not None)
        if message is not None:
            self._show_status(message.status)
        self.set_rating((message.meta.get("feedback") or {}).get("rating", 0) if message else 0)

    @property
    def text(self) -> str:
        return self.body.text

    def _rate(self, rating: int) -> None:
        self.set_rating((self.message.meta.get("feedback") or {}).get("rating", 0) if self.message else 0)
        if self.message is not None and self.message.id:
            self.rated.emit(self.message.id, rating)  # checked once the feedback is stored (set_rating)

    def rating_stored(self, rating: int) -> None:
        meta = {**self.message.meta, "feedback": {**(self.message.meta.get("feedback") or {}), "rating": rating}}
        self.message = dataclasses.replace(self.message, meta=meta)
        self.set_rating(rating)

    def set_rating(self, rating: int) -> None:
        self.up_button.setChecked(rating == 1)
        self.down_button.setChecked(rating == -1)

    def set_personal(self, enabled: bool) -> None:
        """Rating and "why" need a stored reply in a chat with a profile (not a temporary chat)."""
        for button in self.personal_buttons:
            button.setVisible(enabled and self.message is not None and bool(self.message.id))

    @property
    def streaming(self) -> bool:
        return self.message is None

    def set_text(self, text: str) -> None:
        if text and self.typing.isVisible():
            self._typing_timer.stop()
            self.typing.hide()
        self.body.set_markdown(text)

    def finish(self, message: Message | None, *, text: str, error: str | None = None) -> None:
        self._typing_timer.stop()
        self.typing.hide()
        self.message = message
        self.body.set_markdown(text)
        if error:
            self.status.setText(error)
            self.status.setObjectName("errorLabel")
            self.status.setStyle(self.status.style())
            self.status.show()
        elif message is not None:
            self._show_status(message.status, message.meta)
        self.actions.setVisible(bool(text))

    def _show_status(self, status: str, meta: dict | None = None) -> None:
        if status == "stopped":
            self.status.setText("Stopped")
            self.status.show()
        elif status == "error":
            self.status.setText("The reply was cut short by an error")
            self.status.show()

    def _animate(self) -> None:
        self._dots = (self._dots + 1) % 4
        self.typing.setText("Thinking" + "." * self._dots)

    def set_last(self, last: bool) -> None:
        self.regenerate_button.setVisible(last)

    def set_busy(self, busy: bool) -> None:
        self.regenerate_button.setEnabled(not busy)

    def apply_theme(self, t: theme.Theme) -> None:
        self.avatar.apply_theme(t)
        self.body.apply_theme(t)
        _refresh_action_icons(self, t)


class Notice(QLabel):
    """A one-line notice between messages (what the engine wants the user to know, or an error)."""

    def __init__(self, text: str, *, error: bool = False, parent: QWidget | None = None) -> None:
        super().__init__(text, parent)
        self.setObjectName("errorLabel" if error else "noticeLabel")
        self.setTextFormat(Qt.TextFormat.PlainText)
        self.setWordWrap(True)
        self.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.error = error

    def apply_theme(self, t: theme.Theme) -> None:
        pass


class EmptyState(QWidget):
    """What a new chat shows: a greeting and a few prompts to start from."""

    suggestion_chosen = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 60, 0, 0)
        layout.setSpacing(6)
        self.avatar = Avatar()
        layout.addWidget(self.avatar, 0, Qt.AlignmentFlag.AlignHCenter)
        self.title = QLabel("How can I help?", objectName="emptyTitle")
        self.title.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.subtitle = QLabel("Everything runs on this computer. Type, drop an image, or hold the mic to talk.",
                               objectName="emptySubtitle")
        self.subtitle.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.subtitle.setWordWrap(True)
        layout.addSpacing(8)
        layout.addWidget(self.title)
        layout.addWidget(self.subtitle)
        layout.addSpacing(24)
        grid = QGridLayout()
        grid.setSpacing(10)
        for i, (title, prompt) in enumerate(SUGGESTIONS):
            button = QPushButton(f"{title}\n{prompt[:48]}…" if len(prompt) > 48 else f"{title}\n{prompt}",
                                 objectName="suggestion")
            button.setCursor(Qt.CursorShape.PointingHandCursor)
            button.setToolTip(prompt)
            button.clicked.connect(lambda _=False, p=prompt: self.suggestion_chosen.emit(p))
            grid.addWidget(button, i // 2, i % 2)
        layout.addLayout(grid)

    def apply_theme(self, t: theme.Theme) -> None:
        self.avatar.apply_theme(t)


class ChatView(QScrollArea):
    """The scrolling conversation column."""

    edit_submitted = Signal(int, str)
    regenerate_requested = Signal()
    read_aloud_requested = Signal(str)
    image_clicked = Signal(QImage)
    suggestion_chosen = Signal(str)
    rated = Signal(object, int)  # AssistantMessage, +1 / -1
    why_requested = Signal(int)  # message id
    memory_action = Signal(object, str, int)  # MemoryNote, "approve" | "reject" | "delete", memory id

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("chatView")
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        canvas = QWidget(objectName="chatPane")
        outer = QHBoxLayout(canvas)
        outer.setContentsMargins(24, 0, 24, 0)
        self.column = QWidget(objectName="chatColumn")
        self.column.setMaximumWidth(COLUMN_MAX_WIDTH)
        outer.addWidget(self.column)
        self._layout = QVBoxLayout(self.column)
        self._layout.setContentsMargins(0, 20, 0, 28)
        self._layout.setSpacing(18)
        self.temp_banner = QLabel("Temporary chat — nothing is saved; it is gone when you leave it.",
                                  objectName="tempBanner")
        self.temp_banner.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.temp_banner.hide()
        self._layout.addWidget(self.temp_banner)
        self.empty = EmptyState()
        self.empty.suggestion_chosen.connect(self.suggestion_chosen)
        self._layout.addWidget(self.empty)
        self._layout.addStretch(1)
        self.setWidget(canvas)
        self._items: list[QWidget] = []
        self._busy = False
        self._personal = False
        self._stick = True
        bar = self.verticalScrollBar()
        bar.rangeChanged.connect(self._on_range_changed)
        bar.valueChanged.connect(self._on_scrolled)

    # -- content ---------------------------------------------------------------------------------
    def items(self) -> list[QWidget]:
        return list(self._items)

    def messages(self) -> list[QWidget]:
        return [w for w in self._items if isinstance(w, (UserMessage, AssistantMessage))]

    def set_messages(self, messages: list[Message], *, temporary: bool = False) -> None:
        self.clear()
        self.temp_banner.setVisible(temporary)
        for message in messages:
            if message.role == "user":
                self.add_user(message, scroll=False)
            elif message.role == "assistant":
                self._append(AssistantMessage(message))
        self._update_state()
        self._stick = True
        QTimer.singleShot(0, self.scroll_to_bottom)

    def clear(self) -> None:
        for widget in self._items:
            self._layout.removeWidget(widget)
            widget.deleteLater()
        self._items.clear()
        self.temp_banner.hide()
        self._update_state()

    def set_temporary(self, temporary: bool) -> None:
        self.temp_banner.setVisible(temporary)

    def add_user(self, message: Message, *, previews: list[QImage] | None = None, scroll: bool = True) -> UserMessage:
        widget = UserMessage(message, previews=previews)
        widget.edit_submitted.connect(self.edit_submitted)
        widget.image_clicked.connect(self.image_clicked)
        self._append(widget)
        if scroll:
            self._stick = True
        return widget

    def begin_reply(self) -> AssistantMessage:
        widget = AssistantMessage()
        self._append(widget)
        self._stick = True
        return widget

    def add_notice(self, text: str, *, error: bool = False, before: QWidget | None = None) -> Notice:
        """A notice at the end, or just above ``before`` (the reply it is about)."""
        widget = Notice(text, error=error)
        self._insert(widget, before)
        return widget

    def add_memory_note(self, memory, *, before: QWidget | None = None) -> MemoryNote:
        """A candidate memory from the user's turn, above the reply (``before``)."""
        widget = MemoryNote(memory)
        widget.action.connect(lambda verb, memory_id: self.memory_action.emit(widget, verb, memory_id))
        self._insert(widget, before)
        return widget

    def memory_notes(self) -> list[MemoryNote]:
        return [w for w in self._items if isinstance(w, MemoryNote)]

    def _insert(self, widget: QWidget, before: QWidget | None) -> None:
        if before is not None and before in self._items:
            self._items.insert(self._items.index(before), widget)
            self._layout.insertWidget(self._layout.indexOf(before), widget)
            widget.show()
            self._update_state()
        else:
            self._append(widget)

    def truncate_from(self, message_id: int) -> None:
        """Remove the message ``message_id`` and everything shown after it."""
        for index, widget in enumerate(self._items):
            message = getattr(widget, "message", None)
            if message is not None and message.id >= message_id:
                for gone in self._items[index:]:
                    self._layout.removeWidget(gone)
                    gone.deleteLater()
                del self._items[index:]
                break
        self._update_state()

    def remove(self, widget: QWidget) -> None:
        if widget in self._items:
            self._items.remove(widget)
            self._layout.removeWidget(widget)
            widget.deleteLater()
            self._update_state()

    def last_reply(self) -> AssistantMessage | None:
        replies = [w for w in self._items if isinstance(w, AssistantMessage)]
        return replies[-1] if replies else None

    def _append(self, widget: QWidget) -> None:
        if isinstance(widget, AssistantMessage):
            widget.regenerate_requested.connect(self.regenerate_requested)
            widget.read_aloud_requested.connect(self.read_aloud_requested)
            widget.rated.connect(lambda _id, rating, w=widget: self.rated.emit(w, rating))
            widget.why_requested.connect(self.why_requested)
        self._layout.insertWidget(self._layout.count() - 1, widget)
        widget.show()  # now, not on the layout's queued show: tests and scrolling see it at once
        self._items.append(widget)
        self._fit_bubbles()
        self._update_state()

    def _update_state(self) -> None:
        self.empty.setVisible(not self._items)
        replies = [w for w in self._items if isinstance(w, AssistantMessage)]
        last_message = self.messages()[-1] if self.messages() else None
        for reply in replies:
            reply.set_last(reply is last_message and not reply.streaming)
            reply.set_busy(self._busy)
            reply.set_personal(self._personal)
        for widget in self._items:
            if isinstance(widget, UserMessage):
                widget.set_busy(self._busy)

    def finish_reply(self, reply: AssistantMessage, message: Message | None, *, text: str,
                     error: str | None = None) -> None:
        reply.finish(message, text=text, error=error)
        if not text and message is None:
            self.remove(reply)
        self._update_state()

    def set_busy(self, busy: bool) -> None:
        self._busy = busy
        self._update_state()

    def set_personal(self, enabled: bool) -> None:
        """Show 👍 / 👎 / "Why this answer?" on replies (a stored chat with a profile)."""
        self._personal = enabled
        self._update_state()

    # -- layout and scrolling --------------------------------------------------------------------
    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self._fit_bubbles()

    def _fit_bubbles(self) -> None:
        width = int(min(self.viewport().width() - 48, COLUMN_MAX_WIDTH) * BUBBLE_WIDTH_FRACTION)
        for widget in self._items:
            if isinstance(widget, UserMessage):
                widget.set_max_width(max(200, width))

    def scroll_to_bottom(self) -> None:
        bar = self.verticalScrollBar()
        bar.setValue(bar.maximum())

    def _on_range_changed(self, _low: int, high: int) -> None:
        if self._stick:
            self.verticalScrollBar().setValue(high)

    def _on_scrolled(self, value: int) -> None:
        self._stick = value >= self.verticalScrollBar().maximum() - STICK_TO_BOTTOM_PX

    def apply_theme(self, t: theme.Theme) -> None:
        self.empty.apply_theme(t)
        for widget in self._items:
            widget.apply_theme(t)
