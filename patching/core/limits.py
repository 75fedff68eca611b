"""Every size Patchboard accepts from a user, named once.

Each limit is checked *before* anything of that size is allocated or
computed (a range before it is materialised, a file's size and type before it
is read, JSON's depth before it is parsed), and a refusal is one
:class:`~patching.core.errors.PatchboardError` naming the field and the limit.
docs/command-line.md ("Limits on input") lists them; ``MAX_PROMPT_TOKENS`` is the one a
server sets (``PATCHBOARD_MAX_PROMPT_TOKENS``).

Also here: :func:`read_user_file`, the one way the CLI reads a file a user
names (regular files only, size bounded, UTF-8, no binary).
"""

from __future__ import annotations

import os
import stat

from patching.core.errors import PatchboardError

#: Prompt pairs per dataset, for a task's draw and for custom pairs alike.
MAX_PAIRS = 512
#: Digits in any integer a user writes (a link, a flag, a file): Python's own
#: limit (4,300) is far above any real value and refuses with a non-project error.
MAX_INT_DIGITS = 18
#: Characters of one prompt or answer (checked before tokenizing).
MAX_PROMPT_CHARS = 4_000
#: Default token length of a prompt (BOS included); a server may lower or
#: raise it with ``PATCHBOARD_MAX_PROMPT_TOKENS``.
DEFAULT_MAX_PROMPT_TOKENS = 512
#: Items in one position list (key positions, sender positions, entry positions).
MAX_POSITIONS = 1_024
#: Comma items in one receivers/senders list.
MAX_LIST_ITEMS = 1_024
#: Bytes of a file the CLI reads (pairs, hypothesis).
MAX_FILE_BYTES = 8 << 20
#: Characters of a pasted or uploaded pairs text / hypothesis text in the app.
MAX_TEXT_CHARS = 2 << 20
#: Deepest JSON nesting accepted from a link, a file or a paste.
MAX_JSON_DEPTH = 32
#: Longest encoded value a link's ``pairs``/``hypothesis`` may carry (characters).
MAX_ENCODED = 512 * 1024
#: Largest inflated link payload (bytes).
MAX_INFLATED = 1 << 20
#: Longest whole link query (characters; every parameter together).
MAX_LINK_CHARS = 600 * 1024
#: Longest plain (not encoded) link parameter, e.g. ``receivers`` or ``model``.
MAX_PARAM_CHARS = 4_096
#: Values (scalars, lists, objects) in one parsed hypothesis; YAML anchors and
#: aliases are refused outright, so the text's size bounds the work too.
MAX_NODES = 100_000
#: Resolved edges of one hypothesis (and items of one circuit's text).
MAX_EDGES = 200_000
#: Bytes of one circuit graph file (EAP-IG / MIB graph JSON: about 60 bytes
#: per edge, 7.4 MB for the embedded model's 123,211 ungrouped edges).
MAX_GRAPH_BYTES = 32 << 20


def max_prompt_tokens() -> int:
    """The server's prompt-length limit in tokens (BOS included)."""
    raw = os.environ.get("PATCHBOARD_MAX_PROMPT_TOKENS", "")
    if raw.strip().isdigit() and len(raw.strip()) <= 7 and int(raw) > 0:
        return int(raw)
    return DEFAULT_MAX_PROMPT_TOKENS


def check_int_text(text: str, field: str) -> int:
    """A user's integer text -> int, refusing over-long digit strings first."""
    t = text.strip()
    body = t[1:] if t[:1] in "+-" else t
    if not body or len(body) > MAX_INT_DIGITS or not (body.isascii() and body.isdigit()):
        shown = t if len(t) <= 40 else t[:40] + "…"
        raise PatchboardError(field, f"{shown!r} is not a whole number of at most {MAX_INT_DIGITS} digits (MAX_INT_DIGITS)")
    return int(t)


def check_text(value: str, field: str, limit: int = MAX_PROMPT_CHARS, what: str = "text", name: str = "MAX_PROMPT_CHARS") -> str:
    """A user's string: at most ``limit`` characters and valid Unicode (a lone
    surrogate cannot be stored, encoded into a link or tokenized)."""
    if len(value) > limit:
        raise PatchboardError(field, f"the {what} is {len(value)} characters; the limit is {limit} ({name}); shorten it")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise PatchboardError(field, f"the {what} contains an unpaired surrogate (invalid Unicode, e.g. a \\ud800 escape); remove it") from None
    return value


def bounded_items(items, field: str) -> list[str]:
    """A list's items as stripped strings, at most MAX_LIST_ITEMS of at most
    MAX_PARAM_CHARS characters (checked before anything is parsed)."""
    if len(items) > MAX_LIST_ITEMS:
        raise PatchboardError(field, f"{len(items)} items; the limit is {MAX_LIST_ITEMS} (MAX_LIST_ITEMS); use ranges such as 0-5.* instead")
    out = []
    for s in items:
        t = str(s).strip()
        if len(t) > MAX_PARAM_CHARS:
            raise PatchboardError(field, f"an item of {len(t)} characters; the limit is {MAX_PARAM_CHARS} (MAX_PARAM_CHARS)")
        if t:
            out.append(t)
    return out


def read_user_file(path: str, field: str, limit: int = MAX_FILE_BYTES) -> str:
    """A file named by a CLI user, as text: a regular file (no FIFO, device,
    folder), at most ``limit`` bytes, UTF-8, not binary. Checked by ``stat``
    before opening, and the read itself stops at ``limit + 1`` bytes."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise PatchboardError(field, f"cannot read {path!r} ({e.strerror}); check the path") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file (a pipe, device or socket)"
        raise PatchboardError(field, f"{path!r} is {kind}; give a regular file")
    if st.st_size > limit:
        raise PatchboardError(field, f"{path!r} is {st.st_size} bytes; the limit is {limit} bytes (MAX_FILE_BYTES); split it")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped after the stat
                raise PatchboardError(field, f"{path!r} is not a regular file; give a regular file")
            with os.fdopen(fd, "rb", closefd=False) as f:
                data = f.read(limit + 1)
        finally:
            os.close(fd)
    except OSError as e:
        raise PatchboardError(field, f"cannot read {path!r} ({e.strerror}); check the path") from None
    if len(data) > limit:
        raise PatchboardError(field, f"{path!r} is over {limit} bytes (MAX_FILE_BYTES); split it")
    if b"\x00" in data:
        raise PatchboardError(field, f"{path!r} is a binary file (it contains NUL bytes); give a UTF-8 text file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise PatchboardError(field, f"{path!r} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None
