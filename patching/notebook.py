"""Notebook export: a Jupyter notebook that reproduces a view's numbers.

:func:`notebook_for` writes a notebook (``nbformat`` v4) whose cells rebuild
the view's request from its spec (the same query the link carries), run it
through the library's one entry point (``patching.service.run``: read from the
store when stored, computed otherwise), print the tidy table and draw the same
chart as the page (``ui/charts.py``, Altair only). Run it from the repository
root (``jupyter lab`` there), with the same ``PATCHBOARD_CACHE_DIR`` to read
the stored numbers. Every string from a link enters the code as a Python
literal (``repr``), never as code.
"""

from __future__ import annotations

import json
from typing import Any

from patching.core.markdown import code_block, md_plain
from patching.core.spec import Spec

_SETUP = """\
import os, sys
sys.path.insert(0, os.path.abspath("."))  # run from the repository root
import pandas as pd
from patching import service
from patching.core.spec import Spec
"""


def notebook_for(request: Any, title: str = "Patchboard view") -> "Any":
    """The notebook for a request of :mod:`patching.service` (a ``Spec``, a
    ``PathSweep``, a ``HypothesisEval``, a ``CircuitEval`` or a ``CircuitCurve``)."""
    import nbformat.v4 as nbf

    from patching import service

    req = service.as_request(request)
    spec: Spec = req.spec.validated()
    query = spec.to_query()
    # Markdown from a link (a model name, a hypothesis) is plain text here: the
    # title escaped, the command line in a fence nothing inside it can close.
    cells = [nbf.new_markdown_cell(
        f"# {md_plain(title, 200)}\n\nReproduces the numbers of this Patchboard view with the library's Python API "
        f"(`patching.service.run`: read from the store when stored, else computed).\n\n"
        f"Command line:\n\n{code_block(_command_line(req, spec), 'bash')}")]
    cells.append(nbf.new_code_cell(_SETUP))
    code = f"spec = Spec.from_query({json.dumps(query, indent=1, ensure_ascii=False)})\n"
    if isinstance(req, service.PathSweep):
        # The parameters that change what is computed, as the declaration keys them.
        args = "".join(f", {name}={value!r}" for name, value in ({"receivers": req.receivers} | req.params()).items())
        code += f"request = service.PathSweep(spec{args})\n"
    elif isinstance(req, service.HypothesisEval):
        text = req.text()
        text = text if isinstance(text, str) else json.dumps(text, ensure_ascii=False)
        code += f"hypothesis = {text!r}\nrequest = service.HypothesisEval(spec, hypothesis)\n"
    elif isinstance(req, service.CircuitEval):
        code += f"edges = {str(req.edges)!r}\nrequest = service.CircuitEval(spec, edges)\n"
    elif isinstance(req, service.CircuitCurve):
        args = "".join(f", {name}={value!r}" for name, value in req.params().items())
        code += f"request = service.CircuitCurve(spec{args})\n"
    else:
        code += "request = spec\n"
    code += "res = service.run(request)\nprint('from the store' if res.from_store else 'computed and stored', res.key[:12])\nres.baselines"
    cells.append(nbf.new_code_cell(code))
    cells.append(nbf.new_code_cell("table = res.table\ntable" if req.kind.startswith("circuit") else "table = res.export_table()\ntable"))
    cells.append(nbf.new_code_cell(_chart_code(req, spec)))
    nb = nbf.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def notebook_json(request: Any, title: str = "Patchboard view") -> str:
    import nbformat

    return nbformat.writes(notebook_for(request, title))


def _command(req) -> str:
    from patching import service

    return {"paths": "paths", "hypothesis": "hypothesis", "circuit": "circuit eval", "circuit_curve": "circuit curve"}.get(req.kind, "run")


def _command_line(req, spec: Spec) -> str:
    """The command that reproduces the numbers: the spec's flags the
    subcommand takes, then the request's own."""
    import shlex

    from patching.core.spec import FIELDS

    extra = [shlex.quote(a) for a in req.cli_args()] if hasattr(req, "cli_args") else []
    return spec.to_cli(_command(req), extra=extra, only=tuple(f for f in FIELDS if f not in req.spec_unused))


def _chart_code(req, spec: Spec) -> str:
    from patching import service

    if isinstance(req, service.HypothesisEval):
        return "res.table  # AUE, ATE and proportion explained for every δ"
    if isinstance(req, service.CircuitEval):
        return ("from patching.analysis.circuit_curve import circuit_interval\n\n"
                "print('faithfulness', res.table['logit_diff'].iloc[0], '95% interval', circuit_interval(res.per_prompt, res.meta))")
    if isinstance(req, service.CircuitCurve):
        return ("from patching.analysis.circuit_curve import read_curve\nfrom ui import circuit_charts\n\n"
                "curve = read_curve(res.table, res.per_prompt, res.meta)\nprint(curve.summary())\n"
                "circuit_charts.faithfulness_curve(curve.top, curve.band, curve.knee)")
    head = ("from patching.analysis.detection import with_detection\nfrom ui import charts\n\n"
            f"metric = {spec.metric!r}\n")
    if isinstance(req, service.PathSweep):
        return head + (
            "t = res.table\ngrid = t[t['component'].isin(['head', 'mlp']) & t[metric].notna()].copy()\n"
            "grid['col'] = [str(int(h)) if c == 'head' else 'MLP' for c, h in zip(grid['component'], grid['head'].fillna(-1))]\n"
            "td, threshold = with_detection(grid, metric)\n"
            "charts.heatmap(td, 'col', 'layer', metric=metric, title=f'{metric} via {res.receivers}', x_title='sender', y_title='layer',\n"
            "               x_sort=[str(h) for h in range(int(res.meta['n_heads']))] + ['MLP'])")
    if spec.component == "head":
        return head + "t, threshold = with_detection(res.table, metric)\ncharts.heatmap(t, 'head', 'layer', metric=metric, title=metric)"
    if spec.component == "head_by_pos":
        return head + ("t, threshold = with_detection(res.table, metric)\nbest = t.loc[t['value'].abs().idxmax()]\n"
                       "charts.heatmap(t[t['pos_label'] == best['pos_label']], 'head', 'layer', metric=metric, title=f\"heads at {best['pos_label']}\")")
    return head + ("t, threshold = with_detection(res.table, metric)\n"
                   "order = list(dict.fromkeys(t.sort_values('pos')['pos_label']))\n"
                   "charts.heatmap(t, 'pos_label', 'layer', metric=metric, title=metric, x_sort=order)")
