"""Shared Streamlit machinery for Patchboard pages.

Every page (Patch, Library, How to read, Disagreement, Paths) gets its share
link, its spec widgets, the cached model and store, the progress bar and the
error banner from here, so a link works the same way on every page.

How a page uses it
------------------
::

    import streamlit as st
    from ui import common as ui

    ui.page_setup("Disagreement")              # first Streamlit call of the page
    spec = ui.spec_sidebar(fields=("model", "task", "n_pairs", "seed", "component"))
    if spec is None:                            # the sidebar shows what is wrong
        st.stop()
    k = st.slider("Threshold (SDs)", 1.0, 4.0, step=0.5,
                  key=ui.url_widget("k", 2.0, float))   # a page-specific URL param
    ui.write_url(spec, {"k": k})               # the address bar now holds this view
    ui.copy_link(spec, {"k": k})               # visible box with the full link + Copy
    res = ui.lookup_result(spec)               # stored result or None; no model load
    if res is None and st.button("Run", type="primary"):
        res = ui.run_spec(spec)                # loads the model once, progress bar, stores

Draw the result before the sidebar (what the Patch page does, so a shared
link's chart reaches the browser first)::

    panel = ui.spec_panel(fields)              # spec from the link / widget state, draws nothing
    spec = panel.spec                          # None when a typed value is invalid
    ...draw the result...                      # no st.stop() before the next line
    ui.write_url(spec, extra)
    panel.render()                             # the sidebar widgets, once per run

Other helpers: ``cached_model(name)``, ``store()``, ``fingerprint_for(name)``,
``progress_callback(text)``, ``show_error(err)``, ``current_spec()`` (pages
without spec widgets), ``token_preview(spec)`` + ``show_tokens(...)`` (aligned
clean/corrupt tokens with differing and key positions highlighted),
``show_table(df)`` (light static table), ``copy_box(text)``,
``page_link(page, label, query)`` / ``page_url(page, query)`` (links that
also work when a page runs alone, e.g. in AppTest). One-line plain-language
explanations of every choice: ``EXPLAIN``, ``CHOICE_HELP``, ``*_LABELS``.
Charts: ``ui/charts.py``.

Rules behind it
---------------
* The URL query string *is* the view: ``Spec.to_query()`` (CLI flag names
  without dashes: ``?model=smollm2-135m&task=ioi&n-pairs=8...``) plus the
  page's own extras (``k``, ``receivers``...). Pages call :func:`write_url`
  on every run, after their widgets, so every widget change updates it.
* When the URL differs from what this session last wrote (a link was opened,
  the address bar edited, or the page switched, which clears the query), the
  widgets are reloaded from it: :func:`spec_sidebar` for the spec, and
  :func:`url_widget` for extras. A URL without spec parameters keeps the
  session's current spec (so switching pages keeps the example).
* A link with a bad or unknown value shows one clear message and the defaults,
  never a traceback (:func:`read_spec_from_url`).
* Models named in a URL or a widget are checked against
  ``PATCHBOARD_ALLOWED_MODELS`` (``patching.models.check_allowed``).
* Computing only happens when a page calls :func:`run_spec` (on a button);
  :func:`lookup_result` reads the store using the weight fingerprint from
  ``known_fingerprint`` (or from a model this process already loaded), so a
  stored result shows without loading the model.
* Widget keys start with ``pb_w_`` (spec) and ``pb_x_`` (extras); other
  session keys used here start with ``pb_``.

Nothing in ``patching/`` imports streamlit; pure helpers for pages live in
``patching/view.py``.
"""

from __future__ import annotations

import html
import json
import os
import time
from dataclasses import fields as dc_fields
from typing import Any, Callable, Iterable, Mapping, Sequence
from urllib.parse import urlencode

import streamlit as st

from patching.core import spec as spec_mod
from patching.core.pairs import parse_pairs_text, parse_positions
from patching.core.errors import PatchboardError
from patching.core.config import EMBEDDED, check_allowed, known_fingerprint
from patching.core.spec import Spec

__all__ = [
    "ALL_FIELDS",
    "page_setup",
    "allowed_models",
    "read_spec_from_url",
    "url_widget",
    "spec_sidebar",
    "spec_panel",
    "SpecPanel",
    "write_url",
    "share_url",
    "copy_link",
    "copy_box",
    "page_link",
    "page_url",
    "cached_model",
    "store",
    "fingerprint_for",
    "lookup_result",
    "run_spec",
    "progress_callback",
    "show_error",
    "current_spec",
    "EXPLAIN",
]

#: Every spec field :func:`spec_sidebar` can show, in display order.
ALL_FIELDS: tuple[str, ...] = (
    "model", "task", "ioi_corrupt", "n_pairs", "seed", "pairs", "corruption", "noise_scale", "noise_samples",
    "key_positions", "metric", "direction", "component", "window",
)

_SPEC_PARAMS = {f.name.replace("_", "-") for f in dc_fields(Spec)}
_W = "pb_w_"  # spec widget keys
_X = "pb_x_"  # page-extra widget keys
_OTHER_MODEL = "Another model…"
HOME_PAGE = "1_Patch.py"
FAVICON = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "favicon.png")

