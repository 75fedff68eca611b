"""One result shape for every method.

A result is the spec, the request it answers (``request``, set by the
service: a :mod:`patching.requests` object, so a page draws and links a
result without rebuilding its request; ``params`` are that request's own
parameters: receivers and senders of a path sweep, the hypothesis of an
evaluation), a tidy table (a row per component, a column per value), the
baselines and a meta dict. The store keeps the spec, table, baselines and
meta; the pages, the CLI and the tests read them the same way whatever the
method.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from patching.core.spec import Spec


#: The column of an activation sweep's tidy table that says whether a cell is a
#: measurement (False: a no-op patch, confined to the prefix both prompts share,
#: so its effect is zero by construction). Read it through
#: :func:`patching.analysis.measurement.measured`, the one definition.
MEASURED = "measured"

#: Methods whose value estimates a magnitude, not a signed effect: AtP*'s
#: GradDrop estimates |effect| (Kramár et al. 2024); the sign stored beside it
#: is plain AtP's, noise exactly where GradDrop matters. They are shown and
#: exported as an unsigned ranking (``|value|``) and kept out of sign statistics.
UNSIGNED_METHODS = ("atp_star",)


@dataclass
class Result:
    spec: Spec
    table: pd.DataFrame
    baselines: dict[str, float]
    meta: dict[str, Any] = field(default_factory=dict)
    from_store: bool = False
    kind: str = "activation"
    params: dict[str, Any] = field(default_factory=dict)
    key: str = ""  # the store key (set by the service)
    #: Per-prompt values behind the means (activation sweeps): a long table
    #: cell, prompt, <metric>..., ld_patched (see ``methods.activation``).
    per_prompt: pd.DataFrame | None = None
    #: The request this result answers, canonical (set by the service).
    request: Any = None
    #: Where it came from (:mod:`patching.store`): ``origin`` "computed" or
    #: "imported" (None: stored before provenance was recorded), and for an
    #: import the bundle, when, and the weights it was computed on.
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def imported(self) -> bool:
        return self.provenance.get("origin") == "imported"

    def __post_init__(self) -> None:
        # Rows stored before the column existed carry the no-op cells in meta only
        # (path sweeps: the senders whose write difference is exactly zero, patching/methods/paths.py).
        if self.kind in ("activation", "paths") and isinstance(self.table, pd.DataFrame) and MEASURED not in self.table.columns:
            self.table = with_measured(self.table, self.meta.get("noop_cells") or ())

    def values(self, metric: str | None = None) -> pd.Series:
        return self.table[metric or self.spec.metric]

    @property
    def unsigned(self) -> bool:
        """Whether the values are magnitudes (:data:`UNSIGNED_METHODS`)."""
        return self.kind == "activation" and getattr(self.spec, "method", "exact") in UNSIGNED_METHODS

    def export_table(self, metric: str | None = None) -> pd.DataFrame:
        """The CLI/CSV shape: component,layer,head,pos,value then every metric.
        An unsigned method's (AtP*'s) is an unsigned ranking: ``|value|`` and
        every metric as ``|metric|``, absolute values."""
        t = self.table.copy()
        t.insert(4, "value", t[metric or self.spec.metric])
        if self.unsigned:
            from patching.core.spec import METRICS

            cols = [c for c in ["value", *METRICS] if c in t.columns]
            t[cols] = t[cols].abs()
            t = t.rename(columns={c: f"|{c}|" for c in cols})
        return t

    # ------------------------------------------------------------ paths

    @property
    def receivers(self) -> str:
        return self.params.get("receivers", "")

    # ------------------------------------------------------------ hypotheses

    @property
    def hypothesis(self) -> dict:
        return self.meta.get("hypothesis") or self.params.get("hypothesis") or {}

    def row(self, delta: str = "kl") -> dict:
        """A hypothesis evaluation's AUE/ATE/proportion explained for δ."""
        return self.table.set_index("delta").loc[delta].to_dict()


def with_measured(table: pd.DataFrame, noop_cells: Any) -> pd.DataFrame:
    """``table`` with the :data:`MEASURED` column: False at the rows (by
    position) listed in ``noop_cells``, True elsewhere."""
    out = table.copy()
    flag = [True] * len(out)
    for i in noop_cells:
        if 0 <= int(i) < len(flag):
            flag[int(i)] = False
    out[MEASURED] = pd.Series(flag, index=out.index, dtype=bool)
    return out


def table_records(df: pd.DataFrame) -> list[dict[str, Any]]:
    """A table as JSON-ready records with every float exact (Python's
    shortest round-trip repr; pandas' JSON writer keeps only 15 digits);
    missing values become None."""
    out = []
    for row in df.astype(object).to_dict("records"):
        out.append({k: (None if v is None or (isinstance(v, float) and v != v) or v is pd.NA else v) for k, v in row.items()})
    return out


def prompt_id(clean: str, answer: str) -> str:
    """A prompt's identity: a hash of its clean text and its answer."""
    import hashlib

    return hashlib.sha256(f"{clean}\x1f{answer}".encode("utf-8")).hexdigest()[:16]


def run_meta(lm, ds, rows: int, sigma: float | None, t0: float, **extra: Any) -> dict[str, Any]:
    """What every result records about its run: the dataset's shape and
    tokens, the model, the noise scale and the compute time (``extra`` adds a
    method's own entries)."""
    import time

    cfg = lm.cfg
    meta = {
        "n_pairs": ds.n,
        "rows": rows,
        "seq_len": ds.seq_len,
        "n_layers": int(cfg.n_layers),
        "n_heads": int(cfg.n_heads),
        "position_labels": ds.position_labels,
        "clean_tokens": ds.clean_strs,
        "corrupt_tokens": ds.corrupt_strs,
        "sigma": sigma,
        "compute_seconds": round(time.time() - t0, 3),
        "warnings": list(ds.warnings),
        # Each prompt's identity, in the per-prompt values' order: settings are paired by prompt, not by count.
        "prompt_ids": [prompt_id(p.clean, p.answer) for p in ds.pairs],
        "prompt_texts": [p.clean[:80] for p in ds.pairs],
        "model": lm.name,
        "model_fingerprint": lm.fingerprint,
    }
    meta.update(extra)
    return meta


def merge_parts(parts: list["Result"], seconds: float | None = None) -> "Result":
    """One sweep from its slices of cells (``activation.compute(part=...)``),
    in order: the tables and per-prompt values concatenated, the baselines and
    the rest of the record from the first slice (every slice computes the same
    reference runs). ``seconds``: the wall time of the whole sweep."""
    import pandas as pd

    first = parts[0]
    for p in parts[1:]:
        if p.baselines != first.baselines:
            raise ValueError("the slices of one sweep disagree on their reference runs")
    table = pd.concat([p.table for p in parts], ignore_index=True)
    pp = None if any(p.per_prompt is None for p in parts) else pd.concat([p.per_prompt for p in parts], ignore_index=True)
    meta = dict(first.meta)
    meta.pop("part", None)
    meta["noop_cells"] = [c for p in parts for c in p.meta.get("noop_cells", [])]
    meta["compute_seconds"] = round(seconds if seconds is not None else max(p.meta["compute_seconds"] for p in parts), 3)
    return Result(spec=first.spec, table=table, baselines=dict(first.baselines), meta=meta, kind=first.kind, per_prompt=pp)
