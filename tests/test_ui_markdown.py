"""Message rendering treats text as untrusted: whatever the text, only Markdown's own tags come out."""

import re

from hypothesis import example, given, settings, strategies as st

from mmchat_ui import markdown

ALLOWED_TAGS = {"p", "strong", "em", "code", "pre", "a", "ul", "ol", "li", "h1", "h2", "h3", "h4", "h5", "h6",
                "blockquote", "hr", "br", "table", "thead", "tbody", "tr", "th", "td", "s", "span"}
ALLOWED_ATTRIBUTES = {"href", "title", "start", "class", "style", "cellspacing", "cellpadding"}
TAG = re.compile(r"<(/?)([a-zA-Z][a-zA-Z0-9]*)([^>]*)>")
ATTRIBUTE = re.compile(r'([a-zA-Z-]+)="([^"]*)"')

hostile_pieces = st.sampled_from([
    "<script>alert(1)</script>", "<img src=x onerror=alert(1)>", "<iframe src='file:///etc/passwd'>",
    "[x](javascript:alert(1))", "[y](JaVaScRiPt:alert(1))", "[z](file:///etc/passwd)", "[d](data:text/html,hi)",
    "![i](http://example.com/a.png)", "<a href='javascript:x'>a</a>", "```html\n<script>x</script>\n```",
    "`<b>`", "**", "_", "\n\n", "| a | b |\n|---|--:|\n| <i> | 2 |", "> quote", "- item", "1. one",
    "<style>body{}</style>", "&lt;", "&#60;script&#62;", "<!-- c -->", "<svg onload=x>", "\x00", "[ok](https://a.b)",
])
texts = st.lists(st.one_of(hostile_pieces, st.text(max_size=30)), max_size=12).map("".join)


def _check(rendered: str) -> None:
    for closing, tag, attributes in TAG.findall(rendered):
        assert tag.lower() in ALLOWED_TAGS, (tag, rendered)
        for name, value in ATTRIBUTE.findall(attributes):
            assert name.lower() in ALLOWED_ATTRIBUTES, (name, rendered)
            if name.lower() == "href":
                scheme = value.split(":", 1)[0].lower() if ":" in value else ""
                assert scheme in ("", "http", "https", "mailto"), (value, rendered)


@settings(max_examples=300, deadline=None)
@given(texts)
def test_only_markdown_tags_and_safe_links_come_out(text):
    for block in markdown.render(text):
        _check(block.html)


@settings(max_examples=100, deadline=None)
@given(texts)
@example("\r")  # found by hypothesis: the "\r" and the fence's "\n" are one line ending
def test_code_blocks_keep_their_exact_text(text):
    code = text.replace("```", "")
    blocks = markdown.render(f"Before\n\n```python\n{code}\n```\n")
    codes = [b for b in blocks if b.kind == "code"]
    # CommonMark normalises line endings (a trailing "\r" joins the fence's "\n" into one) and
    # replaces NUL with U+FFFD; nothing else changes.
    expected = f"{code}\n".replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "\ufffd")[:-1]
    assert len(codes) == 1 and codes[0].code == expected and codes[0].language == "python"


def test_links_open_only_for_web_and_mail():
    assert markdown.is_safe_link("https://example.com") and markdown.is_safe_link("mailto:a@b.c")
    for url in ("javascript:alert(1)", "file:///etc/passwd", "data:text/html,x", "relative/path", ""):
        assert not markdown.is_safe_link(url)
