"""User strings inside markdown (Streamlit's, a notebook's), shown as plain text.

Streamlit renders the body of ``st.error``/``st.warning``/``st.caption``/
``st.markdown`` and widget/expander labels as markdown. A value from a link, a
pair, a hypothesis or a bundle must never become a link, an image (an
external fetch: a tracking beacon), a heading or HTML there, so every such
value goes through :func:`md_plain` (or is shown with ``st.text``/``st.code``).

:func:`md_plain` backslash-escapes every character with an inline meaning, which defeats links, images, emphasis, code spans,
HTML tags, tables and headings; GFM's bare-URL and e-mail autolinks are
broken with an invisible word joiner (they ignore escapes).
Line breaks become spaces (no block structure from a value), and the value
is cut to ``limit`` characters. :func:`code_block` fences any text as a code
block that nothing inside it can close (the notebook's command line). No
streamlit import: the library (the notebook export) and the pages
(``ui/plain.py`` re-exports these) use it alike.
"""

from __future__ import annotations

import re

#: Characters with an inline meaning in Streamlit markdown: emphasis, code,
#: links/images, HTML, headings, tables, strikethrough, LaTeX ($), emoji and
#: colour directives (:), autolinks (: / . @ www.), entities (&).
_SPECIAL = "\\`*_{}[]()<>#!|~:./@&$^"
_ESCAPE = {ord(c): "\\" + c for c in _SPECIAL}
_ESCAPE.update({ord("\n"): " ", ord("\r"): " ", ord("\u2028"): " ", ord("\u2029"): " ", ord("\x00"): ""})


#: GFM turns bare URLs and e-mail addresses into links *after* escapes are
#: resolved (a text-node transform), so escaping cannot stop it: a WORD JOINER
#: (U+2060, invisible, zero width) is put inside each trigger instead.
_AUTOLINK = re.compile(r"(?i)(:)(/)|(www)(\.)|(@)(\w)")
WJ = "\u2060"


def md_plain(value: object, limit: int = 300) -> str:
    """``value`` as markdown that renders as its own plain text."""
    text = str(value)
    if len(text) > limit:
        text = text[:limit] + "…"
    text = text.encode("utf-8", "replace").decode("utf-8")  # a lone surrogate cannot be sent to a browser
    text = _AUTOLINK.sub(lambda m: WJ.join(g for g in m.groups() if g is not None), text)
    return text.translate(_ESCAPE)


def error_line(field: str, message: str, limit: int = 600) -> str:
    """A PatchboardError's one line for a banner: the field in bold, both
    parts plain."""
    return f"**{md_plain(field, 80)}**: {md_plain(message, limit)}"


def code_block(text: str, info: str = "") -> str:
    """``text`` as a fenced markdown code block: the fence is one backtick
    longer than the longest run of backticks in ``text`` (at least three),
    so no line of the text can close it (a backtick in a model name cannot
    break out into live markdown)."""
    runs = re.findall(r"`+", text)
    fence = "`" * max(3, 1 + max((len(r) for r in runs), default=0))
    return f"{fence}{info}\n{text}\n{fence}"
