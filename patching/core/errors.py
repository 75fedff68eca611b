"""User-facing errors: one line that names the field and the fix.

The CLI prints ``str(err)`` and exits 2; the app shows it in a banner. Nothing
that raises a PatchboardError may have written to the store first.
"""


class PatchboardError(ValueError):
    """A bad input. ``field`` is the spec/CLI name at fault."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")
