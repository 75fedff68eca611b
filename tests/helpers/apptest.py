"""The app tier's plain helpers around Streamlit's AppTest: open a page on a
link and read what it drew."""

from __future__ import annotations

from streamlit.testing.v1 import AppTest

from tests.helpers import ROOT


def open_page(page, query: dict | None = None, timeout: float = 240) -> AppTest:
    """``page`` (app.py, pages/..., relative to the repository root, or an
    absolute path) opened on a link with ``query`` and run once."""
    at = AppTest.from_file(str(ROOT / page), default_timeout=timeout)
    for k, v in (query or {}).items():
        at.query_params[k] = v
    return at.run()


def qp(at: AppTest) -> dict:
    """The page's query parameters now (its link), one value a name."""
    return {k: (v[-1] if isinstance(v, list) else v) for k, v in at.query_params.items()}


def texts(at: AppTest) -> str:
    """Every markdown, caption, error, info and warning text, one a line."""
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption] + [e.value for e in at.error]
    parts += [e.value for e in at.info] + [e.value for e in at.warning]
    return "\n".join(str(p) for p in parts)


def charts(at: AppTest) -> list:
    """The Vega-Lite charts in the page's main area."""
    return [e for e in at.main if getattr(e, "type", "") == "vega_lite_chart"]
