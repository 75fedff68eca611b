"""User-facing errors: one line that names the field and the fix.

The CLI prints ``str(err)`` and exits 2; the app shows it in a banner. Nothing
that raises a PatchboardError may have written to the store first.
"""


class PatchboardError(ValueError):
    """A bad input. ``field`` is the spec/CLI name at fault."""

    def __init__(self, field: str, message: str):
        self.field = _one_line(field)[:100]
        message = _one_line(message)
        self.message = message if len(message) <= MAX_MESSAGE_CHARS else message[:MAX_MESSAGE_CHARS] + "…"
        super().__init__(f"{self.field}: {self.message}")

    def __reduce__(self):  # rebuilt from both parts (an error raised on a Ray worker)
        return (type(self), (self.field, self.message))


#: Every character str.splitlines() breaks on, shown escaped: a user's value
#: quoted in a message never breaks the one-line contract.
_LINE_BREAKS = {c: repr(chr(c))[1:-1] for c in (0x0A, 0x0B, 0x0C, 0x0D, 0x1C, 0x1D, 0x1E, 0x85, 0x2028, 0x2029)}


def _one_line(text: str) -> str:
    return str(text).translate(_LINE_BREAKS)


#: The longest message a PatchboardError keeps (a value quoted in it is capped
#: by :func:`shown` first; this is the last guard for the one-line contract).
MAX_MESSAGE_CHARS = 2_000


def shown(value: object, limit: int = 60) -> str:
    """A user's value quoted in a message: like ``repr`` but cut to about
    ``limit`` characters, in work bounded by ``limit`` (a nested list or a huge
    string is never expanded whole first: ``f"{value!r}"`` on an aliased YAML
    value or a megabyte of text is the amplification this avoids)."""
    import reprlib

    r = reprlib.Repr()
    r.maxlevel, r.maxstring, r.maxother, r.maxlong = 2, limit, limit, min(limit, 40)
    r.maxlist = r.maxtuple = r.maxdict = r.maxset = r.maxfrozenset = r.maxdeque = r.maxarray = 4
    try:
        text = r.repr(value)
    except Exception:  # noqa: BLE001 - a value whose repr fails (a 5,000-digit int) is shown by its type
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit + 10 else text[: limit + 9] + "…"
