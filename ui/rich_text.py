"""Widgets that show rendered message text: auto-height rich text, code blocks with Copy, Markdown.

:class:`MarkdownView` turns Markdown into a column of :class:`RichText` runs and :class:`CodeBlock` s
(see :mod:`mmchat_ui.markdown` for why it is safe) and, while a reply streams, updates only the blocks
that changed so the text does not flicker.
"""

from __future__ import annotations

import math
import weakref

import shiboken6
from PySide6.QtCore import QSize, Qt, QTimer, QUrl, Signal
from PySide6.QtGui import QDesktopServices, QFont, QFontDatabase, QGuiApplication, QTextOption
from PySide6.QtWidgets import (QFrame, QHBoxLayout, QLabel, QSizePolicy, QTextBrowser, QToolButton,
                               QVBoxLayout, QWidget)

from mmchat_ui import icons, markdown, theme

COPIED_FEEDBACK_MS = 1500


_PLAIN_VIEWS: weakref.WeakSet[MarkdownView] = weakref.WeakSet()  # shown as plain text during the warm-up


def mono_font() -> QFont:
    font = QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont)
    font.setFamilies(theme.MONO_FAMILIES)
    font.setPointSizeF(theme.UI_FONT_PT - 0.5)
    return font


class RichText(QTextBrowser):
    """Read-only rich text that is exactly as tall as its content (no scroll bars of its own)."""

    def __init__(self, parent: QWidget | None = None, *, wrap: bool = True) -> None:
        super().__init__(parent)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff if wrap
                                          else Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        self.setLineWrapMode(QTextBrowser.LineWrapMode.WidgetWidth if wrap else QTextBrowser.LineWrapMode.NoWrap)
        self.setWordWrapMode(QTextOption.WrapMode.WrapAtWordBoundaryOrAnywhere)
        self.setOpenLinks(False)
        self.anchorClicked.connect(_open_link)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setTextInteractionFlags(Qt.TextInteractionFlag.TextBrowserInteraction)
        self.document().setDocumentMargin(0)
        self._wrap = wrap
        self.document().documentLayout().documentSizeChanged.connect(self._fit)
        self.horizontalScrollBar().rangeChanged.connect(self._fit)
        self.apply_theme(theme.current())

    def apply_theme(self, t: theme.Theme) -> None:
        self.document().setDefaultStyleSheet(markdown.style_sheet(
            muted=t.muted, accent=t.accent, inline_code_bg=t.inline_code_bg,
            border=t.border, code_bg=t.code_bg))

    def set_rich_text(self, text: str) -> None:
        self.setHtml(text)
        self._fit()

    def _content_height(self) -> int:
        margins = self.viewportMargins()
        height = math.ceil(self.document().size().height()) + margins.top() + margins.bottom()
        if not self._wrap and self.horizontalScrollBar().maximum() > 0:
            height += self.horizontalScrollBar().sizeHint().height()
        return height + 2 * self.frameWidth()

    def _fit(self, *_args) -> None:
        height = self._content_height()
        if height != self.height():
            self.setFixedHeight(height)

    def sizeHint(self) -> QSize:
        return QSize(super().sizeHint().width(), self._content_height())

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self._fit()

    def wheelEvent(self, event) -> None:
        # Vertical scrolling belongs to the chat; only unwrapped code scrolls sideways here.
        if not self._wrap and event.angleDelta().x() != 0:
            super().wheelEvent(event)
        else:
            event.ignore()


def _open_link(url: QUrl) -> None:
    if markdown.is_safe_link(url.toString()):
        QDesktopServices.openUrl(url)


