"""Notebook export (patching/notebook.py) without a model: link values are
quoted as literals, never run as code, and the notebook is valid nbformat
(executing one: tests/integration/test_notebook.py)."""

from __future__ import annotations

import json

import nbformat

from patching import service
from patching.core.spec import Spec
from patching.notebook import notebook_for, notebook_json


def test_notebook_quotes_link_values_as_literals():
    from patching.core.pairs import Pair

    evil = Pair('x"); import os; os.system("echo pwned"); ("', "y", " a", " b")
    nb = notebook_for(Spec(task=None, pairs=(evil,), component="resid_pre"))
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    compile(code.replace("table\n", "table\n"), "nb", "exec")  # valid Python
    assert "os.system" not in code.replace(json.dumps(Spec(task=None, pairs=(evil,)).validated().to_query()["pairs"]), "")
    nbformat.validate(nbformat.reads(notebook_json(service.PathSweep(Spec(), "logits")), as_version=4))
