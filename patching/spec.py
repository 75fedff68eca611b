"""The one typed spec that flows from widgets to URL to cache key to engine to
stored result.

Field names are the CLI flags with underscores (``n_pairs`` <-> ``--n-pairs``
<-> ``?n-pairs=``), so a URL query string, a CLI command line and a stored
result's spec are three spellings of the same object.
"""

from __future__ import annotations

import base64
import hashlib
import json
import zlib
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Mapping

from .data import PAIR_COLUMNS, Pair, parse_positions
from .errors import PatchboardError

ENGINE_VERSION = "1"

TASKS = ("ioi", "facts", "greater_than", "induction")
CORRUPTIONS = ("str", "gn")
METRICS = ("logit_diff", "prob", "logprob", "kl")
DIRECTIONS = ("denoise", "noise")
COMPONENTS = ("resid_pre", "attn_out", "mlp_out", "head", "head_by_pos")
WINDOW_COMPONENTS = ("attn_out", "mlp_out")
IOI_CORRUPT = ("s2", "s1_io", "abc")
MAX_PAIRS = 512
MAX_NOISE_SAMPLES = 64
MAX_WINDOW = 32

# The metric is not part of what is computed: one sweep yields every metric.
_NOT_COMPUTED = ("metric",)


@dataclass(frozen=True)
class Spec:
    model: str = "smollm2-135m"
    task: str | None = "ioi"
    pairs: tuple[Pair, ...] | None = None  # custom pairs (content, never a path)
    n_pairs: int = 8
    seed: int = 0
    corruption: str = "str"
    metric: str = "logit_diff"
    direction: str = "denoise"
    component: str = "head"
    window: int = 1
    noise_scale: float = 3.0
    noise_samples: int = 10
    key_positions: tuple[int, ...] | None = None
    ioi_corrupt: str = "s2"

    # ------------------------------------------------------------ validation

    def validated(self) -> "Spec":
        """Check every field and return the canonical spec: fields that do not
        affect the computation are reset to their defaults, so equal
        computations hash equally."""
        if not self.model or not str(self.model).strip():
            raise PatchboardError("model", "empty; use smollm2-135m or a hub id / local folder")
        _choice("corruption", self.corruption, CORRUPTIONS)
        _choice("metric", self.metric, METRICS)
        _choice("direction", self.direction, DIRECTIONS)
        _choice("component", self.component, COMPONENTS)
        if self.pairs is None and self.task is None:
            raise PatchboardError("task", f"give a task ({', '.join(TASKS)}) or custom pairs")
        if self.pairs is not None and self.task is not None:
            raise PatchboardError("pairs", "give either a task or custom pairs, not both")
        if self.task is not None:
            _choice("task", self.task, TASKS)
        _int_range("n-pairs", self.n_pairs, 1, MAX_PAIRS)
        _int_range("seed", self.seed, 0, 2**31 - 1)
        _int_range("window", self.window, 1, MAX_WINDOW)
        if self.window > 1 and self.component not in WINDOW_COMPONENTS:
            raise PatchboardError("window", f"sliding windows apply to {' and '.join(WINDOW_COMPONENTS)}; set window=1 or pick one of those components")
        if not isinstance(self.noise_scale, (int, float)) or not (0 < float(self.noise_scale) <= 100):
            raise PatchboardError("noise-scale", f"{self.noise_scale!r} must be a number in (0, 100]; the papers use 3")
        _int_range("noise-samples", self.noise_samples, 1, MAX_NOISE_SAMPLES)
        _choice("ioi-corrupt", self.ioi_corrupt, IOI_CORRUPT)
        s = self
        if s.corruption == "str":
            s = replace(s, noise_scale=3.0, noise_samples=10)
        else:
            s = replace(s, noise_scale=float(s.noise_scale))
        if s.task != "ioi":
            s = replace(s, ioi_corrupt="s2")
        if s.pairs is not None:
            s = replace(s, n_pairs=len(s.pairs), seed=0 if s.corruption == "str" else s.seed)
        elif s.key_positions is not None:
            raise PatchboardError("key-positions", "key positions are set by the task; use them with custom pairs only")
        return s

    # ------------------------------------------------------------ identity

    def compute_dict(self) -> dict[str, Any]:
        d = self.to_dict()
        for k in _NOT_COMPUTED:
            d.pop(k)
        return d

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["pairs"] = [p.to_row() | ({"key_positions": list(p.key_positions)} if p.key_positions else {}) for p in self.pairs] if self.pairs is not None else None
        d["key_positions"] = list(self.key_positions) if self.key_positions is not None else None
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Spec":
        known = {f.name for f in fields(cls)}
        unknown = [k for k in d if k not in known]
        if unknown:
            raise PatchboardError(unknown[0].replace("_", "-"), "unknown setting; remove it")
        d = dict(d)
        if d.get("pairs") is not None:
            d["pairs"] = _pairs_from_rows(d["pairs"])
        if d.get("key_positions") is not None:
            d["key_positions"] = parse_positions(d["key_positions"])
        return cls(**d)

    def cache_key(self, model_fingerprint: str) -> str:
        """Canonical hash of what is computed, the weights and the engine."""
        payload = json.dumps(
            {"spec": self.validated().compute_dict(), "model": model_fingerprint, "engine": ENGINE_VERSION},
            sort_keys=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(payload.encode()).hexdigest()

    def label(self) -> str:
        """Short human summary for lists and chart titles."""
        data = self.task if self.task else f"{len(self.pairs or ())} custom pair(s)"
        extra = f" ({self.ioi_corrupt})" if self.task == "ioi" else ""
        win = f", window {self.window}" if self.window > 1 else ""
        gn = f" ×{self.noise_scale:g}σ, {self.noise_samples} samples" if self.corruption == "gn" else ""
        return f"{self.model} · {data}{extra} · n={self.n_pairs} · {self.corruption}{gn} · {self.direction} · {self.component}{win}"

    # ------------------------------------------------------------ URL / CLI

    def to_query(self) -> dict[str, str]:
        """URL query parameters (CLI flag names without dashes); defaults are
        written too, so a link pins the exact view even if defaults change."""
        q: dict[str, str] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            key = f.name.replace("_", "-")
            if f.name == "pairs":
                if v is not None:
                    q[key] = encode_pairs(v)
                continue
            if f.name == "task":
                if v is not None:
                    q[key] = v
                continue
            if v is None:
                continue
            if f.name == "key_positions":
                q[key] = ",".join(map(str, v))
            elif isinstance(v, float):
                q[key] = f"{v:g}"
            else:
                q[key] = str(v)
        return q

    @classmethod
    def from_query(cls, params: Mapping[str, Any]) -> "Spec":
        """Parse a URL query (values may be lists, as some frameworks give).
        Raises PatchboardError naming the first bad parameter."""
        d: dict[str, Any] = {}
        types = {f.name: f.type for f in fields(cls)}
        for raw_key, raw in params.items():
            key = str(raw_key).replace("-", "_")
            if isinstance(raw, (list, tuple)):
                raw = raw[-1] if raw else ""
            val = str(raw)
            if key not in types:
                continue  # other pages' parameters (e.g. view options) live beside the spec
            if key in ("n_pairs", "seed", "window", "noise_samples"):
                try:
                    d[key] = int(val)
                except ValueError:
                    raise PatchboardError(raw_key, f"{val!r} is not a whole number") from None
            elif key == "noise_scale":
                try:
                    d[key] = float(val)
                except ValueError:
                    raise PatchboardError(raw_key, f"{val!r} is not a number") from None
            elif key == "pairs":
                d[key] = decode_pairs(val)
            elif key == "key_positions":
                d[key] = parse_positions(val) if val else None
            else:
                d[key] = val
        if "pairs" in d and "task" not in d:
            d["task"] = None
        return cls(**d).validated()

    def to_cli(self) -> str:
        """The command line that reproduces this spec's numbers."""
        parts = ["python -m patching run"]
        for k, v in self.to_query().items():
            if k == "pairs":
                parts.append("--pairs pairs.jsonl")
                continue
            parts.append(f"--{k} {v}")
        return " ".join(parts)

    def with_(self, **changes) -> "Spec":
        return replace(self, **changes)


# ---------------------------------------------------------------- helpers


def _choice(field_name: str, value: Any, options: tuple[str, ...]) -> None:
    if value not in options:
        raise PatchboardError(field_name.replace("_", "-"), f"{value!r} is not one of {', '.join(options)}")


def _int_range(field_name: str, value: Any, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise PatchboardError(field_name, f"{value!r} must be a whole number from {lo} to {hi}")


def _pairs_from_rows(rows: Any) -> tuple[Pair, ...]:
    if not isinstance(rows, (list, tuple)) or not rows:
        raise PatchboardError("pairs", "expected a non-empty list of {clean, corrupt, answer, counter_answer}")
    out = []
    for i, r in enumerate(rows, 1):
        if isinstance(r, Pair):
            out.append(r)
            continue
        if not isinstance(r, dict) or any(c not in r or not isinstance(r[c], str) for c in PAIR_COLUMNS):
            raise PatchboardError("pairs", f"row {i} needs the string fields {', '.join(PAIR_COLUMNS)}")
        kp = r.get("key_positions")
        out.append(Pair(*(r[c] for c in PAIR_COLUMNS), key_positions=parse_positions(kp) if kp else None))
    return tuple(out)


def encode_pairs(pairs: tuple[Pair, ...]) -> str:
    """Pairs inline in a URL: zlib-compressed JSON in URL-safe base64. The link
    carries the data itself, so it never names a file on the server."""
    rows = [p.to_row() | ({"key_positions": list(p.key_positions)} if p.key_positions else {}) for p in pairs]
    raw = json.dumps(rows, separators=(",", ":"), ensure_ascii=False).encode()
    return base64.urlsafe_b64encode(zlib.compress(raw, 9)).decode().rstrip("=")


def decode_pairs(text: str) -> tuple[Pair, ...]:
    try:
        # Bounded decompression: a crafted link cannot inflate into gigabytes.
        inflater = zlib.decompressobj()
        raw = inflater.decompress(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)), 1 << 20)
        if inflater.unconsumed_tail:
            raise ValueError("too large")
        rows = json.loads(raw)
    except Exception:
        raise PatchboardError("pairs", "the link's pairs are not readable (truncated or edited?); copy the link again") from None
    return _pairs_from_rows(rows)
