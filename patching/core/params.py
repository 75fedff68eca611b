"""A request's parameter, declared as a Spec field is (:mod:`patching.core.fields`).

:class:`Param` is a :class:`~patching.core.fields.Setting` (kind, default,
bounds or choices, help texts, whether it enters the key; its ``flag`` is
both the CLI flag and the URL name) plus the older names a link may still
use. The requests of :mod:`patching.requests` declare their fields with
:func:`param`; :func:`in_key` and :func:`link_query` read a request's
values by that declaration.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from patching.core.errors import PatchboardError, shown
from patching.core.fields import Setting


@dataclass(frozen=True)
class Param(Setting):
    """A request parameter's declaration: a :class:`Setting` (its ``flag`` is
    both the CLI flag and the URL name) plus

    aliases:  older URL (and CLI) names that still open; a link that carries
              one was written before the rename, so the old name wins
    in_link:  whether a page's link carries it (``by_pos`` has no widget)

    Kinds besides the Spec's: ``bool`` (a CLI switch), ``hypothesis``
    (JSON text, inline in a link as :func:`patching.core.codec.encode_hypothesis`)
    and ``circuit`` (a circuit's edges, inline in a link the same way).
    """

    aliases: tuple[str, ...] = ()
    in_link: bool = True

    @property
    def names(self) -> tuple[str, ...]:
        """The URL names to read, the one that wins first."""
        return (*self.aliases, self.flag)

    def raw(self, query: Mapping[str, Any]) -> Any:
        """This parameter's text in a URL query (an old name first), or None."""
        for name in self.names:
            if name in query:
                return query[name]
        return None

    def parse(self, text: str) -> Any:
        if self.kind == "bool":
            t = str(text).strip().lower()
            if t in ("true", "1", "yes", "on"):
                return True
            if t in ("false", "0", "no", "off", ""):
                return False
            raise PatchboardError(self.flag, f"{shown(text, 40)} is not true or false")
        if self.kind == "hypothesis":
            from patching.core.codec import decode_hypothesis

            return decode_hypothesis(str(text))
        if self.kind == "circuit":
            from patching.core.codec import decode_text

            return decode_text(str(text), self.flag)
        return super().parse(text)

    def check(self, value: Any) -> Any:
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise PatchboardError(self.flag, f"{shown(value, 40)} is not true or false")
            return value
        return super().check(value)

    def format(self, value: Any) -> str | None:
        if value is None:
            return None
        if self.kind == "bool":
            return "true" if value else "false"
        if self.kind == "hypothesis":
            from patching.core.codec import encode_hypothesis

            return encode_hypothesis(value)
        if self.kind == "circuit":
            from patching.core.codec import encode_text

            return encode_text(str(value))
        return super().format(value)


def param(default: Any, kind: str | None = None, **kw: Any) -> Any:
    """A dataclass field carrying its :class:`Param` (as ``fields.setting``)."""
    if kind is None:
        kind = ("choice" if kw.get("choices") else "bool" if isinstance(default, bool) else "int" if isinstance(default, int)
                else "text")
    return dataclasses.field(default=default, metadata={"setting": Param(kind=kind, default=default, **kw)})


def in_key(fields: Mapping[str, Param], req: Any) -> dict[str, Any]:
    """The declared parameters that change what ``req`` computes: those
    that enter the key and apply; a parameter added after results were
    stored leaves its default out (``omit_default``), so older keys stay."""
    out = {}
    for name, s in fields.items():
        v = getattr(req, name)
        if s.in_key and s.applies_to(req) and not (s.omit_default and v == s.default):
            out[name] = v
    return out


def link_query(fields: Mapping[str, Param], req: Any) -> dict[str, str]:
    """URL parameters of every declared parameter a link carries (defaults
    too, as ``Spec.to_query``: a link pins the exact view)."""
    q = {}
    for s in fields.values():
        text = s.format(getattr(req, s.name)) if s.in_link else None
        if text is not None:
            q[s.flag] = text
    return q
