"""Who may do what on this server: read-only mode, shared mode, and whose
results are whose (docs/serving.md says how to serve a room).

* **Read-only** (``PATCHBOARD_READ_ONLY=1``): stored results only. No
  computation (no model is ever loaded), no import, no delete: every such
  button is replaced by a line saying so, and the runtime refuses them too
  (:func:`refuse`). Downloads of what is shown stay. The command line is
  unaffected (it never reads this setting).
* **Shared** (``PATCHBOARD_SHARED=1``; on by itself when the server listens
  beyond this machine or ``st.login`` is configured; ``PATCHBOARD_SHARED=0``
  turns it off): results carry the user or browser session that made them
  (``patching.store``'s ``owner``), and the Library offers deletes and bundle
  exports only of one's own results (and of the server's: the demo, the
  command line's); other people's results on their own prompts are not listed.
* :func:`identity`: the signed-in user (``st.user``, where ``st.login`` is
  configured), else an id for this browser session (a reload is a new session).
"""

from __future__ import annotations

import os
import secrets

import streamlit as st

__all__ = ["read_only", "shared", "identity", "refuse", "read_only_note", "may_delete", "may_export", "may_list", "owner_label"]

_TRUE = ("1", "true", "yes", "on")
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _flag(name: str) -> bool | None:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return None
    return raw in _TRUE


def read_only() -> bool:
    """``PATCHBOARD_READ_ONLY``: stored results only (no compute, import or delete)."""
    return bool(_flag("PATCHBOARD_READ_ONLY"))


def _auth_configured() -> bool:
    try:
        return "auth" in st.secrets
    except Exception:  # noqa: BLE001 - no secrets file at all
        return False


def shared() -> bool:
    """Whether several people use this server (see the module's docstring)."""
    flag = _flag("PATCHBOARD_SHARED")
    if flag is not None:
        return flag
    try:
        address = (st.get_option("server.address") or "").strip()
    except Exception:  # noqa: BLE001 - outside a Streamlit server
        address = ""
    return address not in _LOOPBACK or _auth_configured()


def identity() -> str:
    """Who this browser session is: ``user:<email or subject>`` when signed
    in through ``st.login``, else ``session:<random id>`` for this session."""
    try:
        user = st.user
        if user.get("is_logged_in"):
            who = user.get("email") or user.get("sub")
            if who:
                return f"user:{str(who)[:200]}"
    except Exception:  # noqa: BLE001 - no auth configured
        pass
    return st.session_state.setdefault("pb_owner", f"session:{secrets.token_hex(8)}")


def may_delete(owner: str | None) -> bool:
    """A stored row may be deleted here: never in read-only mode; in shared
    mode only one's own (the server's rows are not anyone's to delete)."""
    if read_only():
        return False
    return not shared() or owner == identity()


def may_export(owner: str | None) -> bool:
    """A stored row may go into a bundle from here: in shared mode one's own
    and the server's (no owner: the demo, the command line)."""
    return not shared() or owner is None or owner == identity()


def may_list(owner: str | None, custom_pairs: bool) -> bool:
    """A stored row is listed in the Library: in shared mode, other people's
    results on their own prompts are not."""
    return not shared() or owner is None or owner == identity() or not custom_pairs


def owner_label(owner: str | None) -> str:
    if owner is None:
        return "server"
    return "you" if owner == identity() else "someone else"


def read_only_note(what: str = "Computing") -> None:
    """The line that stands where a compute, import or delete button would be."""
    st.info(f"{what} is switched off: this server is read-only (PATCHBOARD_READ_ONLY) and shows stored results only. "
            "The command line below computes it on your own machine.", icon=":material/lock:")


def refuse(what: str = "Computing") -> bool:
    """True (and the note shown) when read-only mode forbids ``what``; the
    runtime asks before any computation, import or delete, whatever a page drew."""
    if read_only():
        read_only_note(what)
        return True
    return False
