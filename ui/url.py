"""The URL is the view: reading the link, writing the address bar, share links.

* The query string is ``Spec.to_query()`` (CLI flag names, ``?n-pairs=8``)
  plus the page's own extras (``k``, ``receivers``...). Pages call
  :func:`write_url` on every run, after their widgets.
* When the URL differs from what this session last wrote (a link was opened,
  the address bar edited, or the page switched, which clears the query), the
  widgets are reloaded from it (``ui.panel`` for the spec, :func:`url_widget`
  for extras). A URL without spec parameters keeps the session's spec.
* A bad or unknown value shows one clear message and the defaults, never a
  traceback (:func:`read_spec_from_url`).

Session keys: ``pb_x_*`` (page-extra widgets), ``pb_spec``, ``pb_url_written``.
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable, Iterable, Mapping
from urllib.parse import urlencode

import streamlit as st

from patching.core.config import check_allowed
from patching.core.errors import PatchboardError
from patching.core.limits import MAX_ENCODED, MAX_LINK_CHARS
from patching.core.spec import FIELDS, Spec
from ui import runtime
from ui.plain import error_line, md_plain

__all__ = ["query", "url_is_fresh", "read_spec_from_url", "url_widget", "param_widget", "write_url", "share_url", "copy_link",
           "page_url", "page_link", "HOME_PAGE"]

_SPEC_PARAMS = {s.flag for s in FIELDS.values()}
X = "pb_x_"  # page-extra widget keys
HOME_PAGE = "1_Patch.py"


def query() -> dict[str, str]:
    """The current URL query as {name: last value}."""
    return {k: st.query_params.get_all(k)[-1] for k in st.query_params.keys() if st.query_params.get_all(k)}


def url_is_fresh() -> bool:
    """True when the URL is not what this session last wrote: a link was
    opened, the address bar edited, or the page switched (query cleared)."""
    return query() != st.session_state.get("pb_url_written")


def read_spec_from_url(defaults: Spec | None = None, params: Mapping[str, Any] | None = None,
                       own: Iterable[str] = ()) -> tuple[Spec, str | None]:
    """Parse the URL (or ``params``) into a validated, allowed Spec.

    Returns ``(spec, None)``, or ``(defaults, message)`` when the link has a bad
    or unknown value (the message names the parameter and says what to do).
    A query without spec parameters returns the session's current spec (or the
    defaults) and no message. ``own``: URL names the page's request declares
    for itself (the Paths page's ``method`` is the path method, not the
    Spec's, which a path sweep does not use); they are not the spec's."""
    defaults = (defaults or Spec()).validated()
    try:
        own = set(own)
        q = {k: v for k, v in (query() if params is None else params).items() if k not in own}
        if not any(k in _SPEC_PARAMS for k in q):
            return st.session_state.get("pb_spec", defaults), None
        check_link_size(q)
        spec = Spec.from_query(q)
        check_allowed(spec.model, runtime.allowed_env())
        return spec, None
    except PatchboardError as e:
        return defaults, f"This link has a problem — {error_line(e.field, e.message)}. Showing the default settings instead."
    except Exception as e:  # noqa: BLE001 - a link must never produce a traceback
        return defaults, f"This link could not be read ({type(e).__name__}). Showing the default settings instead."


def check_link_size(q: Mapping[str, Any]) -> None:
    """The whole query at most MAX_LINK_CHARS characters (before any parsing)."""
    size = sum(len(str(k)) + len(str(v)) + 2 for k, v in q.items())
    if size > MAX_LINK_CHARS:
        raise PatchboardError("link", f"{size} characters; the limit is {MAX_LINK_CHARS} (MAX_LINK_CHARS); share fewer pairs")


def read_extra(name: str, raw: Any, default: Any, cast: Callable[[str], Any]) -> tuple[Any, str | None]:
    """One page extra from a link: ``(value, None)`` or ``(default, message)``;
    any exception from ``cast`` becomes the message (the one guarded path for
    extras, as :func:`read_spec_from_url` is for the spec)."""
    try:
        if len(str(raw)) > MAX_ENCODED:
            raise PatchboardError(name, f"longer than {MAX_ENCODED} characters (MAX_ENCODED)")
        return cast(raw), None
    except Exception as e:  # noqa: BLE001 - a link must never produce a traceback
        why = e.message if isinstance(e, PatchboardError) else f"not valid ({type(e).__name__})"
        return default, (f"This link's {error_line(name, why)} — using {md_plain(repr(default), 80)} instead.")


def url_widget(name: str, default: Any, cast: Callable[[str], Any] = str, aliases: Iterable[str] = ()) -> str:
    """Key for a page-specific widget that lives in the URL as ``?name=``.

    When the URL was just opened (or edited), the widget's state is set from
    it (``cast`` parses the text; a bad value shows a message and uses
    ``default``); otherwise the widget keeps its state. Create the widget with
    ``key=url_widget(...)`` and no ``value=``/``index=``; then pass its value
    to :func:`write_url` in ``extra``. ``aliases``: older names of the
    parameter; a link carrying one was written before the rename, so it wins."""
    key = X + name
    if url_is_fresh() or key not in st.session_state:
        q = query()
        raw = next((q[n] for n in (*aliases, name) if n in q), None)
        val = default
        if raw is not None:
            val, msg = read_extra(name, raw, default, cast)
            if msg:
                st.warning(msg)
        st.session_state[key] = val
    return key


def param_widget(setting) -> str:
    """:func:`url_widget` for a declared parameter (a request's
    :class:`patching.core.params.Param`): its URL name, old names, default and
    parser all from the declaration."""
    from ui import extras

    return url_widget(setting.flag, setting.default, extras.declared(setting), getattr(setting, "aliases", ()))


def _full_query(spec: Spec, extra: Mapping[str, Any] | None) -> dict[str, str]:
    q = spec.to_query()
    for k, v in (extra or {}).items():
        if v is not None:
            q[k] = f"{v:g}" if isinstance(v, float) else str(v)
    return q


def write_url(spec: Spec, extra: Mapping[str, Any] | None = None) -> None:
    """Put the full spec (+ page extras) into the address bar. Call on every
    run after the widgets; writes only when something changed."""
    q = _full_query(spec, extra)
    st.session_state["pb_spec"] = spec
    if query() != q:
        st.query_params.from_dict(q)
    st.session_state["pb_url_written"] = q


def share_url(spec: Spec, extra: Mapping[str, Any] | None = None) -> str:
    """The full link of this page with ``spec`` (absolute when the browser told
    us its address, else starting at ``?``)."""
    q = _full_query(spec, extra)
    try:
        base = st.context.url or ""
    except Exception:  # noqa: BLE001 - no browser context (AppTest)
        base = ""
    if base and base.count("/") == 2:  # "http://host:port" -> ".../"
        base += "/"
    return f"{base}?{urlencode(q)}"


def copy_link(spec: Spec, extra: Mapping[str, Any] | None = None, label: str = "Share this exact view") -> str:
    """A visible copy-link control: the full URL in a box and a Copy button
    (plus a one-line explanation). Returns the URL."""
    from ui.html import copy_box

    url = share_url(spec, extra)
    st.markdown(f"**{md_plain(label)}** — this link reopens exactly this view (settings and result):")
    copy_box(url, "Copy link", "share link", absolute_link=True)
    return url


def page_url(page: str, query_params: Mapping[str, str] | None = None) -> str:
    """Relative URL of a page file (``pages/2_Library.py`` -> ``./Library``;
    the home page ``pages/1_Patch.py`` -> ``./``) with a query string."""
    name = os.path.basename(page)
    path = "" if name == HOME_PAGE else re.sub(r"^\d+_", "", name.removesuffix(".py"))
    return f"./{path}" + (f"?{urlencode(dict(query_params))}" if query_params else "")


def page_link(page: str, label: str, query_params: Mapping[str, str] | None = None, icon: str | None = None) -> None:
    """``st.page_link`` that also works when a page runs on its own (AppTest
    of a single file): then a plain markdown link to the same URL."""
    from streamlit.errors import StreamlitAPIException

    try:
        st.page_link(page, label=label, query_params=dict(query_params) if query_params else None, icon=icon)
    except StreamlitAPIException:
        st.markdown(f"[{label}]({page_url(page, query_params)})")
