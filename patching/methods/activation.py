"""Thin specialisations of the engine: which activations each component patches.

| component   | hook                      | one patch per        |
|-------------|---------------------------|----------------------|
| resid_pre   | blocks.L.hook_resid_pre   | layer x position     |
| attn_out    | blocks.L.hook_attn_out    | layer x position     |
| mlp_out     | blocks.L.hook_mlp_out     | layer x position     |
| head        | blocks.L.attn.hook_z      | layer x head (all positions) |
| head_by_pos | blocks.L.attn.hook_z      | layer x head x position |
| head_q      | blocks.L.attn.hook_q      | layer x head (all positions) |
| head_k      | blocks.L.attn.hook_k      | layer x key/value group (all positions) |
| head_v      | blocks.L.attn.hook_v      | layer x key/value group (all positions) |
| head_pattern| blocks.L.attn.hook_pattern| layer x head (the whole [query, key] pattern) |
| head_{q,k,v}_by_pos | as above          | ... x position |
| head_pattern_by_pos | blocks.L.attn.hook_pattern | layer x head x query (destination) position |

The hooks are those TransformerLens's ``transformer_lens.patching`` uses, so results agree
with ``get_act_patch_*`` (``get_act_patch_attn_head_{q,k,v,pattern}_*``
for the new ones) to float precision. On grouped-query models keys and
values exist once per key/value group, so ``head_k``/``head_v`` have one
patch per group (the ``head`` column is the group), as TransformerLens does.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from patching.core.data import Dataset
from patching.core.progress import ProgressFn
from patching.engine.runner import Edit, Patch, _touches, run_patches
from patching.engine.metrics import METRICS, baseline_warnings, baselines, effects, per_prompt
from patching.core.models import LoadedModel
from patching.engine.reference import prepare
from patching.engine.resources import no_graph
from patching.core.spec import HEAD_BY_POS_COMPONENTS, HEAD_COMPONENTS, Spec
from patching.results import Result, run_meta

HOOKS = {
    "resid_pre": "blocks.{l}.hook_resid_pre",
    "attn_out": "blocks.{l}.hook_attn_out",
    "mlp_out": "blocks.{l}.hook_mlp_out",
    "head": "blocks.{l}.attn.hook_z",
    "head_by_pos": "blocks.{l}.attn.hook_z",
    **{f"head_{x}{by}": f"blocks.{{l}}.attn.hook_{x}" for x in ("q", "k", "v", "pattern") for by in ("", "_by_pos")},
}


def heads_of(component: str, n_heads: int, n_kv_heads: int) -> int:
    """The size of a component's head axis: key/value groups for k and v."""
    return n_kv_heads if component.startswith(("head_k", "head_v")) else n_heads


