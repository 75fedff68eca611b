"""The one link codec: data a URL carries inline (custom pairs, hypotheses).

A link carries the data itself, never a file name: the text (or compact
JSON) is zlib-compressed and written in URL-safe base64 without padding.
Decoding is bounded in one place: the encoded length, the inflated size and
the JSON nesting depth, so a crafted link cannot inflate into gigabytes or
recurse the parser to death. Every failure is one PatchboardError naming the
link's field.
"""

from __future__ import annotations

import base64
import binascii
import json
import zlib
from typing import Any

from patching.core.errors import PatchboardError, shown
from patching.core.limits import MAX_ENCODED, MAX_INFLATED, MAX_JSON_DEPTH  # named once, in limits.py


def encode_text(text: str) -> str:
    raw = text.encode("utf-8", "surrogatepass")
    return base64.urlsafe_b64encode(zlib.compress(raw, 9)).decode().rstrip("=")


def decode_text(blob: str, field: str) -> str:
    """The text a link's ``field`` carries (see :func:`encode_text`)."""
    what = field.replace("_", "-")
    bad = PatchboardError(what, f"the link's {what} is not readable (truncated or edited?); copy the link again")
    if not isinstance(blob, str) or len(blob) > MAX_ENCODED:
        raise PatchboardError(what, f"the link's {what} is longer than {MAX_ENCODED} characters (MAX_ENCODED); share fewer items")
    try:
        data = base64.b64decode(blob + "=" * (-len(blob) % 4), altchars=b"-_", validate=True)
        inflater = zlib.decompressobj()
        raw = inflater.decompress(data, MAX_INFLATED)
        if inflater.unconsumed_tail:
            raise PatchboardError(what, f"the link's {what} inflates past {MAX_INFLATED} bytes (MAX_INFLATED); share fewer items")
        if not inflater.eof:
            raise bad
        return raw.decode("utf-8")
    except PatchboardError:
        raise
    except (binascii.Error, zlib.error, ValueError):
        raise bad from None


def encode_json(obj: Any) -> str:
    return encode_text(json.dumps(obj, separators=(",", ":"), ensure_ascii=False))


class DuplicateKey(ValueError):
    """A JSON object names one key twice (which value counts is ambiguous)."""


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads``' object hook that refuses a key given twice: two readers
    of one text must never see different values."""
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise DuplicateKey(f"the key {shown(dup, 40)} appears twice in one object")
    return out


def loads_bounded(text: str, field: str) -> Any:
    """json.loads with the nesting depth bounded before parsing; a key given
    twice in one object is refused."""
    what = field.replace("_", "-")
    if json_depth(text) > MAX_JSON_DEPTH:
        raise PatchboardError(what, f"nested deeper than {MAX_JSON_DEPTH} levels (MAX_JSON_DEPTH); flatten it")
    try:
        return json.loads(text, object_pairs_hook=unique_keys)
    except DuplicateKey as e:
        raise PatchboardError(what, f"not valid JSON ({e}); keep one") from None
    except (json.JSONDecodeError, RecursionError, ValueError) as e:
        raise PatchboardError(what, f"not valid JSON ({str(e).splitlines()[0][:80]})") from None


def json_depth(text: str) -> int:
    """Deepest bracket nesting of a JSON text (strings skipped), in one pass."""
    depth = best = 0
    in_str = esc = False
    for ch in text:
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            best = max(best, depth)
        elif ch in "]}":
            depth -= 1
    return best


# ---------------------------------------------------------------- hypotheses (pairs: patching.core.pairs)


def encode_hypothesis(text: dict | str) -> str:
    """A hypothesis inline in a link: its text exactly as typed (even when it
    does not parse yet), or a dict's compact JSON."""
    return encode_json(text) if isinstance(text, dict) else encode_text(str(text))


def decode_hypothesis(blob: str) -> str:
    return decode_text(blob, "hypothesis")