# ---------------------------------------------------------------- explanations

#: One plain-language line per choice (shown under each widget, reused by the
#: "How to read this" page).
EXPLAIN: dict[str, str] = {
    "model": "The language model to look inside. smollm2-135m is a small model that ships with Patchboard.",
    "source": "Use a ready-made set of prompts, or type (or upload) your own pairs.",
    "task": "The behaviour to study: each task is a set of prompts the model completes in a predictable way.",
    "ioi_corrupt": "Which names the broken prompt changes.",
    "n_pairs": "How many prompt pairs to average over: more pairs give steadier numbers but take longer.",
    "seed": "Picks which random prompts (and which noise) are drawn; the same number always gives the same result.",
    "pairs": "One pair per line: a clean prompt, a broken prompt with the same number of tokens, the right answer and the wrong answer (one token each, usually starting with a space).",
    "corruption": "How the prompt is broken: swap the key words for other words, or blur them with random noise.",
    "noise_scale": "How strong the noise is, in multiples of a typical word-vector size (the papers use 3).",
    "noise_samples": "How many noisy copies of each prompt to average over.",
    "key_positions": "Which token positions to blur (0 is the start token). Empty: the positions where the two prompts differ.",
    "metric": "How the effect of a patch is scored.",
    "direction": "Fix the broken run with one clean piece, or break the clean run with one broken piece.",
    "component": "Which parts of the model are swapped, one at a time.",
    "window": "Swap this many neighbouring layers together (1 = one layer at a time).",
}

#: Short menu labels (the menus are narrow) ...
TASK_LABELS = {"ioi": "ioi · who gets the object", "facts": "facts · recall a fact", "greater_than": "greater_than · a later year",
               "induction": "induction · repeat a pattern"}
IOI_CORRUPT_LABELS = {"s2": "s2 · change the giver's 2nd mention", "s1_io": "s1_io · change both first names", "abc": "abc · three new names"}
CORRUPTION_LABELS = {"str": "str · swap words", "gn": "gn · add noise"}
METRIC_LABELS = {"logit_diff": "logit_diff · preference", "prob": "prob · probability", "logprob": "logprob · log-probability",
                 "kl": "kl · whole prediction"}
DIRECTION_LABELS = {"denoise": "denoise · is it enough?", "noise": "noise · is it needed?"}
COMPONENT_LABELS = {"head": "head · attention heads", "head_by_pos": "head_by_pos · heads × positions",
                    "resid_pre": "resid_pre · residual stream", "attn_out": "attn_out · attention output",
                    "mlp_out": "mlp_out · MLP output"}

#: ... and one plain line about the option currently chosen, under the widget.
CHOICE_HELP = {
    "task": {
        "ioi": "Who receives the object? \"When Mary and John went to the store, John gave a drink to\" → \" Mary\".",
        "facts": "Recall a fact: \"The capital city of France is\" → \" Paris\".",
        "greater_than": "Guess a later year: \"The war lasted from the year 1745 to the year 17\" → a number above 45.",
        "induction": "Continue a pattern seen earlier in the text: after \"… apple tree … apple\" comes \" tree\".",
    },
    "ioi_corrupt": {
        "s2": "The giver's second mention becomes the other name, so the sentence points to the wrong person.",
        "s1_io": "Both names of the first clause are replaced by other names.",
        "abc": "All three names are replaced by three new names (no name repeats).",
    },
    "corruption": {
        "str": "Swap the key words for similar words (e.g. one name for another): the text stays natural.",
        "gn": "Keep the words but blur the key ones with random noise (as in the ROME paper).",
    },
    "metric": {
        "logit_diff": "How strongly the right answer beats the wrong one, rescaled: 1 = as on the clean prompt, 0 = as on the broken one.",
        "prob": "The change in the probability of the right answer (0.05 = five percentage points).",
        "logprob": "The change in the log-probability of the right answer.",
        "kl": "How much closer the whole prediction gets to the clean one (KL divergence), not just the two answers.",
    },
    "direction": {
        "denoise": "Put one clean piece into the broken run: a big effect means the piece is enough (sufficient) to restore the answer.",
        "noise": "Put one broken piece into the clean run: a big effect means the piece is needed (necessary) for the answer.",
    },
    "component": {
        "head": "Each attention head, swapped at every position at once (layer × head map).",
        "head_by_pos": "Each attention head at each position separately (pick a position or a head to view).",
        "resid_pre": "The model's running state entering each layer, at each word (layer × position map).",
        "attn_out": "What each layer's attention adds, at each word (layer × position map).",
        "mlp_out": "What each layer's MLP adds, at each word (layer × position map).",
    },
}

EXAMPLE_PAIRS_TEXT = (
    '{"clean": "When Mary and John went to the store, John gave a drink to", '
    '"corrupt": "When Mary and John went to the store, Mary gave a drink to", '
    '"answer": " Mary", "counter_answer": " John"}'
)

# ---------------------------------------------------------------- page setup