def window_layers(layer: int, window: int, n_layers: int) -> range:
    """Centred window [l - W//2, l + ceil(W/2)), clipped (ROME's convention)."""
    return range(max(0, layer - window // 2), min(n_layers, layer + math.ceil(window / 2)))


@dataclass
class Cell:
    layer: int
    head: int | None
    pos: int | None
    patch: Patch


def cells_for(component: str, n_layers: int, n_heads: int, seq: int, window: int = 1, n_kv_heads: int | None = None) -> list[Cell]:
    hook = HOOKS[component]
    n_heads = heads_of(component, n_heads, n_kv_heads or n_heads)
    cells = []
    for l in range(n_layers):
        if component in ("resid_pre", "attn_out", "mlp_out"):
            for p in range(seq):
                layers = window_layers(l, window, n_layers) if window > 1 else [l]
                cells.append(Cell(l, None, p, tuple(Edit(hook.format(l=j), j, pos=p) for j in layers)))
        elif component in HEAD_COMPONENTS:
            for h in range(n_heads):
                cells.append(Cell(l, h, None, (Edit(hook.format(l=l), l, head=h),)))
        elif component in HEAD_BY_POS_COMPONENTS:
            for h in range(n_heads):
                for p in range(seq):
                    cells.append(Cell(l, h, p, (Edit(hook.format(l=l), l, pos=p, head=h),)))
        else:  # pragma: no cover - validated earlier
            raise ValueError(component)
    return cells


@no_graph()  # no autograd graph, whatever the caller's thread mode (patching/engine/resources.py)
def compute(spec: Spec, lm: LoadedModel, ds: Dataset, progress: ProgressFn | None = None, part: tuple[int, int] | None = None) -> Result:
    """Run one sweep. Every metric is computed from the same patched runs.

    ``part=(k, n)`` runs only the k-th of n equal slices of the cells (an
    executor farms a large sweep so; :func:`patching.results.merge_parts`
    puts the slices back in order). Windowed sweeps run whole."""
    spec = spec.validated()
    t0 = time.time()
    n_layers, n_heads, seq = lm.n_layers, lm.n_heads, ds.seq_len
    n_kv = int(getattr(lm.cfg, "n_key_value_heads", None) or n_heads)
    cells = cells_for(spec.component, n_layers, n_heads, seq, spec.window, n_kv)
    first = 0
    if part is not None:
        assert spec.window == 1, "windowed sweeps are computed whole"
        first, stop = part_bounds(len(cells), *part)
        cells = cells[first:stop]
    singles = cells_for(spec.component, n_layers, n_heads, seq, 1) if spec.window > 1 else []
    hooks = {e.hook for c in cells + singles for e in c.patch}
    prep = prepare(lm, ds, spec.corruption, spec.direction, hooks, spec.noise_scale, spec.noise_samples, spec.seed, spec.mean_set)
    patches = [c.patch for c in cells] + [c.patch for c in singles]
    stats = run_patches(prep.inputs, patches, progress)
    eff = effects(stats, prep.clean, prep.corrupt, spec.direction)
    table = sweep_table(spec, ds, cells, eff, n_layers, bool(singles))
    base = baselines(prep.clean, prep.corrupt, ds.n)
    pp = per_prompt(stats, prep.clean, prep.corrupt, spec.direction, ds.n)
    meta = run_meta(lm, ds, prep.rows, prep.sigma, t0, key_positions=ds.key_positions[0],
                    per_prompt_ref={"ld_clean": pp["ld_clean"].tolist(), "ld_corrupt": pp["ld_corrupt"].tolist()},
                    noop_cells=[first + i for i in noop_cells(cells, prep.inputs.same_prefix, seq)])
    meta["warnings"] += baseline_warnings(prep.clean, prep.corrupt, ds.n)
    if part is not None:
        meta["part"] = list(part)
    return Result(spec=spec, table=table, baselines=base, meta=meta, kind="activation", per_prompt=per_prompt_frame(pp, len(cells), ds.n, first))


def noop_cells(cells: list[Cell], same_prefix: int, seq: int) -> list[int]:
    """Indices of the cells none of whose edits can change anything (the
    engine's own test, :func:`patching.engine.runner._touches`: a plain patch
    before ``same_prefix``, where both runs read the same tokens): zero by
    construction; the table's ``measured`` column is False there."""
    return [i for i, c in enumerate(cells) if not any(_touches(e, same_prefix, seq) for e in c.patch)]


def part_bounds(n_cells: int, k: int, n: int) -> tuple[int, int]:
    """The k-th of n balanced, contiguous slices of ``n_cells`` cells."""
    if not 0 <= k < n:
        raise ValueError(f"part {k} of {n}")
    return k * n_cells // n, (k + 1) * n_cells // n


def sweep_table(spec: Spec, ds: Dataset, cells: list[Cell], eff: dict[str, torch.Tensor], n_layers: int, windowed: bool) -> pd.DataFrame:
    """The tidy table every sweep method returns: one row per cell, one column
    per metric (and, for windows, the single-layer effects and their sum).
    ``eff[m]`` holds the cells' effects, then (``windowed``) the single layers'."""
    seq = ds.seq_len
    rows = []
    n = len(cells)
    for i, c in enumerate(cells):
        rows.append({
            "component": spec.component,
            "layer": c.layer,
            "head": c.head,
            "pos": c.pos,
            "pos_label": ds.position_labels[c.pos] if c.pos is not None else "",
            **{m: float(eff[m][i]) for m in METRICS},
        })
    table = pd.DataFrame(rows)
    if windowed:
        # Summation baseline (Zhang & Nanda §5): the sum of single-layer
        # effects over the same window, to compare with the window's joint effect.
        single = {m: eff[m][n:].reshape(n_layers, seq) for m in METRICS}
        for m in METRICS:
            table[f"sum_{m}"] = [float(sum(single[m][j, c.pos] for j in window_layers(c.layer, spec.window, n_layers))) for c in cells]
            table[f"single_{m}"] = [float(single[m][c.layer, c.pos]) for c in cells]
    for col in ("head", "pos"):
        table[col] = table[col].astype("Int64")
    return table


def per_prompt_frame(pp: dict, n_cells: int, n_prompts: int, first: int = 0) -> pd.DataFrame:
    """The per-prompt values as a compact long table: ``cell`` (row of the
    result's table), ``prompt`` (index into the dataset ``python -m patching
    pairs`` lists), then float32 columns: every metric and ``ld_patched``."""
    cols = {"cell": np.repeat(np.arange(first, first + n_cells, dtype=np.int32), n_prompts),
            "prompt": np.tile(np.arange(n_prompts, dtype=np.int32), n_cells)}
    for m in METRICS + ("ld_patched",):
        cols[m] = pp[m][:n_cells].reshape(-1).float().cpu().numpy().astype(np.float32)
    return pd.DataFrame(cols)