class CodeBlock(QFrame):
    """A highlighted code block with its language and a Copy button."""

    copied = Signal(str)

    def __init__(self, block: markdown.Block, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("codeBlock")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        header = QFrame(objectName="codeHeader")
        row = QHBoxLayout(header)
        row.setContentsMargins(12, 3, 4, 3)
        self.language = QLabel()
        self.copy_button = QToolButton(text="Copy")
        self.copy_button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.copy_button.setCursor(Qt.CursorShape.PointingHandCursor)
        self.copy_button.setToolTip("Copy the code")
        self.copy_button.clicked.connect(self.copy)
        row.addWidget(self.language)
        row.addStretch(1)
        row.addWidget(self.copy_button)
        self.body = RichText(wrap=False)
        self.body.setFont(mono_font())
        self.body.setViewportMargins(12, 8, 12, 8)
        layout.addWidget(header)
        layout.addWidget(self.body)
        self._code = ""
        self._reset_button()
        self.set_block(block)

    @property
    def code(self) -> str:
        return self._code

    def set_block(self, block: markdown.Block) -> None:
        self._code = block.code
        self.language.setText(block.language or "code")
        self.body.set_rich_text(f"<pre style='margin:0'>{block.html}</pre>")

    def copy(self) -> None:
        QGuiApplication.clipboard().setText(self._code)
        self.copy_button.setText("Copied")
        self.copy_button.setIcon(icons.icon("check", theme.current().success))
        QTimer.singleShot(COPIED_FEEDBACK_MS, self, self._reset_button)
        self.copied.emit(self._code)

    def _reset_button(self) -> None:
        self.copy_button.setText("Copy")
        self.copy_button.setIcon(icons.icon("copy", theme.current().muted))

    def apply_theme(self, t: theme.Theme) -> None:
        self.body.apply_theme(t)
        self._reset_button()


def render_deferred() -> None:
    """Render the views that showed plain text while the Markdown warm-up ran (GUI thread)."""
    views = list(_PLAIN_VIEWS)
    _PLAIN_VIEWS.clear()
    for view in views:
        if shiboken6.isValid(view):  # its widget may have been deleted (e.g. a conversation switch)
            view.set_markdown(view.text, force=True)


class MarkdownView(QWidget):
    """Rendered Markdown: rich-text runs and code blocks, updated in place as text streams in."""

    def __init__(self, text: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._layout = QVBoxLayout(self)
        self._layout.setContentsMargins(0, 0, 0, 0)
        self._layout.setSpacing(8)
        self._text = ""
        self._blocks: list[markdown.Block] = []
        self._widgets: list[QWidget] = []
        self.set_markdown(text)

    @property
    def text(self) -> str:
        return self._text

    def widgets(self) -> list[QWidget]:
        return list(self._widgets)

    def code_blocks(self) -> list[CodeBlock]:
        return [w for w in self._widgets if isinstance(w, CodeBlock)]

    def set_markdown(self, text: str, *, force: bool = False) -> None:
        if text == self._text and not force:
            return
        self._text = text
        if markdown.warming_up():
            blocks = markdown.plain(text)
            _PLAIN_VIEWS.add(self)
        else:
            blocks = markdown.render(text, pygments_style=theme.current().pygments_style)
        for index, block in enumerate(blocks):
            if index < len(self._widgets) and self._blocks[index].kind == block.kind:
                if force or self._blocks[index] != block:
                    self._update(self._widgets[index], block)
            else:
                self._truncate(index)
                widget = self._create(block)
                self._widgets.append(widget)
                self._layout.addWidget(widget)
            if index < len(self._blocks):
                self._blocks[index] = block
            else:
                self._blocks.append(block)
        self._truncate(len(blocks))

    def _truncate(self, count: int) -> None:
        while len(self._widgets) > count:
            widget = self._widgets.pop()
            self._layout.removeWidget(widget)
            widget.deleteLater()
        del self._blocks[count:]

    def _create(self, block: markdown.Block) -> QWidget:
        if block.kind == "code":
            return CodeBlock(block)
        widget = RichText()
        widget.set_rich_text(block.html)
        return widget

    @staticmethod
    def _update(widget: QWidget, block: markdown.Block) -> None:
        if isinstance(widget, CodeBlock):
            widget.set_block(block)
        else:
            widget.set_rich_text(block.html)

    def apply_theme(self, t: theme.Theme) -> None:
        for widget in self._widgets:
            widget.apply_theme(t)
        self.set_markdown(self._text, force=True)
