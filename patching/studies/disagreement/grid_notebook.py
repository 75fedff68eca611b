"""The Disagreement page as a Jupyter notebook: the same grid read from the
store (its missing sweeps computed), its statistics (stored, or computed from
the sweeps and stored), the answer's sentences, the factor chart and the
consensus view, with the library's Python API. Every value from the link
enters the code as a Python literal (``repr``/JSON), never as code; the
markdown cell's text is escaped.
"""

from __future__ import annotations

import json
from typing import Sequence

from patching.core.markdown import code_block, md_plain
from patching.core.spec import Spec
from patching.studies.disagreement import grid as disagreement_grid
from patching.studies.disagreement import text as disagreement_text

_SETUP = """\
import os, sys
sys.path.insert(0, os.path.abspath("."))  # run from the repository root
from IPython.display import display
from patching.core.registry import REGISTRY
from patching.core.spec import Spec
from patching.store import Store
from patching.studies.disagreement import answer, stored, view
from patching.studies.disagreement import grid as disagreement_grid
"""

_GET = """\
store = Store()
fp = REGISTRY.fingerprint(base.model, base.dtype)
grid = disagreement_grid.lookup_grid(base, store, fp, settings) if fp else None
if grid is None or not grid.complete:  # the missing sweeps are computed (the model loads) and stored
    grid = disagreement_grid.load_or_compute_grid(base, store, settings=settings)
    fp = REGISTRY.fingerprint(base.model, base.dtype)
stats, key, computed = stored.load_or_compute(store, base, settings, fp, k)
print('statistics', 'computed and stored' if computed else 'from the store', key[:12])
for line in answer.sentences(stats):
    print('-', answer.plain(line))
stats.factors
"""

_CHARTS = """\
from ui import answer_chart, grid_charts

display({'application/vnd.vegalite.v5+json': answer_chart.factor_bars(stats.factors, stats.factor_pairs(), k)}, raw=True)
grid_charts.consensus_matrix(view.consensus_cells(stats, 30), view.settings_layout(stats))
"""


def notebook_for_grid(base: Spec, settings: Sequence[str], k: int, title: str = "Patchboard: which choice changes the answer"):
    """The notebook (``nbformat`` v4) reproducing the Disagreement page of
    ``base``'s grid over ``settings`` at top-``k``."""
    import nbformat.v4 as nbf

    base = disagreement_grid.grid_base(base)
    command = disagreement_text.cli_command(base, settings, k) + " --factors factors.csv --consensus cells.csv --summary"
    cells = [
        nbf.new_markdown_cell(f"# {md_plain(title, 200)}\n\nThe Disagreement page's numbers with the library's Python API: the grid's "
                              "sweeps and statistics read from the store (what is missing is computed and stored).\n\nCommand line:\n\n"
                              + code_block(command, "bash")),
        nbf.new_code_cell(_SETUP),
        nbf.new_code_cell(f"base = Spec.from_query({json.dumps(base.to_query(), indent=1, ensure_ascii=False)})\n"
                          f"settings = {json.dumps(list(settings), indent=1, ensure_ascii=False)}\nk = {int(k)}"),
        nbf.new_code_cell(_GET),
        nbf.new_code_cell("view.components(stats)  # detected under some setting, core first"),
        nbf.new_code_cell(_CHARTS),
    ]
    nb = nbf.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def notebook_json(base: Spec, settings: Sequence[str], k: int) -> str:
    import nbformat

    return nbformat.writes(notebook_for_grid(base, settings, k))
