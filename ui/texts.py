"""UI texts that belong to no single spec field.

Per-field texts (label, one-line explanation, menu labels, one line per
option) are declared once on the Spec (``patching.core.spec.FIELDS``); the
tables below are derived from it for pages that want them by name.
"""

from __future__ import annotations

from patching.core.spec import FIELDS

#: The built-in/custom prompts switch (not a Spec field).
SOURCE_LABELS = {"task": "Built-in task", "pairs": "My own pairs"}
SOURCE_EXPLAIN = "Use a ready-made set of prompts, or type (or upload) your own pairs."

#: The model menu's extra entry (any hub id may be typed) and its help.
OTHER_MODEL = "Another model…"
MODEL_HELP = "The server admin can allow more models with PATCHBOARD_ALLOWED_MODELS."


def model_help() -> str:
    """The model menu's help: the installed models are listed; how to add the others."""
    from patching.core.config import add_hints

    hints = add_hints()
    add = (" Add another known model on the server with " + "; ".join(hints) + ".") if hints else ""
    return "Installed models are listed." + add + " " + MODEL_HELP
OTHER_MODEL_LABEL = "Hub model id"
OTHER_MODEL_PLACEHOLDER = "e.g. gpt2"

#: The custom pairs' text area and upload.
PAIRS_HELP = ("Columns: clean, corrupt, answer, counter_answer. CSV needs a header row; "
              "JSONL is one {\"clean\": …} object per line.")
UPLOAD_LABEL = "…or upload a .csv / .jsonl file"
UPLOAD_TYPES = ["csv", "jsonl", "json"]

#: Placeholders of free-text widgets.
PLACEHOLDERS = {"key_positions": "e.g. 3,4"}

EXAMPLE_PAIRS_TEXT = (
    '{"clean": "When Mary and John went to the store, John gave a drink to", '
    '"corrupt": "When Mary and John went to the store, Mary gave a drink to", '
    '"answer": " Mary", "counter_answer": " John"}'
)

#: One plain-language line per setting (and the prompts switch).
EXPLAIN: dict[str, str] = {name: s.explain for name, s in FIELDS.items()} | {"source": SOURCE_EXPLAIN}
#: Short menu label per choice, per field (only fields with choices).
OPTION_LABELS: dict[str, dict[str, str]] = {name: dict(s.options) for name, s in FIELDS.items() if s.options}
#: One plain line about each option, per field.
CHOICE_HELP: dict[str, dict[str, str]] = {name: dict(s.option_help) for name, s in FIELDS.items() if s.option_help}


def caption(field: str, value) -> str:
    """A field's one-line explanation, plus the chosen option's meaning."""
    extra = CHOICE_HELP.get(field, {}).get(value)
    return EXPLAIN[field] + (f" **{value}**: {extra}" if extra else "")