def page_setup(title: str, icon: str | None = None, layout: str = "wide") -> None:
    """Page config and the page title. Call first on every page. Safe to call
    again when ``app.py`` already set the config (Streamlit allows it)."""
    st.set_page_config(page_title=f"{title} · Patchboard", page_icon=icon or FAVICON, layout=layout)
    st.session_state.setdefault("pb_page", title)


def allowed_models() -> tuple[list[str], bool]:
    """(models offered in the model menu, whether any hub id may be typed).

    From ``PATCHBOARD_ALLOWED_MODELS`` (comma list; ``*`` = any hub id). The
    embedded model is always first."""
    items = [s.strip() for s in os.environ.get("PATCHBOARD_ALLOWED_MODELS", "").split(",") if s.strip()]
    opts = [EMBEDDED] + [i for i in items if i not in ("*", EMBEDDED)]
    return opts, "*" in items


def _allowed_env() -> str:
    return os.environ.get("PATCHBOARD_ALLOWED_MODELS", "")


# ---------------------------------------------------------------- URL state


def _query() -> dict[str, str]:
    """The current URL query as {name: last value}."""
    return {k: st.query_params.get_all(k)[-1] for k in st.query_params.keys() if st.query_params.get_all(k)}


def _url_is_fresh() -> bool:
    """True when the URL is not what this session last wrote: a link was
    opened, the address bar edited, or the page switched (query cleared)."""
    return _query() != st.session_state.get("pb_url_written")


def read_spec_from_url(defaults: Spec | None = None, params: Mapping[str, Any] | None = None) -> tuple[Spec, str | None]:
    """Parse the URL (or ``params``) into a validated, allowed Spec.

    Returns ``(spec, None)``, or ``(defaults, message)`` when the link has a bad
    or unknown value (the message names the parameter and says what to do).
    A query without spec parameters returns the session's current spec (or the
    defaults) and no message."""
    defaults = (defaults or Spec()).validated()
    q = dict(_query() if params is None else params)
    if not any(k in _SPEC_PARAMS for k in q):
        return st.session_state.get("pb_spec", defaults), None
    try:
        spec = Spec.from_query(q)
        check_allowed(spec.model, _allowed_env())
        return spec, None
    except PatchboardError as e:
        return defaults, f"This link has a problem — **{e.field}**: {e.message}. Showing the default settings instead."
    except Exception as e:  # noqa: BLE001 - a link must never produce a traceback
        return defaults, f"This link could not be read ({type(e).__name__}). Showing the default settings instead."


def url_widget(name: str, default: Any, cast: Callable[[str], Any] = str) -> str:
    """Key for a page-specific widget that lives in the URL as ``?name=``.

    When the URL was just opened (or edited), the widget's state is set from
    it (``cast`` parses the text; a bad value shows a message and uses
    ``default``); otherwise the widget keeps its state. Create the widget with
    ``key=url_widget(...)`` and no ``value=``/``index=``; then pass its value
    to :func:`write_url` in ``extra``."""
    key = _X + name
    if _url_is_fresh() or key not in st.session_state:
        raw = _query().get(name)
        val = default
        if raw is not None:
            try:
                val = cast(raw)
            except (TypeError, ValueError, PatchboardError):
                st.warning(f"This link's **{name}** value {raw!r} is not valid; using {default!r}.")
        st.session_state[key] = val
    return key


def write_url(spec: Spec, extra: Mapping[str, Any] | None = None) -> None:
    """Put the full spec (+ page extras) into the address bar. Call on every
    run after the widgets; writes only when something changed."""
    q = spec.to_query()
    for k, v in (extra or {}).items():
        if v is not None:
            q[k] = f"{v:g}" if isinstance(v, float) else str(v)
    st.session_state["pb_spec"] = spec
    if _query() != q:
        st.query_params.from_dict(q)
    st.session_state["pb_url_written"] = q


def share_url(spec: Spec, extra: Mapping[str, Any] | None = None) -> str:
    """The full link of this page with ``spec`` (absolute when the browser told
    us its address, else starting at ``?``)."""
    q = spec.to_query()
    for k, v in (extra or {}).items():
        if v is not None:
            q[k] = f"{v:g}" if isinstance(v, float) else str(v)
    base = ""
    try:
        base = st.context.url or ""
    except Exception:  # noqa: BLE001 - no browser context (AppTest)
        base = ""
    if base and base.count("/") == 2:  # "http://host:port" -> ".../"
        base += "/"
    return f"{base}?{urlencode(q)}"


