"""Light and dark themes: a Fusion palette, one style sheet, and colours for rendered messages.

``"system"`` follows the desktop's colour scheme (``QStyleHints.colorScheme``) and keeps following
it while the app runs; ``"light"`` and ``"dark"`` pin one. Widgets read :func:`current` for colours
they paint themselves and listen to :attr:`ThemeManager.changed` to repaint.
"""

from __future__ import annotations

from dataclasses import dataclass

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtGui import QColor, QGuiApplication, QPalette
from PySide6.QtWidgets import QApplication

UI_FONT_PT = 10.5  # the base font size; everything else is relative to it
MONO_FAMILIES = ["JetBrains Mono", "Cascadia Code", "Menlo", "Consolas", "DejaVu Sans Mono", "monospace"]


@dataclass(frozen=True)
class Theme:
    name: str  # "light" | "dark"
    window: str  # main chat background
    sidebar: str
    surface: str  # composer, cards
    raised: str  # hover, chips
    border: str
    text: str
    muted: str
    accent: str
    accent_text: str  # text on the accent colour
    user_bubble: str
    code_bg: str
    code_header: str
    inline_code_bg: str
    danger: str
    warning: str
    success: str
    selection: str
    pygments_style: str

    @property
    def dark(self) -> bool:
        return self.name == "dark"


LIGHT = Theme(
    name="light", window="#ffffff", sidebar="#f6f7f9", surface="#ffffff", raised="#eceef2",
    border="#e1e4e8", text="#1f2328", muted="#6a737d", accent="#4f5bd5", accent_text="#ffffff",
    user_bubble="#eef0fb", code_bg="#f6f8fa", code_header="#eaeef2", inline_code_bg="#eff1f3",
    danger="#cf222e", warning="#9a6700", success="#1a7f37", selection="#dde3fb", pygments_style="default",
)
DARK = Theme(
    name="dark", window="#1f2023", sidebar="#18191c", surface="#2a2b2f", raised="#323338",
    border="#3a3b40", text="#e6e7ea", muted="#9a9ca3", accent="#8b95ff", accent_text="#14151a",
    user_bubble="#2f3247", code_bg="#16171a", code_header="#242529", inline_code_bg="#2e2f34",
    danger="#ff7b72", warning="#d29922", success="#3fb950", selection="#3a4170", pygments_style="monokai",
)
THEMES = {"light": LIGHT, "dark": DARK}

_current: Theme = LIGHT


def current() -> Theme:
    return _current


def system_is_dark() -> bool:
    hints = QGuiApplication.styleHints()
    return hints is not None and hints.colorScheme() == Qt.ColorScheme.Dark


def resolve(choice: str) -> Theme:
    """The theme for a settings value: "light", "dark" or "system"."""
    if choice in THEMES:
        return THEMES[choice]
    return DARK if system_is_dark() else LIGHT


def palette(theme: Theme) -> QPalette:
    p = QPalette()
    colours = {
        QPalette.ColorRole.Window: theme.window, QPalette.ColorRole.WindowText: theme.text,
        QPalette.ColorRole.Base: theme.surface, QPalette.ColorRole.AlternateBase: theme.sidebar,
        QPalette.ColorRole.Text: theme.text, QPalette.ColorRole.Button: theme.surface,
        QPalette.ColorRole.ButtonText: theme.text, QPalette.ColorRole.Highlight: theme.accent,
        QPalette.ColorRole.HighlightedText: theme.accent_text, QPalette.ColorRole.ToolTipBase: theme.surface,
        QPalette.ColorRole.ToolTipText: theme.text, QPalette.ColorRole.PlaceholderText: theme.muted,
        QPalette.ColorRole.Link: theme.accent, QPalette.ColorRole.BrightText: theme.danger,
        QPalette.ColorRole.Mid: theme.border, QPalette.ColorRole.Midlight: theme.raised,
        QPalette.ColorRole.Light: theme.raised, QPalette.ColorRole.Dark: theme.border,
    }
    for role, colour in colours.items():
        p.setColor(role, QColor(colour))
    for role in (QPalette.ColorRole.Text, QPalette.ColorRole.WindowText, QPalette.ColorRole.ButtonText):
        p.setColor(QPalette.ColorGroup.Disabled, role, QColor(theme.muted))
    return p


