"""Notebook export: a generated notebook, executed in a real Jupyter kernel,
reproduces the stored numbers exactly and draws the chart."""

from __future__ import annotations

import json

import nbformat
import pytest

from patching import service
from patching.core.spec import Spec
from patching.notebook import notebook_for
from patching.results import table_records

from tests.helpers import ROOT


@pytest.mark.integration
def test_executed_notebook_reproduces_the_stored_numbers(embedded, tmp_path, monkeypatch):
    from nbclient import NotebookClient

    spec = Spec(task="ioi", n_pairs=1, component="head").validated()
    stored = service.run(spec, lm=embedded)
    nb = notebook_for(spec)
    nb.cells.append(nbformat.v4.new_code_cell("import json\nfrom patching.results import table_records\n"
                                              "print('TABLE=' + json.dumps(table_records(table)))"))
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    outs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outs if o.output_type == "stream")
    assert "from the store" in text
    got = json.loads(text.split("TABLE=", 1)[1].splitlines()[0])
    assert got == table_records(stored.export_table())
    kinds = {k for o in outs if o.output_type in ("display_data", "execute_result") for k in o.get("data", {})}
    assert any("vegalite" in k for k in kinds) or any("vega-embed" in o.get("data", {}).get("text/html", "") for o in outs), kinds