def copy_box(text: str, button: str = "Copy", aria: str = "text to copy", absolute_link: bool = False, rows: int = 1) -> None:
    """A read-only text box with a visible Copy button (clipboard API, with a
    select-and-copy fallback). ``absolute_link``: a text starting with ``?``
    is prefixed with the page's own address in the browser. ``rows`` > 1: a
    wrapping text area of that many lines."""
    safe = html.escape(text, quote=True)
    fix = ("if (i.value.startsWith('?')) { try { const l = window.parent.location; i.value = l.origin + l.pathname + i.value; } catch (e) {} }"
           if absolute_link else "")
    style = ("flex:1; min-width:0; padding:6px 8px; border:1px solid #c9ccd3; border-radius:6px; "
             "font:13px ui-monospace, monospace; color:#31333f; background:#f8f9fb; resize:none")
    attrs = f'id="pb-text" readonly aria-label="{html.escape(aria, quote=True)}" style="{style}" onclick="this.select()"'
    box = f"<textarea {attrs} rows={rows}>{html.escape(text)}</textarea>" if rows > 1 else f'<input {attrs} value="{safe}">'
    st.iframe(
        f"""
<div style="font-family: 'Source Sans Pro', sans-serif; display:flex; gap:8px; align-items:center">
 {box}
 <button id="pb-copy" style="padding:6px 14px; border-radius:6px; border:1px solid #3b5bdb; background:#3b5bdb; color:white; cursor:pointer; font-size:14px; white-space:nowrap">{html.escape(button)}</button>
</div>
<script>
const b = document.getElementById('pb-copy'), i = document.getElementById('pb-text');
{fix}
b.onclick = async () => {{
  i.select();
  let ok = false;
  try {{ await navigator.clipboard.writeText(i.value); ok = true; }} catch (e) {{
    try {{ ok = document.execCommand('copy'); }} catch (e2) {{}}
  }}
  b.textContent = ok ? 'Copied ✓' : 'Press Ctrl+C';
  setTimeout(() => b.textContent = {json.dumps(button)}, 2000);
}};
</script>
""",
        height=30 + 18 * rows,
    )


def copy_link(spec: Spec, extra: Mapping[str, Any] | None = None, label: str = "Share this exact view") -> str:
    """A visible copy-link control: the full URL in a box and a Copy button
    (plus a one-line explanation). Returns the URL."""
    url = share_url(spec, extra)
    st.markdown(f"**{label}** — this link reopens exactly this view (settings and result):")
    copy_box(url, "Copy link", "share link", absolute_link=True)
    return url


def page_url(page: str, query: Mapping[str, str] | None = None) -> str:
    """Relative URL of a page file (``pages/2_Library.py`` -> ``./Library``;
    the home page ``pages/1_Patch.py`` -> ``./``) with a query string."""
    import re

    name = os.path.basename(page)
    path = "" if name == HOME_PAGE else re.sub(r"^\d+_", "", name.removesuffix(".py"))
    return f"./{path}" + (f"?{urlencode(dict(query))}" if query else "")


def page_link(page: str, label: str, query_params: Mapping[str, str] | None = None, icon: str | None = None) -> None:
    """``st.page_link`` that also works when a page runs on its own (AppTest
    of a single file): then a plain markdown link to the same URL."""
    from streamlit.errors import StreamlitAPIException

    try:
        st.page_link(page, label=label, query_params=dict(query_params) if query_params else None, icon=icon)
    except StreamlitAPIException:
        st.markdown(f"[{label}]({page_url(page, query_params)})")


# ---------------------------------------------------------------- widgets


def _set_widgets_from_spec(spec: Spec) -> None:
    s = st.session_state
    opts, any_hub = allowed_models()
    if spec.model in opts:
        s[_W + "model"] = spec.model
        s[_W + "model_other"] = ""
    else:
        s[_W + "model"] = _OTHER_MODEL if any_hub else EMBEDDED
        s[_W + "model_other"] = spec.model if any_hub else ""
    s[_W + "source"] = "pairs" if spec.pairs is not None else "task"
    s[_W + "task"] = spec.task or s.get(_W + "task", "ioi")
    s[_W + "ioi_corrupt"] = spec.ioi_corrupt
    s[_W + "n_pairs"] = int(spec.n_pairs) if spec.pairs is None else int(s.get(_W + "n_pairs", Spec.n_pairs))
    s[_W + "seed"] = int(spec.seed)
    if spec.pairs is not None:
        from patching.analysis.view import pairs_to_text

        s[_W + "pairs_text"] = pairs_to_text(spec.pairs)
    else:
        s.setdefault(_W + "pairs_text", EXAMPLE_PAIRS_TEXT)
    s[_W + "corruption"] = spec.corruption
    s[_W + "noise_scale"] = float(spec.noise_scale)
    s[_W + "noise_samples"] = int(spec.noise_samples)
    s[_W + "key_positions"] = ",".join(map(str, spec.key_positions)) if spec.key_positions else ""
    s[_W + "metric"] = spec.metric
    s[_W + "direction"] = spec.direction
    s[_W + "component"] = spec.component
    s[_W + "window"] = int(spec.window)


def _on_upload() -> None:
    f = st.session_state.get(_W + "pairs_upload")
    if f is None:
        return
    try:
        text = f.getvalue().decode("utf-8-sig")
    except UnicodeDecodeError:
        st.session_state["pb_upload_error"] = f"{f.name} is not UTF-8 text; save it as UTF-8 CSV or JSONL"
        return
    st.session_state.pop("pb_upload_error", None)
    st.session_state[_W + "pairs_text"] = text
    st.session_state[_W + "source"] = "pairs"


