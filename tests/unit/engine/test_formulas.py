"""docs/definitions.md's metrics table is the code's: it is generated from
``patching.engine.metrics.FORMULAS``, and every formula there, read as
arithmetic on the runs' row means, is what ``effects`` computes."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

from patching.core.spec import DIRECTIONS, METRICS
from patching.engine.metrics import FORMULAS, effects, formulas_markdown
from patching.engine.readout import RowStats

DOCS = Path(__file__).resolve().parents[3] / "docs" / "definitions.md"


def test_the_docs_table_is_generated_from_the_code():
    text = DOCS.read_text(encoding="utf-8")
    m = re.search(r"<!-- formulas:[^\n]*-->\n(.*?)\n<!-- /formulas -->", text, re.S)
    assert m, "docs/definitions.md lost its generated formulas table"
    assert m.group(1).strip() == formulas_markdown().strip(), "regenerate it: patching.engine.metrics.formulas_markdown()"
    assert set(FORMULAS) == set(METRICS)


def _python(formula: str) -> str:
    """A docs formula as Python over the runs' row means."""
    f = formula.replace("−", "-")
    f = re.sub(r"KL\((\w+)‖(\w+)\)", r"KL_\1_\2", f)
    f = re.sub(r"log P_(\w+)\(r\)", r"logP_\1", f)
    f = re.sub(r"P_(\w+)\(r\)", r"P_\1", f)
    return f


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_every_formula_is_what_effects_computes(direction, seed):
    g = torch.Generator().manual_seed(seed)
    R = 5

    def stats(lead=()):
        t = lambda: torch.rand(*lead, R, generator=g, dtype=torch.float64)  # noqa: E731
        prob = t()
        return RowStats(ld=t() * 4 - 1, prob=prob, logprob=prob.log(), kl=t(), kl_corrupt=t(), pd=t() - 0.5)

    patched, clean, corrupt = stats((1,)), stats(), stats()
    eff = effects(patched, clean, corrupt, direction)
    runs = {"patched": patched[0], "clean": clean, "corrupt": corrupt}
    names = {}
    for run, st in runs.items():
        names |= {f"LD_{run}": st.ld.mean(), f"P_{run}": st.prob.mean(), f"logP_{run}": st.logprob.mean(), f"PD_{run}": st.pd.mean(),
                  f"KL_clean_{run}": st.kl.mean(), f"KL_corrupt_{run}": st.kl_corrupt.mean()}
    names["KL_clean_corrupt"] = corrupt.kl.mean()  # KL(clean || corrupt): the corrupted run's KL from the clean one
    names["KL_corrupt_clean"] = clean.kl_corrupt.mean()
    col = DIRECTIONS.index(direction)
    for metric, texts in FORMULAS.items():
        code = _python(texts[col])
        want = float(eval(code, {"__builtins__": {}}, {k: float(v) for k, v in names.items()}))  # noqa: S307 - our own table
        assert float(eff[metric][0]) == pytest.approx(want, rel=1e-12, abs=1e-12), (metric, texts[col], code)
        assert math.isfinite(want)
