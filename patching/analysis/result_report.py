"""What the Patch page shows about one stored result, computed once before
anything is drawn (no streamlit): the table with the 2-SD rule's columns and
the bootstrap intervals, the rule's thresholds and counts, the positions in
prompt order, the strongest components as the page lists them, and the
defaults of its views (the strongest cell; a window's position).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from patching.analysis.detection import top_components, with_detection

#: How many of the strongest components the page lists.
N_TOP = 15


@dataclass
class ResultReport:
    metric: str
    table: pd.DataFrame  # the result's table with label, value, z, detected (+ value_lo, value_hi, detect_stability)
    thresholds: dict  # the 2-SD rule's mean, sd, lower, upper
    intervals: pd.DataFrame | None  # per component: bootstrap interval and detection stability
    top: pd.DataFrame  # the N_TOP strongest components (top_components)
    pos_order: list[str] | None  # position labels in prompt order; None without positions
    unsigned: bool = False  # values are magnitudes (AtP*: |effect|), shown as an unsigned ranking

    @property
    def n_measured(self) -> int:
        """Cells that are measurements (the 2-SD rule's population)."""
        return int(self.table["measured"].sum())

    @property
    def n_unmeasured(self) -> int:
        """Cells that are zero by construction (drawn grey, never detected)."""
        return int((~self.table["measured"]).sum())

    @property
    def n_positive(self) -> int:
        return int((self.table["detected"] == "positive").sum())

    @property
    def n_negative(self) -> int:
        return int((self.table["detected"] == "negative").sum())

    @property
    def detects(self) -> bool:
        """Whether the rule has a band at all (not every effect the same)."""
        sd = self.thresholds.get("sd")
        return bool(sd) and sd == sd

    def strongest(self) -> pd.Series:
        """The cell with the largest |effect| (the first one when none is finite)."""
        t = self.table
        return t.loc[t["value"].abs().idxmax()] if t["value"].notna().any() else t.iloc[0]

    def heads(self) -> list[int]:
        return sorted(int(h) for h in self.table["head"].dropna().unique())

    def position_labels(self) -> dict[int, str]:
        """Position -> its token label."""
        return {int(p): lab for p, lab in zip(self.table["pos"], self.table["pos_label"])}

    def window_position(self, key_positions: Any = None) -> int:
        """Where a window's line chart opens: the last key position, else the
        position of the largest |effect|."""
        labels = self.position_labels()
        kp = [p for p in (key_positions or []) if p in labels]
        return kp[-1] if kp else int(self.table.groupby("pos")["value"].apply(lambda v: v.abs().max()).idxmax())

    def top_table(self) -> pd.DataFrame:
        """The strongest components under the page's column names: the metric,
        token (spaces as '·'), component, 95% from/to, detected (✔ and sign)."""
        top = self.top.rename(columns={"value": f"|{self.metric}|" if self.unsigned else self.metric, "pos_label": "token", "label": "component", "value_lo": "95% from",
                                       "value_hi": "95% to", "detect_stability": "detected in"})
        if "token" in top.columns:
            top["token"] = top["token"].map(lambda s: str(s).replace(" ", "·"))
        top["detected"] = top["detected"].replace({"positive": "✔ positive", "negative": "✔ negative"})
        return top


def result_report(table: pd.DataFrame, metric: str, intervals: pd.DataFrame | None = None, unsigned: bool = False) -> ResultReport:
    """The report of a result's ``table`` on ``metric``; ``intervals`` from
    :func:`patching.analysis.uncertainty.result_intervals` (None without
    per-prompt values). ``unsigned`` (``Result.unsigned``: AtP*) ranks |value|:
    no sign is shown or detected."""
    if unsigned:
        table = table.assign(**{metric: pd.to_numeric(table[metric], errors="coerce").abs()})
    t, thresholds = with_detection(table, metric)
    if intervals is not None:
        t = t.join(intervals[["value_lo", "value_hi", "detect_stability"]])
    pos_order = list(dict.fromkeys(t.sort_values("pos")["pos_label"])) if t["pos"].notna().any() else None
    return ResultReport(metric=metric, table=t, thresholds=thresholds, intervals=intervals, top=top_components(t, N_TOP), pos_order=pos_order,
                        unsigned=unsigned)