def _caption(field: str) -> None:
    """The field's one-line explanation, plus the chosen option's meaning."""
    extra = CHOICE_HELP.get(field, {}).get(st.session_state.get(_W + field))
    st.caption(EXPLAIN[field] + (f" **{st.session_state[_W + field]}**: {extra}" if extra else ""))


class SpecPanel:
    """The spec widgets of a page, split in two steps so a page can draw its
    result *before* its sidebar (the chart then reaches the browser first):

    * :func:`spec_panel` reads the link (if just opened) into the widgets'
      state and computes the spec from that state, drawing nothing;
    * :meth:`render` draws the widgets in the sidebar (call it exactly once
      per run, also when the page has nothing else to show).

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


def spec_panel(fields: Iterable[str] = ALL_FIELDS, defaults: Spec | None = None) -> SpecPanel:
    """Step 1 of :class:`SpecPanel`: the link -> widget state (a bad link shows
    a message in the main area and the defaults), then the spec from the state."""
    fields = tuple(fields)
    s = st.session_state
    if _url_is_fresh() or _W + "metric" not in s:
        base, msg = read_spec_from_url(defaults)
        if msg:
            st.error(msg, icon=":material/warning:")
        s["pb_base_spec"] = base
        _set_widgets_from_spec(base)
    base = s.get("pb_base_spec", (defaults or Spec()).validated())
    _normalise_state(fields, base)
    spec, error = _spec_from_state(fields, base)
    return SpecPanel(fields, base, spec, error)


def spec_sidebar(fields: Iterable[str] = ALL_FIELDS, defaults: Spec | None = None) -> Spec | None:
    """The spec widgets in the sidebar, each with a one-line explanation.

    ``fields``: which spec fields get a widget (names from :data:`ALL_FIELDS`;
    "task" and "pairs" also give the built-in/custom switch); the others keep
    the value of the link or the session's spec. When the URL was just opened,
    the widgets are reloaded from it; a bad link shows a message (in the main
    area) and the defaults. Returns the validated Spec, or None when a typed
    value is invalid (the sidebar says what to fix). Same as
    ``p = spec_panel(...); p.render(); p.spec``."""
    panel = spec_panel(fields, defaults)
    panel.render()
    return panel.spec


def _source(fields: tuple[str, ...], base: Spec) -> str:
    if "task" in fields or "pairs" in fields:
        return st.session_state.get(_W + "source", "task")
    return "pairs" if base.pairs is not None else "task"


def _normalise_state(fields: tuple[str, ...], base: Spec) -> None:
    s = st.session_state
    opts, any_hub = allowed_models()
    menu = opts + ([_OTHER_MODEL] if any_hub else [])
    if s.get(_W + "model") not in menu:
        s[_W + "model"] = EMBEDDED
    choices = [c for c in ("task", "pairs") if c in fields] or ["task"]
    if "task" in fields or "pairs" in fields:
        if s.get(_W + "source") not in choices:
            s[_W + "source"] = choices[0]
    # Streamlit forgets the state of a widget that was not drawn in a run (e.g.
    # the noise scale while str is chosen); bring such widgets back with the
    # link's value, not the widget's minimum.
    for key, default in (("task", base.task or "ioi"), ("pairs_text", EXAMPLE_PAIRS_TEXT), ("key_positions", ""),
                         ("model_other", ""), ("ioi_corrupt", base.ioi_corrupt), ("n_pairs", int(base.n_pairs)),
                         ("seed", int(base.seed)), ("corruption", base.corruption), ("noise_scale", float(base.noise_scale)),
                         ("noise_samples", int(base.noise_samples)), ("metric", base.metric), ("direction", base.direction),
                         ("component", base.component), ("window", int(base.window))):
        s.setdefault(_W + key, default)


def _spec_from_state(fields: tuple[str, ...], base: Spec) -> tuple[Spec | None, str | None]:
    """The spec the widgets' state describes (no drawing), or (None, error)."""
    from patching.analysis.view import guess_pairs_format

    s = st.session_state

    def pick(field: str, cast: Callable = lambda v: v) -> Any:
        if field in fields and _W + field in s:
            return cast(s[_W + field])
        return getattr(base, field)

    error: str | None = None
    model = base.model
    if "model" in fields:
        if s[_W + "model"] == _OTHER_MODEL:
            model = str(s.get(_W + "model_other", "")).strip()
            if not model:
                error = "model: type a hub model id, or pick one from the menu"
                model = EMBEDDED
        else:
            model = s[_W + "model"]
        if not error:
            try:
                check_allowed(model, _allowed_env())
            except PatchboardError as e:
                error = str(e)
    source = _source(fields, base)
    corruption = pick("corruption")
    component = pick("component")
    changes: dict[str, Any] = {
        "model": model,
        "task": None, "pairs": None, "key_positions": None,
        "n_pairs": pick("n_pairs", int), "seed": pick("seed", int), "corruption": corruption,
        "noise_scale": pick("noise_scale", float), "noise_samples": pick("noise_samples", int),
        "metric": pick("metric"), "direction": pick("direction"), "component": component,
        "window": pick("window", int) if component in spec_mod.WINDOW_COMPONENTS else 1,
        "ioi_corrupt": pick("ioi_corrupt"),
    }
    if source == "task":
        changes["task"] = pick("task") or "ioi"
    elif "pairs" in fields:
        text = str(s.get(_W + "pairs_text", ""))
        try:
            changes["pairs"] = tuple(parse_pairs_text(text, guess_pairs_format(text), "pairs"))
        except PatchboardError as e:
            error = error or str(e)
    else:
        changes["pairs"] = base.pairs
    if source == "pairs" and corruption == "gn":
        if "key_positions" in fields:
            kp_text = str(s.get(_W + "key_positions", "")).strip()
            if kp_text:
                try:
                    changes["key_positions"] = parse_positions(kp_text)
                except PatchboardError as e:
                    error = error or str(e)
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


