"""Message text to safe rich text: Markdown with raw HTML escaped, code blocks split out and highlighted.

Message text is untrusted (a model can be prompted to emit anything). markdown-it runs in CommonMark
mode with ``html`` off, so ``<script>``, ``<img>`` and every other tag come out as visible text;
images are turned off (Qt would load ``<img src>`` from disk); link targets pass markdown-it's
check (no ``javascript:``, ``file:``, ``data:``) and the app opens only http(s) and mailto links.
Top-level fenced code becomes its own :class:`Block` so the view can give it a header and a Copy
button; Pygments highlights it with inline colours. No Qt here.
"""

from __future__ import annotations

import html
import re
import threading
from dataclasses import dataclass
from functools import lru_cache

SAFE_LINK_SCHEMES = ("http", "https", "mailto")
MAX_HIGHLIGHT_CHARS = 100_000  # longer code is shown plain: highlighting it would stall the window


@dataclass(frozen=True)
class Block:
    kind: str  # "html" | "code"
    html: str  # rich text (for "code": the highlighted lines, without <pre>)
    code: str = ""  # the raw code, for Copy
    language: str = ""


@lru_cache(maxsize=1)
def _parser():
    from markdown_it import MarkdownIt  # imported on first use: it is not needed to show the window

    md = MarkdownIt("commonmark", {"html": False, "breaks": True, "linkify": False, "typographer": False})
    md.enable(["table", "strikethrough"])
    md.disable("image")
    return md


def render(text: str, *, pygments_style: str = "default") -> list[Block]:
    """``text`` as a list of blocks: rich-text runs and top-level code blocks, in order."""
    md = _parser()
    tokens = md.parse(text)
    blocks: list[Block] = []
    run: list = []

    def flush() -> None:
        if run:
            blocks.append(Block("html", _qt_friendly(md.renderer.render(run, md.options, {}))))
            run.clear()

    for token in tokens:
        if token.type in ("fence", "code_block") and token.level == 0:
            flush()
            language = (token.info or "").strip().split(" ")[0][:40]
            code = token.content[:-1] if token.content.endswith("\n") else token.content
            blocks.append(Block("code", highlight(code, language, style=pygments_style), code, language))
        else:
            run.append(token)
    flush()
    return blocks


_WARM_UP_STARTED, _WARM_UP_DONE = threading.Event(), threading.Event()


def warm_up() -> None:
    """Import and build the parser and highlighter now (the app calls this in a worker after the
    window shows, so the first reply does not pay for the imports on the GUI thread)."""
    _WARM_UP_STARTED.set()
    try:
        _parser()
        highlight("x = 1", "python")
    finally:
        _WARM_UP_DONE.set()


def warming_up() -> bool:
    """True while :func:`warm_up` runs. The GUI thread must not render then: it would wait on the
    import lock for as long as the worker's import takes (41 ms on an idle machine, longer while a
    model loads or answers), so it shows :func:`plain` text and renders once the warm-up is over."""
    return _WARM_UP_STARTED.is_set() and not _WARM_UP_DONE.is_set()


def plain(text: str) -> list[Block]:
    """``text`` escaped, line breaks kept: what a message shows until Markdown can be rendered."""
    return [Block("html", "<p>" + html.escape(text).replace("\n", "<br>") + "</p>")]


def highlight(code: str, language: str, *, style: str = "default") -> str:
    """``code`` as HTML spans with inline colours (escaped; newlines kept for a <pre>)."""
    if len(code) > MAX_HIGHLIGHT_CHARS:
        return html.escape(code)
    from pygments import highlight as pyg_highlight
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import TextLexer, get_lexer_by_name
    from pygments.util import ClassNotFound

    try:
        lexer = get_lexer_by_name(language) if language else TextLexer()
    except ClassNotFound:
        lexer = TextLexer()
    formatter = HtmlFormatter(noclasses=True, nowrap=True, style=style)
    return pyg_highlight(code, lexer, formatter).rstrip("\n")


_TABLE = re.compile(r"<table>")


def _qt_friendly(rendered: str) -> str:
    """Adjust markdown-it's HTML for Qt's rich-text engine (tables need explicit spacing)."""
    rendered = _TABLE.sub('<table cellspacing="0" cellpadding="6">', rendered)
    return rendered.strip()


def is_safe_link(url: str) -> bool:
    scheme, sep, _ = url.partition(":")
    return bool(sep) and scheme.lower() in SAFE_LINK_SCHEMES


def speakable(text: str) -> str:
    """What to read aloud for a reply: its prose, with code blocks named instead of spelled out."""
    md = _parser()
    parts: list[str] = []
    for token in md.parse(text):
        if token.type in ("fence", "code_block"):
            parts.append("(code block)")
        elif token.type == "inline":
            words = []
            for child in token.children or ():
                if child.type in ("text", "code_inline"):
                    words.append(child.content)
                elif child.type in ("softbreak", "hardbreak"):
                    words.append(" ")
            line = "".join(words).strip()
            if line:
                parts.append(line if line[-1] in ".!?:;" else line + ".")
    return " ".join(parts)


def style_sheet(*, muted: str, accent: str, inline_code_bg: str, border: str, code_bg: str) -> str:
    """The default CSS for rendered messages (Qt supports a subset; these properties are in it)."""
    return f"""
p {{ margin-top: 0px; margin-bottom: 8px; }}
a {{ color: {accent}; text-decoration: none; }}
code {{ background-color: {inline_code_bg}; font-family: "DejaVu Sans Mono", monospace; }}
pre {{ background-color: {code_bg}; font-family: "DejaVu Sans Mono", monospace; margin-top: 4px; margin-bottom: 8px; }}
h1 {{ font-size: 15pt; margin-top: 8px; margin-bottom: 6px; }}
h2 {{ font-size: 13.5pt; margin-top: 8px; margin-bottom: 6px; }}
h3, h4, h5, h6 {{ font-size: 12pt; margin-top: 6px; margin-bottom: 4px; }}
blockquote {{ color: {muted}; margin-left: 12px; }}
ul, ol {{ margin-top: 0px; margin-bottom: 8px; }}
li {{ margin-bottom: 2px; }}
table {{ border-collapse: collapse; margin-bottom: 8px; }}
th {{ border: 1px solid {border}; font-weight: 600; }}
td {{ border: 1px solid {border}; }}
hr {{ color: {border}; }}
"""
