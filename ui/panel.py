"""The spec widgets of a page, built from the field table.

For each field a page asks for, in ``FIELDS`` order, the widget is built from
its :class:`~patching.core.fields.Setting`: ``widget`` (select, radio,
number, text), ``label``, ``choices`` and ``options`` (menu labels),
``lo``/``hi``/``step``; its caption is ``explain`` plus the chosen option's
``option_help``; a field's ``group`` opens a sidebar section; a widget shows
only where the field applies (``applies_to``). Truly special: the model menu
(with "Another model…"), the built-in/custom prompts switch, and the pairs
text area with its upload.

Two steps, so a page can draw its result before its sidebar::

    panel = panel.spec_panel(fields)   # link -> widget state -> spec; draws nothing
    ...draw the result with panel.spec (None when a typed value is invalid)...
    url.write_url(panel.spec, extra)
    panel.render()                     # the sidebar widgets, once per run

Widget keys: ``pb_w_<field>`` (plus ``pb_w_source``, ``pb_w_model_other``,
``pb_w_pairs_text``, ``pb_w_pairs_upload``).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Iterable

import streamlit as st

from patching.core.config import EMBEDDED, check_allowed, describe, known
from patching.core.errors import PatchboardError
from patching.core.limits import MAX_FILE_BYTES
from patching.core.pairs import parse_pairs_text, parse_positions
from patching.core.spec import FIELDS, Spec
from ui.plain import md_plain
from ui import runtime, texts, url

__all__ = ["ALL_FIELDS", "SpecPanel", "spec_panel", "spec_sidebar", "current_spec"]

#: Every spec field a panel can show, in display order.
ALL_FIELDS: tuple[str, ...] = tuple(FIELDS)
W = "pb_w_"  # spec widget keys
_SPECIAL = ("model", "task", "n_pairs", "pairs", "key_positions")


def _section_of() -> dict[str, str]:
    """Each field's sidebar section: the group opened by it or the nearest
    field before it."""
    out, cur = {}, ""
    for name, s in FIELDS.items():
        cur = s.group or cur
        out[name] = cur
    return out


SECTION = _section_of()


def _widget_value(name: str, value: Any) -> Any:
    """A spec value as its widget holds it."""
    kind = FIELDS[name].kind
    if kind == "int":
        return int(value)
    if kind == "float":
        return float(value)
    if kind == "positions":
        return ",".join(map(str, value)) if value else ""
    return value


def _menu() -> list[str]:
    opts, any_hub = runtime.allowed_models(st.session_state.get(LINK_MODEL))
    return opts + ([texts.OTHER_MODEL] if any_hub else [])


#: A known model a link named that is not installed here: kept in the menu
#: so its stored results open under their own name.
LINK_MODEL = "pb_link_model"


# ---------------------------------------------------------------- link -> state


def _set_widgets_from_spec(spec: Spec) -> None:
    s = st.session_state
    s[LINK_MODEL] = spec.model if known(spec.model) is not None else s.get(LINK_MODEL)
    opts, any_hub = runtime.allowed_models(s.get(LINK_MODEL))
    if spec.model in opts:
        s[W + "model"], s[W + "model_other"] = spec.model, ""
    else:
        s[W + "model"] = texts.OTHER_MODEL if any_hub else EMBEDDED
        s[W + "model_other"] = spec.model if any_hub else ""
    s[W + "source"] = "pairs" if spec.pairs is not None else "task"
    s[W + "task"] = spec.task or s.get(W + "task", FIELDS["task"].default)
    s[W + "n_pairs"] = int(spec.n_pairs) if spec.pairs is None else int(s.get(W + "n_pairs", FIELDS["n_pairs"].default))
    if spec.pairs is not None:
        from patching.analysis.formatting import pairs_to_text

        s[W + "pairs_text"] = pairs_to_text(spec.pairs)
    else:
        s.setdefault(W + "pairs_text", texts.EXAMPLE_PAIRS_TEXT)
    for name in FIELDS:
        if name not in _SPECIAL:
            s[W + name] = _widget_value(name, getattr(spec, name))
    s[W + "key_positions"] = _widget_value("key_positions", spec.key_positions)


def _on_upload() -> None:
    f = st.session_state.get(W + "pairs_upload")
    if f is None:
        return
    data = f.getvalue()
    problem = None
    if len(data) > MAX_FILE_BYTES:
        problem = f"is {len(data)} bytes; the limit is {MAX_FILE_BYTES} (MAX_FILE_BYTES); split it"
    elif b"\x00" in data:
        problem = "is a binary file; give UTF-8 CSV or JSONL text"
    else:
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            problem = "is not UTF-8 text; save it as UTF-8 CSV or JSONL"
    if problem:
        st.session_state["pb_upload_error"] = f"pairs: the uploaded file {problem}"
        return
    st.session_state.pop("pb_upload_error", None)
    st.session_state[W + "pairs_text"] = text
    st.session_state[W + "source"] = "pairs"


def _source(fields: tuple[str, ...], base: Spec) -> str:
    if "task" in fields or "pairs" in fields:
        return st.session_state.get(W + "source", "task")
    return "pairs" if base.pairs is not None else "task"


def _normalise_state(fields: tuple[str, ...], base: Spec) -> None:
    s = st.session_state
    if s.get(W + "model") not in _menu():
        s[W + "model"] = EMBEDDED
    choices = [c for c in ("task", "pairs") if c in fields] or ["task"]
    if ("task" in fields or "pairs" in fields) and s.get(W + "source") not in choices:
        s[W + "source"] = choices[0]
    # Streamlit forgets the state of a widget that was not drawn in a run (e.g.
    # the noise scale while str is chosen); bring such widgets back with the
    # link's value, not the widget's minimum.
    s.setdefault(W + "task", base.task or FIELDS["task"].default)
    s.setdefault(W + "pairs_text", texts.EXAMPLE_PAIRS_TEXT)
    s.setdefault(W + "model_other", "")
    for name in FIELDS:
        if name not in ("model", "task", "pairs"):
            s.setdefault(W + name, _widget_value(name, getattr(base, name)))


def _draft(fields: tuple[str, ...], base: Spec) -> SimpleNamespace:
    """The widgets' current values as a spec-like object, for ``applies_to``."""
    s = st.session_state
    vals = {name: (s[W + name] if name in fields and W + name in s else getattr(base, name)) for name in FIELDS}
    if _source(fields, base) == "pairs":
        vals["task"], vals["pairs"] = None, vals["pairs"] or ()
    else:
        vals["task"], vals["pairs"] = vals["task"] or FIELDS["task"].default, None
    return SimpleNamespace(**vals)