def _render_widgets(fields: tuple[str, ...], base: Spec, error: str | None) -> None:
    s = st.session_state
    with st.sidebar:
        st.markdown("### Settings")
        if "model" in fields:
            opts, any_hub = allowed_models()
            menu = opts + ([_OTHER_MODEL] if any_hub else [])
            st.selectbox("Model", menu, key=_W + "model", disabled=len(menu) == 1,
                         help="The server admin can allow more models with PATCHBOARD_ALLOWED_MODELS.")
            _caption("model")
            if s[_W + "model"] == _OTHER_MODEL:
                st.text_input("Hub model id", key=_W + "model_other", placeholder="e.g. gpt2")
        source = _source(fields, base)
        if "task" in fields or "pairs" in fields:
            st.markdown("**Prompts**")
            choices = [c for c in ("task", "pairs") if c in fields]
            if len(choices) > 1:
                st.radio("Prompts", choices, key=_W + "source", horizontal=True, label_visibility="collapsed",
                         format_func=lambda c: {"task": "Built-in task", "pairs": "My own pairs"}[c])
                _caption("source")
        if source == "task":
            if "task" in fields:
                st.selectbox("Task", spec_mod.TASKS, key=_W + "task", format_func=TASK_LABELS.get)
                _caption("task")
            task = s.get(_W + "task") if "task" in fields else base.task
            if task == "ioi" and "ioi_corrupt" in fields:
                st.selectbox("IOI corruption", spec_mod.IOI_CORRUPT, key=_W + "ioi_corrupt", format_func=IOI_CORRUPT_LABELS.get)
                _caption("ioi_corrupt")
            if "n_pairs" in fields:
                st.number_input("Number of pairs", min_value=1, max_value=spec_mod.MAX_PAIRS, step=1, key=_W + "n_pairs")
                _caption("n_pairs")
        elif "pairs" in fields:
            st.text_area("Prompt pairs (JSONL or CSV)", key=_W + "pairs_text", height=150,
                         help="Columns: clean, corrupt, answer, counter_answer. CSV needs a header row; "
                              "JSONL is one {\"clean\": …} object per line.")
            _caption("pairs")
            st.file_uploader("…or upload a .csv / .jsonl file", type=["csv", "jsonl", "json"], key=_W + "pairs_upload",
                             on_change=_on_upload)
            if s.get("pb_upload_error"):
                st.error(s["pb_upload_error"])
        corruption = s.get(_W + "corruption", base.corruption) if "corruption" in fields else base.corruption
        if "seed" in fields and (source == "task" or corruption == "gn"):
            st.number_input("Seed", min_value=0, max_value=2**31 - 1, step=1, key=_W + "seed")
            _caption("seed")
        if "corruption" in fields:
            st.markdown("**Corruption**")
            st.radio("Corruption", spec_mod.CORRUPTIONS, key=_W + "corruption", format_func=CORRUPTION_LABELS.get)
            _caption("corruption")
        if corruption == "gn":
            if "noise_scale" in fields:
                st.number_input("Noise scale (× embedding std)", min_value=0.1, max_value=100.0, step=0.5, key=_W + "noise_scale")
                _caption("noise_scale")
            if "noise_samples" in fields:
                st.number_input("Noise samples", min_value=1, max_value=spec_mod.MAX_NOISE_SAMPLES, step=1, key=_W + "noise_samples")
                _caption("noise_samples")
            if source == "pairs" and "key_positions" in fields:
                st.text_input("Key positions", key=_W + "key_positions", placeholder="e.g. 3,4")
                _caption("key_positions")
        if "metric" in fields or "direction" in fields:
            st.markdown("**Measurement**")
        if "metric" in fields:
            st.selectbox("Metric", spec_mod.METRICS, key=_W + "metric", format_func=METRIC_LABELS.get)
            _caption("metric")
        if "direction" in fields:
            st.radio("Direction", spec_mod.DIRECTIONS, key=_W + "direction", format_func=DIRECTION_LABELS.get)
            _caption("direction")
        if "component" in fields:
            st.markdown("**What to patch**")
            st.selectbox("Component", spec_mod.COMPONENTS, key=_W + "component", format_func=COMPONENT_LABELS.get)
            _caption("component")
        component = s.get(_W + "component", base.component) if "component" in fields else base.component
        if component in spec_mod.WINDOW_COMPONENTS and "window" in fields:
            st.number_input("Window (layers)", min_value=1, max_value=spec_mod.MAX_WINDOW, step=1, key=_W + "window")
            _caption("window")
        if error:
            st.error(f"Fix this setting — {error}", icon=":material/edit:")


