"""Parsers of the page extras a link carries (``?top=``, ``?units=``, ``?pair=``...).

Each returns a function ``text -> value`` that raises the project's
PatchboardError naming the parameter; :func:`ui.url.read_extra` is the one
guarded path that calls them (any other exception also becomes a message).
No streamlit here, so the fuzz tests exercise exactly what the pages use.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

from patching.core.errors import PatchboardError, shown
from patching.core.limits import MAX_PARAM_CHARS, check_int_text


def int_in(name: str, lo: int, hi: int) -> Callable[[str], int]:
    def cast(raw: str) -> int:
        v = check_int_text(str(raw), name)
        if not lo <= v <= hi:
            raise PatchboardError(name, f"{v} must be a whole number from {lo} to {hi}")
        return v

    return cast


def float_in(name: str, lo: float, hi: float) -> Callable[[str], float]:
    """A number in (lo, hi]."""
    def cast(raw: str) -> float:
        text = str(raw).strip()
        try:
            if len(text) > 40:
                raise ValueError
            v = float(text)
        except ValueError:
            raise PatchboardError(name, f"{shown(text, 40)} is not a number") from None
        if not math.isfinite(v) or not lo < v <= hi:
            raise PatchboardError(name, f"{v:g} must be a number in ({lo:g}, {hi:g}]")
        return v

    return cast


def choice(name: str, options: Sequence[str]) -> Callable[[str], str]:
    def cast(raw: str) -> str:
        if raw not in options:
            raise PatchboardError(name, f"{shown(raw, 40)} is not one of {', '.join(options)}")
        return raw

    return cast


def subset(name: str, options: Sequence[str]) -> Callable[[str], list[str]]:
    """A comma list of options -> those options, in their own order."""
    def cast(raw: str) -> list[str]:
        text = str(raw)
        if len(text) > MAX_PARAM_CHARS:
            raise PatchboardError(name, f"longer than {MAX_PARAM_CHARS} characters (MAX_PARAM_CHARS)")
        vs = [v.strip() for v in text.split(",") if v.strip()]
        bad = [v for v in vs if v not in options]
        if not vs or bad:
            raise PatchboardError(name, f"give a comma list of {', '.join(options)}")
        return [v for v in options if v in vs]

    return cast


def declared(setting) -> Callable[[str], object]:
    """A declared parameter's parser (a :class:`patching.core.fields.Setting`
    or a request's :class:`patching.core.params.Param`): its text parsed and
    checked by the declaration, so a link, the CLI and the key agree."""
    def cast(raw: str) -> object:
        return setting.check(setting.parse(str(raw)))

    return cast


def text(name: str) -> Callable[[str], str]:
    """Free text (a text box's value): bounded and valid Unicode."""
    from patching.core.limits import check_text

    def cast(raw: str) -> str:
        return check_text(str(raw), name, MAX_PARAM_CHARS, "value", "MAX_PARAM_CHARS")

    return cast
