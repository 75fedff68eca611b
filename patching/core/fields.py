"""The field table: how one Spec setting is typed, bounded, shown and parsed.

Each Spec field is declared once, in :class:`patching.core.spec.Spec`, as
``name: type = setting(default, ...)``. Everything else reads that
declaration: the CLI's flags (``--n-pairs``), the URL's parameters
(``?n-pairs=``), the sidebar's widgets and captions, validation, and whether
the field enters the cache key. Adding a field is one line there.

Nothing here knows about Streamlit or argparse; they ask a :class:`Setting`
for its kind, bounds, choices and texts.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from patching.core.errors import PatchboardError
from patching.core.limits import MAX_INT_DIGITS, MAX_PARAM_CHARS



@dataclass(frozen=True)
class Setting:
    """One Spec field's declaration (besides its name, type and default).

    kind:     "text" | "choice" | "int" | "float" | "positions" | "pairs"
    lo, hi:   inclusive bounds for int/float (``lo_open``: lo excluded)
    choices:  allowed values of a "choice"
    in_key:   whether the value changes what is computed (the metric does not:
              one sweep stores every metric)
    applies:  whether the field means anything for a spec (e.g. the noise
              scale only under ``gn``); where it does not, validation resets it
              to the default (so equal computations hash equally) when
              ``reset`` is set, and the sidebar hides its widget
    cli:      the CLI help; explain: one plain line for non-coders;
    label:    the widget's label; group: the sidebar section it opens;
    options:  short menu label per choice; option_help: one line per choice
    widget:   "select" | "radio" | "number" | "text" | "area" (the UI's choice)
    omit_default: a field added after results were stored leaves its default
              out of the cache key, so every key stored before it stays valid
    """

    kind: str
    default: Any = None
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    choices: tuple = ()
    in_key: bool = True
    applies: Callable[[Any], bool] | None = None
    reset: bool = False
    cli: str = ""
    explain: str = ""
    label: str = ""
    group: str = ""
    options: Mapping[str, str] = field(default_factory=dict)
    option_help: Mapping[str, str] = field(default_factory=dict)
    widget: str = ""
    step: float = 1
    omit_default: bool = False
    name: str = ""  # filled in by the table

    # ------------------------------------------------------------ names

    @property
    def flag(self) -> str:
        """The CLI flag and URL parameter name (``n-pairs``)."""
        return self.name.replace("_", "-")

    def applies_to(self, spec: Any) -> bool:
        return self.applies is None or bool(self.applies(spec))

    # ------------------------------------------------------------ checking

    def check(self, value: Any) -> Any:
        """The value if it is valid for this setting, else PatchboardError
        naming the flag and the fix. Returns the value in canonical type."""
        if self.kind == "choice":
            if not isinstance(value, str) or value not in self.choices:
                raise PatchboardError(self.flag, f"{_show(value)} is not one of {', '.join(self.choices)}")
            return value
        if self.kind == "int":
            if isinstance(value, bool) or not isinstance(value, int) or not self.lo <= value <= self.hi:
                raise PatchboardError(self.flag, f"{_show(value)} must be a whole number from {self.lo:g} to {self.hi:g}")
            return value
        if self.kind == "float":
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))
            if ok:
                v = float(value)
                ok = (v > self.lo if self.lo_open else v >= self.lo) and v <= self.hi
            if not ok:
                lo = "(" if self.lo_open else "["
                raise PatchboardError(self.flag, f"{_show(value)} must be a number in {lo}{self.lo:g}, {self.hi:g}]")
            return float(value)
        return value

    # ------------------------------------------------------------ text (URL, CLI)

    def parse(self, text: str) -> Any:
        """A URL/CLI text -> a value (not yet range-checked)."""
        text = str(text).strip()
        if self.kind == "int":
            if len(text) > MAX_INT_DIGITS or not _is_int(text):
                raise PatchboardError(self.flag, f"{_show(text)} is not a whole number of at most {MAX_INT_DIGITS} digits")
            return int(text)
        if self.kind == "float":
            try:
                if len(text) > 40:
                    raise ValueError
                return float(text)
            except ValueError:
                raise PatchboardError(self.flag, f"{_show(text)} is not a number") from None
        if self.kind == "positions":
            from patching.core.pairs import parse_positions

            return parse_positions(text, self.flag) if text else None
        if self.kind == "pairs":
            from patching.core.pairs import decode_pairs

            return decode_pairs(text)
        if len(text) > MAX_PARAM_CHARS:
            raise PatchboardError(self.flag, f"{len(text)} characters; the limit is {MAX_PARAM_CHARS} (MAX_PARAM_CHARS)")
        from patching.core.limits import check_text

        return check_text(text, self.flag, MAX_PARAM_CHARS, "value", "MAX_PARAM_CHARS")

    def format(self, value: Any) -> str | None:
        """A value -> its URL/CLI text (None: left out)."""
        if value is None:
            return None
        if self.kind == "positions":
            return ",".join(map(str, value))
        if self.kind == "pairs":
            from patching.core.pairs import encode_pairs

            return encode_pairs(value)
        if isinstance(value, float):
            return f"{value:g}"
        return str(value)


def setting(default: Any, kind: str | None = None, **kw: Any) -> Any:
    """A dataclass field carrying its :class:`Setting`."""
    if kind is None:
        kind = "choice" if kw.get("choices") else "int" if isinstance(default, int) else "float" if isinstance(default, float) else "text"
    s = Setting(kind=kind, default=default, **kw)
    return dataclasses.field(default=default, metadata={"setting": s})


def table(cls: type) -> dict[str, Setting]:
    """name -> Setting for every field of the dataclass ``cls``, in order."""
    out = {}
    for f in dataclasses.fields(cls):
        s = f.metadata.get("setting")
        if s is not None:
            out[f.name] = dataclasses.replace(s, name=f.name)
    return out


def _is_int(text: str) -> bool:
    t = text[1:] if text[:1] in "+-" else text
    return t.isascii() and t.isdigit()


def _show(value: Any, limit: int = 60) -> str:
    """A user's value quoted for an error message, cut short."""
    r = repr(value)
    return r if len(r) <= limit else r[:limit] + "…'"