def current_spec(defaults: Spec | None = None) -> tuple[Spec, str | None]:
    """For pages without spec widgets (e.g. "How to read this"): the spec of
    the link, else the session's current spec, else the defaults."""
    if _url_is_fresh():
        spec, msg = read_spec_from_url(defaults)
    else:
        spec, msg = st.session_state.get("pb_spec", (defaults or Spec()).validated()), None
    return spec, msg


# ---------------------------------------------------------------- model / store


@st.cache_resource(show_spinner=False)
def _fingerprints() -> dict[str, str]:
    """name -> weight fingerprint of the models this process has loaded."""
    return {}


@st.cache_resource(show_spinner=False, max_entries=4)
def _load_model(name: str):
    from patching.service import get_model

    lm = get_model(name)
    _fingerprints()[name] = lm.fingerprint
    return lm


def cached_model(name: str):
    """The loaded model (``patching.api.get_model``), once per server process.
    Raises PatchboardError for a model the server does not allow."""
    check_allowed(name, _allowed_env())
    return _load_model(name)


@st.cache_resource(show_spinner=False)
def _store(path: str):
    from patching.store import Store

    return Store(path or None)


def store():
    """The result store (``PATCHBOARD_CACHE_DIR``/results.sqlite), one per process."""
    from patching.store import default_path

    return _store(str(default_path()))


def fingerprint_for(name: str) -> str | None:
    """The weight fingerprint without loading the model: from a model this
    process loaded, else the embedded model's sidecar; None when unknown."""
    return _fingerprints().get(name) or known_fingerprint(name)


def lookup_result(spec: Spec):
    """The stored ``Result`` for ``spec`` (with ``spec``'s metric), or None when
    it is not stored or the model's fingerprint is unknown until it loads."""
    from patching.service import lookup

    fp = fingerprint_for(spec.model)
    if fp is None:
        return None
    return lookup(spec, store(), fp)


def progress_callback(text: str = "Computing") -> Callable[[int, int], None]:
    """A ``(done, total)`` callback driving an ``st.progress`` bar with an ETA."""
    bar = st.progress(0.0, text=f"{text}…")
    t0 = time.time()

    def update(done: int, total: int) -> None:
        frac = done / total if total else 1.0
        el = time.time() - t0
        eta = f", about {el / frac - el:.0f} s left" if 0 < frac < 1 and el > 1 else ""
        bar.progress(min(1.0, frac), text=f"{text}: {done}/{total} batches{eta}")

    return update


def run_spec(spec: Spec):
    """Load the model (cached), then return the stored result or compute it
    with a progress bar and store it. Errors are shown and None returned."""
    import torch

    from patching.service import run

    try:
        with st.spinner(f"Loading {spec.model} (once per server)…"):
            lm = cached_model(spec.model)
        # Grad mode is per thread and each script run has its own thread:
        # switch autograd off here, not only where the model was loaded.
        with torch.inference_mode():
            res = run(spec, store(), progress_callback("Patching"), lm)
        return res
    except PatchboardError as e:
        show_error(e)
        return None


def show_error(err: BaseException | str) -> None:
    """One readable banner for a user-facing error (a PatchboardError names the
    field at fault); anything else is reported briefly, never as a traceback."""
    if isinstance(err, PatchboardError):
        st.error(f"**{err.field}**: {err.message}", icon=":material/warning:")
    elif isinstance(err, str):
        st.error(err, icon=":material/warning:")
    else:
        st.error(f"Something went wrong ({type(err).__name__}: {str(err)[:300]}). Please report it with the share link.", icon=":material/warning:")


# ---------------------------------------------------------------- prompt tokens


@st.cache_data(show_spinner=False, max_entries=256)
def _preview(spec_json: str, model: str) -> dict:
    from patching.service import get_model
    from patching.core.data import build_dataset
    from patching.core.models import embedded_tokenizer

    spec = Spec.from_dict(json.loads(spec_json))
    if model == EMBEDDED:
        tok = embedded_tokenizer()
    else:
        from patching import service as api

        if model not in getattr(api, "_models", {}):
            return {"unavailable": f"the tokens of {model} show once the model is loaded (press Run)"}
        tok = get_model(model).tokenizer
    if spec.pairs is not None:
        pairs = list(spec.pairs)
    else:
        from patching.core import tasks

        pairs = tasks.generate(spec.task, tok, spec.n_pairs, spec.seed, ioi_corrupt=spec.ioi_corrupt)
    ds = build_dataset(pairs, tok, spec.corruption, spec.key_positions)
    p0 = pairs[0]
    return {
        "clean_tokens": ds.clean_strs,
        "corrupt_tokens": ds.corrupt_strs,
        "key_positions": ds.key_positions[0],
        "position_labels": ds.position_labels,
        "n_pairs": ds.n,
        "answer": p0.answer,
        "counter_answer": p0.counter_answer,
        "clean_text": p0.clean,
        "corrupt_text": p0.corrupt,
    }


