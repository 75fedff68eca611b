"""User-facing errors: one line that names the field and the fix.

The CLI prints ``str(err)`` and exits 2; the app shows it in a banner. Nothing
that raises a PatchboardError may have written to the store first.
"""


class PatchboardError(ValueError):
    """A bad input. ``field`` is the spec/CLI name at fault."""

    def __init__(self, field: str, message: str):
        self.field = _one_line(field)
        self.message = _one_line(message)
        super().__init__(f"{self.field}: {self.message}")

    def __reduce__(self):  # rebuilt from both parts (an error raised on a Ray worker)
        return (type(self), (self.field, self.message))


#: Every character str.splitlines() breaks on, shown escaped: a user's value
#: quoted in a message never breaks the one-line contract.
_LINE_BREAKS = {c: repr(chr(c))[1:-1] for c in (0x0A, 0x0B, 0x0C, 0x0D, 0x1C, 0x1D, 0x1E, 0x85, 0x2028, 0x2029)}


def _one_line(text: str) -> str:
    return str(text).translate(_LINE_BREAKS)
