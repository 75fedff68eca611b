"""Issue 20's definitions without a model: mean and zero ablation are
noising only (refused under denoise, and for the input-interpolating IG
methods, in one line before any model loads); the IG Riemann rules; the
task's default metric; which keys the definitions version enters (mean and
zero, ig, the Wang form, EAP-IG) and which it leaves alone (the str/gn
sweeps of the shipped demo); greater-than's prob_diff is blind to a uniform
logit shift that moves the logit-sum difference."""

from __future__ import annotations

import contextlib
import io

import pytest
import torch

from patching.core.errors import PatchboardError
from patching.core.spec import DEFINITIONS_VERSION, IG_RULE, IG_STEPS, Spec, default_metric, ig_alphas
from patching.engine.metrics import effects
from patching.engine.readout import RowStats, row_stats


@pytest.mark.parametrize("corruption", ["mean", "zero"])
def test_ablations_are_noising_only_refused_in_one_line(corruption):
    with pytest.raises(PatchboardError) as e:
        Spec(corruption=corruption, direction="denoise").validated()
    assert e.value.field == "direction" and "noising" in str(e.value) and "--direction noise" in str(e.value)
    assert "\n" not in str(e.value)
    with pytest.raises(PatchboardError) as e:
        Spec(corruption=corruption, direction="noise", method="ig").validated()
    assert e.value.field == "method" and "no second input" in str(e.value)
    ok = Spec(corruption=corruption, direction="noise", method="atp").validated()
    assert ok.corruption == corruption


def test_mean_set_is_declared_once_and_canonical():
    assert Spec(corruption="mean", direction="noise", mean_set="corrupt", n_pairs=1).validated().mean_set == "corrupt"
    with pytest.raises(PatchboardError, match="at least 2 pairs"):
        Spec(corruption="mean", direction="noise", n_pairs=1).validated()
    # Not a mean: reset, so it never splits a key.
    assert Spec(corruption="zero", direction="noise", mean_set="corrupt").validated().mean_set == "others"
    q = Spec(corruption="mean", direction="noise", mean_set="corrupt").validated().to_query()
    assert q["mean-set"] == "corrupt" and Spec.from_query(q).mean_set == "corrupt"
    with pytest.raises(PatchboardError) as e:
        Spec.from_query({"corruption": "mean", "direction": "noise", "mean-set": "everything"})
    assert e.value.field == "mean-set"


def test_cli_refuses_an_ablation_denoise_before_any_model(monkeypatch):
    import patching.service as service
    from patching.cli import main
    from patching.core.registry import REGISTRY

    def loaded(*a, **k):
        raise AssertionError("a model was asked for")

    for obj, name in ((service, "run"), (service, "get_model"), (REGISTRY, "get")):
        monkeypatch.setattr(obj, name, loaded)
    for cmd in (["paths", "--receivers", "logits"], ["run"]):
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = main(cmd + ["--task", "ioi", "--corruption", "mean", "--direction", "denoise"])
        assert rc == 2, err.getvalue()
        lines = [x for x in err.getvalue().splitlines() if x.strip()]
        assert len(lines) == 1 and "error: direction:" in lines[0] and "noising" in lines[0]


def test_ig_rules():
    assert IG_RULE == "left" and IG_STEPS == 5
    assert ig_alphas(4, "left") == [0.0, 0.25, 0.5, 0.75]  # hannamw/EAP-IG: k/m, k = 0..m-1 from the corrupted input
    assert ig_alphas(4, "midpoint") == [0.125, 0.375, 0.625, 0.875]
    with pytest.raises(PatchboardError):
        ig_alphas(4, "right")


def test_the_task_sets_the_default_metric():
    assert default_metric("greater_than") == "prob_diff" and default_metric("ioi") == "logit_diff" and default_metric(None) == "logit_diff"
    assert Spec(task="greater_than").metric == "prob_diff" and Spec().metric == "logit_diff"
    assert Spec(task="greater_than", metric="logit_diff").metric == "logit_diff"  # asked for: kept
    assert Spec.from_query({"task": "greater_than"}).metric == "prob_diff"
    assert Spec.from_query({"task": "greater_than", "metric": "kl"}).metric == "kl"
    from patching.cli.common import spec_from_args
    from patching.cli import build_parser

    a = build_parser().parse_args(["run", "--task", "greater_than"])
    assert spec_from_args(a).metric == "prob_diff"