def token_preview(spec: Spec) -> dict:
    """The first pair's tokens for ``spec`` (clean_tokens, corrupt_tokens,
    key_positions, position_labels, answer, counter_answer...) from the
    tokenizer alone, without the model's weights. Raises PatchboardError when
    the prompts are not valid for this model (e.g. unequal lengths); returns
    {"unavailable": reason} when the tokenizer is not at hand."""
    return _preview(spec.to_json(), spec.model)


def show_tokens(clean: Sequence[str], corrupt: Sequence[str], key_positions: Sequence[int] | None = None,
                labels: Sequence[str] | None = None, caption: str | None = None) -> None:
    """The clean and corrupted prompts' tokens aligned by position; positions
    where they differ are highlighted yellow, key positions (what Gaussian
    noise blurs) are outlined, task roles (S1, IO, S2, END...) labelled."""
    from patching.analysis.view import show_token, token_alignment

    t = token_alignment(clean, corrupt, key_positions, labels)
    head = "".join(
        f"<th title='position {r.pos}'>{r.pos}<br><span class='pb-role'>{html.escape(r.role)}</span></th>" for r in t.itertuples()
    )

    def row(name: str, col: str) -> str:
        cells = []
        for r in t.itertuples():
            cls = []
            if r.differs:
                cls.append("pb-diff")
            if r.key:
                cls.append("pb-key")
            tip = f"position {r.pos}: {getattr(r, col)!r}" + (" · differs" if r.differs else "") + (" · key position" if r.key else "")
            cells.append(f"<td class='{' '.join(cls)}' title='{html.escape(tip, quote=True)}'>{html.escape(show_token(getattr(r, col)))}</td>")
        return f"<tr><th class='pb-rowh'>{name}</th>{''.join(cells)}</tr>"

    st.html(
        f"""
<style>
.pb-tok {{ border-collapse: separate; border-spacing: 2px; font-family: ui-monospace, monospace; font-size: 13px; }}
.pb-tok th {{ font-weight: 400; color: #6b7280; font-size: 11px; text-align: center; padding: 0 2px; }}
.pb-tok th.pb-rowh {{ text-align: right; color: #31333f; font-size: 13px; font-weight: 600; padding-right: 6px; font-family: sans-serif; }}
.pb-tok td {{ background: #f1f3f5; border-radius: 4px; padding: 2px 5px; white-space: pre; text-align: center; color: #1f2328; }}
.pb-tok td.pb-diff {{ background: #ffe066; font-weight: 700; }}
.pb-tok td.pb-key {{ outline: 2px solid #d6007e; outline-offset: -2px; }}
.pb-role {{ color: #3b5bdb; font-weight: 600; }}
.pb-legend span {{ display: inline-block; padding: 0 6px; border-radius: 4px; margin-right: 10px; font-size: 12px; }}
</style>
<div style="overflow-x:auto"><table class="pb-tok" aria-label="clean and corrupted tokens">
<tr><th></th>{head}</tr>{row("clean", "clean")}{row("corrupted", "corrupt")}</table></div>
<div class="pb-legend" style="margin-top:4px">
<span style="background:#ffe066">differs between the prompts</span>
<span style="outline:2px solid #d6007e; outline-offset:-2px">key position (noised by gn)</span>
<span style="background:#f1f3f5">· = space</span></div>
"""
    )
    if caption:
        st.caption(caption)


def show_table(df, number_formats: Mapping[str, str] | None = None, signed: Sequence[str] = (), caption: str | None = None) -> None:
    """A small static table as plain HTML (no data-grid JavaScript to load,
    so it costs nothing on the way to the first chart). ``signed`` columns are
    tinted blue (positive) / red (negative); ``number_formats`` maps a column
    to a format spec such as ``.5f``."""
    import pandas as pd

    fmts = dict(number_formats or {})
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    rows = []
    for _, r in df.iterrows():
        cells = []
        for c in df.columns:
            v = r[c]
            if v is None or (not isinstance(v, str) and pd.isna(v)):
                txt, style = "", ""
            elif c in fmts and isinstance(v, (int, float)):
                txt = format(float(v), fmts[c])
                style = ""
            else:
                txt, style = str(v), ""
            if c in signed and isinstance(v, (int, float)) and not pd.isna(v):
                style = "color:#1f4e9c" if v > 0 else "color:#b02a37" if v < 0 else ""
            num = isinstance(v, (int, float)) and not isinstance(v, bool)
            cells.append(f"<td style='{style}{';text-align:right' if num else ''}'>{html.escape(txt)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    st.html(
        "<style>.pb-table{border-collapse:collapse;font-size:14px;width:100%}"
        ".pb-table th{text-align:left;color:#555;font-weight:600;border-bottom:2px solid #dee2e6;padding:4px 8px}"
        ".pb-table td{border-bottom:1px solid #eef0f3;padding:3px 8px;font-variant-numeric:tabular-nums}</style>"
        f"<table class='pb-table'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )
    if caption:
        st.caption(caption)