# ---------------------------------------------------------------- state -> spec


def _spec_from_state(fields: tuple[str, ...], base: Spec) -> tuple[Spec | None, str | None]:
    """The spec the widgets' state describes (no drawing), or (None, error)."""
    from patching.analysis.formatting import guess_pairs_format

    s = st.session_state
    error: str | None = None
    model = base.model
    if "model" in fields:
        if s[W + "model"] == texts.OTHER_MODEL:
            model = str(s.get(W + "model_other", "")).strip()
            if not model:
                error, model = "model: type a hub model id, or pick one from the menu", EMBEDDED
        else:
            model = s[W + "model"]
        if not error:
            try:
                check_allowed(model, runtime.allowed_env())
            except PatchboardError as e:
                error = str(e)
    source = _source(fields, base)
    draft = _draft(fields, base)
    changes: dict[str, Any] = {"model": model, "task": None, "pairs": None, "key_positions": None}
    for name, f in FIELDS.items():
        if f.kind in ("choice", "int", "float") and name != "task":
            v = getattr(draft, name)
            changes[name] = (int(v) if f.kind == "int" else float(v) if f.kind == "float" else v) if f.applies_to(draft) else f.default
    if source == "task":
        changes["task"] = draft.task
    elif "pairs" in fields:
        text = str(s.get(W + "pairs_text", ""))
        try:
            changes["pairs"] = tuple(parse_pairs_text(text, guess_pairs_format(text), "pairs"))
        except PatchboardError as e:
            error = error or str(e)
        except Exception as e:  # noqa: BLE001 - pasted text never crashes the page
            error = error or f"pairs: not readable ({type(e).__name__}); check the CSV/JSONL"
    else:
        changes["pairs"] = base.pairs
    if FIELDS["key_positions"].applies_to(draft):
        if "key_positions" in fields:
            kp_text = str(s.get(W + "key_positions", "")).strip()
            if kp_text:
                try:
                    changes["key_positions"] = parse_positions(kp_text)
                except PatchboardError as e:
                    error = error or str(e)
                except Exception as e:  # noqa: BLE001
                    error = error or f"key-positions: not readable ({type(e).__name__}); write whole numbers such as 3,4"
        else:
            changes["key_positions"] = base.key_positions
    if source == "pairs" and changes["pairs"] is None and not error:
        error = "pairs: give at least one pair"
    if error:
        return None, error
    try:
        return Spec(**changes).validated(), None
    except PatchboardError as e:
        return None, str(e)
    except Exception as e:  # noqa: BLE001
        return None, f"settings: not valid ({type(e).__name__})"


