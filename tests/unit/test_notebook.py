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


def test_notebook_markdown_is_plain_text():
    """A backtick (or markdown) in a model name cannot break out of the first
    cell's code block: rendered, the cell holds one code block and no link or
    image (issue 22)."""
    import shlex

    from markdown_it import MarkdownIt

    for model in ("a`](http://127.0.0.1:9/x)`b", "x```\n# Heading\n![i](http://127.0.0.1:9/b.png)\n```", "m" + "`" * 7 + "n"):
        nb = notebook_for(Spec(model=model, task="ioi"), title="[click](http://127.0.0.1:9/) ![b](http://127.0.0.1:9/b.png)")
        tokens = MarkdownIt("commonmark").parse(nb.cells[0].source)
        inline = [c for t in tokens if t.type == "inline" for c in (t.children or [])]
        assert not [c for c in inline if c.type in ("link_open", "image")], nb.cells[0].source
        assert [t.type for t in tokens if t.type in ("fence", "code_block")] == ["fence"]
        assert not [t for t in tokens if t.type == "heading_open" and t.tag != "h1"]
        fence = next(t for t in tokens if t.type == "fence")
        assert shlex.quote(model) in fence.content  # the command line whole, as typed