def style_sheet(t: Theme) -> str:
    """The app's style sheet. Object names (``#sidebar``) pick out the few special widgets."""
    return f"""
QWidget {{ color: {t.text}; }}
QMainWindow, #chatPane, #chatColumn, QScrollArea#chatView, #chatView > QWidget > QWidget {{ background: {t.window}; }}
QToolTip {{ background: {t.surface}; color: {t.text}; border: 1px solid {t.border}; padding: 4px 6px; border-radius: 6px; }}
#sidebar {{ background: {t.sidebar}; border-right: 1px solid {t.border}; }}
#sidebar QListWidget {{ background: transparent; border: none; outline: none; }}
#sidebar QListWidget::item {{ padding: 7px 10px; border-radius: 8px; margin: 1px 0; }}
#sidebar QListWidget::item:hover {{ background: {t.raised}; }}
#sidebar QListWidget::item:selected {{ background: {t.selection}; color: {t.text}; }}
#appTitle {{ font-size: 13pt; font-weight: 600; }}
QLabel#sectionHeader {{ color: {t.muted}; font-size: 8.5pt; font-weight: 600; padding: 10px 10px 2px 10px; }}
QLineEdit {{ background: {t.surface}; border: 1px solid {t.border}; border-radius: 8px; padding: 6px 8px;
             selection-background-color: {t.selection}; selection-color: {t.text}; }}
QLineEdit:focus {{ border-color: {t.accent}; }}
QPushButton {{ background: {t.surface}; border: 1px solid {t.border}; border-radius: 8px; padding: 6px 12px; }}
QPushButton:hover {{ background: {t.raised}; }}
QPushButton:disabled {{ color: {t.muted}; }}
QPushButton#primary {{ background: {t.accent}; color: {t.accent_text}; border: none; font-weight: 600; }}
QPushButton#primary:hover {{ background: {QColor(t.accent).lighter(110).name()}; }}
QPushButton#danger {{ color: {t.danger}; }}
QPushButton#newChat {{ text-align: left; padding: 8px 12px; font-weight: 600; }}
QToolButton {{ background: transparent; border: none; border-radius: 8px; padding: 5px; }}
QToolButton:hover {{ background: {t.raised}; }}
QToolButton:checked {{ background: {t.selection}; }}
QToolButton:disabled {{ color: {t.muted}; }}
QToolButton#sendButton {{ background: {t.accent}; border-radius: 16px; }}
QToolButton#sendButton:disabled {{ background: {t.raised}; }}
QToolButton#stopButton {{ background: {t.text}; border-radius: 16px; }}
QToolButton#micButton:checked, QToolButton#micButton[recording="true"] {{ background: {t.danger}; }}
QToolButton#messageAction {{ padding: 3px; border-radius: 6px; }}
#composerFrame {{ background: {t.surface}; border: 1px solid {t.border}; border-radius: 18px; }}
#composerFrame[dragging="true"] {{ border: 2px dashed {t.accent}; }}
QPlainTextEdit#promptEdit {{ background: transparent; border: none; selection-background-color: {t.selection};
                             selection-color: {t.text}; font-size: 11pt; }}
QPlainTextEdit#editBox {{ background: {t.surface}; border: 1px solid {t.accent}; border-radius: 10px; padding: 4px; }}
#userBubble {{ background: {t.user_bubble}; border-radius: 16px; }}
#noticeLabel {{ color: {t.muted}; font-size: 9pt; }}
#errorLabel {{ color: {t.danger}; }}
#inlineError {{ background: {_rgba(t.danger, 26)}; border: 1px solid {t.danger}; border-radius: 8px;
                padding: 6px 10px; color: {t.text}; }}
#banner {{ background: {t.raised}; border-radius: 10px; padding: 8px 12px; color: {t.text}; }}
#memoryNote {{ background: {t.raised}; border-radius: 10px; }}
#memoryNote QLabel {{ color: {t.muted}; font-size: 9pt; }}
#memoryNote QPushButton {{ padding: 2px 10px; font-size: 9pt; }}
#tempBanner {{ background: {t.raised}; border-radius: 10px; padding: 6px 12px; color: {t.muted}; }}
#undoBar {{ background: {t.text}; border-radius: 10px; }}
#undoBar QLabel {{ color: {t.window}; }}
#undoBar QPushButton {{ background: transparent; color: {t.accent if not t.dark else t.accent_text}; border: none;
                        font-weight: 600; }}
#codeBlock {{ background: {t.code_bg}; border: 1px solid {t.border}; border-radius: 10px; }}
#codeHeader {{ background: {t.code_header}; border-top-left-radius: 10px; border-top-right-radius: 10px; }}
#codeHeader QLabel {{ color: {t.muted}; font-size: 9pt; }}
#codeHeader QToolButton {{ color: {t.muted}; font-size: 9pt; padding: 2px 6px; }}
QTextBrowser {{ background: transparent; border: none; selection-background-color: {t.selection};
                selection-color: {t.text}; }}
#messageMeta {{ color: {t.muted}; font-size: 8.5pt; }}
#roleLabel {{ font-weight: 600; }}
#voiceChip {{ background: {t.raised}; border-radius: 12px; }}
#thumb {{ border: 1px solid {t.border}; border-radius: 8px; background: {t.raised}; }}
#attachmentChip {{ background: {t.raised}; border-radius: 10px; }}
#recordingBar {{ background: {t.raised}; border-radius: 12px; }}
#recordingBar QLabel {{ color: {t.text}; }}
#chatHeader {{ border-bottom: 1px solid {t.border}; background: {t.window}; }}
#chatTitle {{ font-size: 11.5pt; font-weight: 600; }}
#emptyTitle {{ font-size: 20pt; font-weight: 600; }}
#emptySubtitle {{ color: {t.muted}; font-size: 11pt; }}
#suggestion {{ text-align: left; padding: 10px 14px; border-radius: 12px; color: {t.text}; }}
QStatusBar {{ background: {t.sidebar}; border-top: 1px solid {t.border}; color: {t.muted}; }}
QStatusBar QLabel {{ color: {t.muted}; }}
QStatusBar::item {{ border: none; }}
#statusChip {{ color: {t.muted}; padding-right: 6px; }}
#statusWarning {{ color: {t.warning}; padding: 0 6px; }}
QProgressBar {{ background: {t.raised}; border: none; border-radius: 3px; max-height: 6px; min-width: 70px; }}
QProgressBar::chunk {{ background: {t.accent}; border-radius: 3px; }}
QScrollBar:vertical {{ background: transparent; width: 10px; margin: 2px; }}
QScrollBar::handle:vertical {{ background: {t.border}; border-radius: 3px; min-height: 30px; }}
QScrollBar::handle:vertical:hover {{ background: {t.muted}; }}
QScrollBar:horizontal {{ background: transparent; height: 10px; margin: 2px; }}
QScrollBar::handle:horizontal {{ background: {t.border}; border-radius: 3px; min-width: 30px; }}
QScrollBar::add-line, QScrollBar::sub-line {{ width: 0; height: 0; }}
QScrollBar::add-page, QScrollBar::sub-page {{ background: none; }}
QMenu {{ background: {t.surface}; border: 1px solid {t.border}; border-radius: 8px; padding: 4px; }}
QMenu::item {{ padding: 6px 18px; border-radius: 6px; }}
QMenu::item:selected {{ background: {t.raised}; color: {t.text}; }}
QTabWidget::pane {{ border: 1px solid {t.border}; border-radius: 8px; top: -1px; }}
QTabBar::tab {{ padding: 6px 14px; border: none; color: {t.muted}; }}
QTabBar::tab:selected {{ color: {t.text}; border-bottom: 2px solid {t.accent}; }}
QComboBox, QSpinBox, QDoubleSpinBox {{ background: {t.surface}; border: 1px solid {t.border}; border-radius: 6px;
                                      padding: 4px 8px; }}
QComboBox QAbstractItemView {{ background: {t.surface}; selection-background-color: {t.selection};
                               selection-color: {t.text}; }}
QCheckBox {{ spacing: 8px; }}
QDialog {{ background: {t.window}; }}
"""


def _rgba(colour: str, alpha: int) -> str:
    c = QColor(colour)
    return f"rgba({c.red()}, {c.green()}, {c.blue()}, {alpha})"


class ThemeManager(QObject):
    """Applies the chosen theme and re-applies it when the system scheme changes ("system")."""

    changed = Signal(object)  # Theme

    def __init__(self, app: QApplication, choice: str = "system") -> None:
        super().__init__(app)
        self._app = app
        self._choice = choice
        app.setStyle("Fusion")
        hints = QGuiApplication.styleHints()
        if hints is not None:
            hints.colorSchemeChanged.connect(self._system_changed)
        self.apply(choice)

    def apply(self, choice: str) -> Theme:
        global _current
        self._choice = choice
        theme = resolve(choice)
        _current = theme
        self._app.setPalette(palette(theme))
        self._app.setStyleSheet(style_sheet(theme))
        self.changed.emit(theme)
        return theme

    def _system_changed(self, _scheme) -> None:
        if self._choice == "system":
            self.apply("system")