# ---------------------------------------------------------------- drawing


def _caption(name: str) -> None:
    st.caption(texts.caption(name, st.session_state.get(W + name)))


def _field_widget(name: str) -> None:
    """One field's widget, from its Setting."""
    f = FIELDS[name]
    key = W + name
    fmt = (lambda c, o=f.options: o.get(c, c)) if f.options else str
    if f.widget == "select":
        st.selectbox(f.label, list(f.choices), key=key, format_func=fmt)
    elif f.widget == "radio":
        st.radio(f.label, list(f.choices), key=key, format_func=fmt)
    elif f.widget == "number":
        if f.kind == "int":
            st.number_input(f.label, min_value=int(f.lo), max_value=int(f.hi), step=int(f.step), key=key)
        else:
            lo = float(f.lo) + (0.1 if f.lo_open else 0.0)  # an open bound: the smallest sensible value
            st.number_input(f.label, min_value=lo, max_value=float(f.hi), step=float(f.step), key=key)
    elif f.widget == "text":
        st.text_input(f.label, key=key, placeholder=texts.PLACEHOLDERS.get(name))
    else:
        raise ValueError(f"no widget for {name} ({f.widget!r})")
    _caption(name)


def _model_widget() -> None:
    s = st.session_state
    menu = _menu()
    st.selectbox(FIELDS["model"].label, menu, key=W + "model", disabled=len(menu) == 1, help=texts.model_help())
    _caption("model")
    about = describe(s[W + "model"])
    if about:
        st.caption(md_plain(about, 400))
    if s[W + "model"] == texts.OTHER_MODEL:
        st.text_input(texts.OTHER_MODEL_LABEL, key=W + "model_other", placeholder=texts.OTHER_MODEL_PLACEHOLDER)


def _pairs_widget(error: str | None = None) -> None:
    """The pairs text area (it stays editable) with its parse error, if any,
    right beside it."""
    s = st.session_state
    st.text_area(FIELDS["pairs"].label, key=W + "pairs_text", height=150, help=texts.PAIRS_HELP)
    if error:
        st.error(md_plain(error, 600), icon=":material/edit:")
    _caption("pairs")
    st.file_uploader(texts.UPLOAD_LABEL, type=texts.UPLOAD_TYPES, key=W + "pairs_upload", on_change=_on_upload)
    if s.get("pb_upload_error"):
        st.error(md_plain(s["pb_upload_error"], 600))