def test_the_definitions_version_keys_only_what_it_changed():
    fp = "fp"

    def payload(spec):
        import hashlib
        import json

        from patching.core.spec import ENGINE_VERSION

        return hashlib.sha256(json.dumps({"spec": spec.validated().compute_dict(), "model": fp, "engine": ENGINE_VERSION},
                                         sort_keys=True, separators=(",", ":")).encode()).hexdigest()

    # The shipped demo's sweeps (str, gn; exact, atp) keep the key they always had.
    for s in (Spec(), Spec(corruption="gn", direction="noise", ioi_corrupt="abc"), Spec(component="head_by_pos"),
              Spec(method="atp"), Spec(corruption="resample", direction="noise"), Spec(task="greater_than")):
        assert s.cache_key(fp) == payload(s)
    # Mean, zero and ig are new definitions: a new key, never an old row.
    for s in (Spec(corruption="mean", direction="noise"), Spec(corruption="zero", direction="noise"), Spec(method="ig")):
        assert s.cache_key(fp) != payload(s)
    assert Spec(method="ig").cache_key(fp) != Spec(method="ig", ig_rule="midpoint").cache_key(fp)
    assert DEFINITIONS_VERSION


def _stats(logits, answer, counter):
    lp = torch.log_softmax(logits, -1)
    return row_stats(logits, answer, counter, lp, lp)


def test_prob_diff_is_blind_to_a_uniform_shift_of_the_digit_logits():
    """Greater-than on a digit tokenizer: start year's tens digit d = 3, so
    the answer set is {4..9} (6 digits) and the counter set {0..2} (3).
    Adding c to every digit logit, where the digits hold the mass, leaves
    P(after) - P(before) (the task's default metric) unchanged and moves the
    logit-sum difference by (6 - 3) c; adding c to every logit leaves the
    prediction, and prob_diff, exactly as it was."""
    g = torch.Generator().manual_seed(0)
    V, digits = 50, torch.arange(10, 20)
    logits = torch.randn(2, V, generator=g) - 40.0
    logits[:, digits] = torch.randn(2, 10, generator=g) * 2  # the digits hold the mass
    answer = digits[4:].repeat(2, 1)
    counter = torch.cat([digits[:3], torch.full((3,), -1)]).repeat(2, 1)  # padded to the answer set's width
    base = _stats(logits, answer, counter)
    shifted = logits.clone()
    shifted[:, digits] += 2.5
    s = _stats(shifted, answer, counter)
    assert torch.allclose(s.pd, base.pd, atol=1e-6) and float(base.pd.abs().max()) > 0.05
    assert torch.allclose(s.ld - base.ld, torch.full((2,), 3 * 2.5), atol=1e-4)
    everything = _stats(logits + 7.0, answer, counter)
    assert torch.allclose(everything.pd, base.pd, atol=1e-6) and torch.allclose(everything.ld - base.ld, torch.full((2,), 21.0), atol=1e-4)
    # The effect reads the same statistic: a patch that only shifts the digit logits scores 0.
    patched = RowStats(*(getattr(s, f)[None] if getattr(s, f) is not None else None for f in RowStats.FIELDS))
    eff = effects(patched, base, base, "noise")
    assert abs(float(eff["prob_diff"][0])) < 1e-6


def test_prob_diff_is_the_answer_minus_the_counter_probability():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    s = _stats(logits, torch.tensor([0]), torch.tensor([2]))
    p = torch.softmax(logits, -1)[0]
    assert float(s.pd[0]) == pytest.approx(float(p[0] - p[2]), abs=1e-7)


def test_tl_direct_edge_count_is_bounded_before_any_model():
    from patching import service
    from patching.methods.graph import Geometry

    geo = Geometry(30, 9, 3)
    ok = service.PathSweep(Spec(), "29.*:q", form="tl_direct").canonical(geo)
    assert ok.form == "tl_direct"
    with pytest.raises(PatchboardError) as e:
        service.PathSweep(Spec(), "*", form="tl_direct").canonical(geo)
    assert e.value.field == "form" and "MAX_EDGE_RUNS" in str(e.value)