def _source_widget(fields: tuple[str, ...]) -> None:
    choices = [c for c in ("task", "pairs") if c in fields]
    if len(choices) > 1:
        st.radio("Prompts", choices, key=W + "source", horizontal=True, label_visibility="collapsed",
                 format_func=texts.SOURCE_LABELS.get)
        st.caption(texts.SOURCE_EXPLAIN)


def _visible(name: str, fields: tuple[str, ...], base: Spec, draft) -> bool:
    if name == "model":
        return True
    if name == "pairs":
        return _source(fields, base) == "pairs"
    return FIELDS[name].applies_to(draft)


def _render_widgets(fields: tuple[str, ...], base: Spec, error: str | None) -> None:
    has_source = "task" in fields or "pairs" in fields
    with st.sidebar:
        st.markdown("### Settings")
        section, switch_drawn = "", False
        for name in ALL_FIELDS:
            if name not in fields:
                continue
            sec = SECTION[name]
            if sec == "Prompts" and has_source and not switch_drawn:
                st.markdown(f"**{sec}**")
                _source_widget(fields)
                section, switch_drawn = sec, True
            if not _visible(name, fields, base, _draft(fields, base)):
                continue
            if sec and sec != section:
                st.markdown(f"**{sec}**")
                section = sec
            if name == "model":
                _model_widget()
            elif name == "pairs":
                pairs_error = error if error and error.startswith("pairs:") else None
                _pairs_widget(pairs_error)
                if pairs_error:
                    error = None  # shown beside the text
            else:
                _field_widget(name)
        if error:
            st.error(f"Fix this setting — {md_plain(error, 600)}", icon=":material/edit:")


# ---------------------------------------------------------------- the panel


class SpecPanel:
    """The spec widgets of a page, in two steps (see the module docstring).

    ``spec`` is the validated Spec, or None when a typed value is invalid
    (``error`` says what to fix; :meth:`render` shows it next to the widgets).
    """

    def __init__(self, fields: tuple[str, ...], base: Spec, spec: Spec | None, error: str | None):
        self.fields, self.base, self.spec, self.error = fields, base, spec, error
        self._rendered = False

    def render(self) -> None:
        if self._rendered:
            return
        self._rendered = True
        _render_widgets(self.fields, self.base, self.error)


def spec_panel(fields: Iterable[str] = ALL_FIELDS, defaults: Spec | None = None, own: Iterable[str] = ()) -> SpecPanel:
    """Step 1 of :class:`SpecPanel`: the link -> widget state (a bad link shows
    a message in the main area and the defaults), then the spec from the state.
    ``own``: the URL names the page's request takes for itself (see
    :func:`ui.url.read_spec_from_url`)."""
    fields = tuple(fields)
    s = st.session_state
    if url.url_is_fresh() or W + "metric" not in s:
        base, msg = url.read_spec_from_url(defaults, own=own)
        if msg:
            st.error(msg, icon=":material/warning:")
        s["pb_base_spec"] = base
        _set_widgets_from_spec(base)
    base = s.get("pb_base_spec", (defaults or Spec()).validated())
    _normalise_state(fields, base)
    spec, error = _spec_from_state(fields, base)
    return SpecPanel(fields, base, spec, error)


def spec_sidebar(fields: Iterable[str] = ALL_FIELDS, defaults: Spec | None = None) -> Spec | None:
    """The spec widgets in the sidebar, each with a one-line explanation;
    ``p = spec_panel(...); p.render(); p.spec``. ``fields``: names from
    :data:`ALL_FIELDS` ("task" and "pairs" also give the built-in/custom
    switch); the others keep the value of the link or the session's spec."""
    panel = spec_panel(fields, defaults)
    panel.render()
    return panel.spec


def current_spec(defaults: Spec | None = None) -> tuple[Spec, str | None]:
    """For pages without spec widgets (e.g. "How to read this"): the spec of
    the link, else the session's current spec, else the defaults."""
    if url.url_is_fresh():
        return url.read_spec_from_url(defaults)
    return st.session_state.get("pb_spec", (defaults or Spec()).validated()), None
