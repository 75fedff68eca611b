"""Invariants of the batched patching engine (patching.engine.runner, patching.engine.reference).

On the tiny random models of conftest.py (both architectures): full patches
restore / destroy exactly, identical runs change nothing, and every shortcut
the engine takes (skipping prefix positions, the shared-prefix KV cache, the
growing batch, chunking) gives the same numbers as the plain computation.
"""

from __future__ import annotations

import random

import pytest
import torch

from patching.engine import blocks, readout, resources
from patching.engine import runner
from patching.core.pairs import Pair
from patching.core.data import build_dataset
from patching.engine.readout import RowStats
from patching.engine.runner import Edit, run_patches
from patching.engine.metrics import effects
from patching.engine.reference import prepare
from patching.core.spec import Spec
from patching.methods.activation import HOOKS, cells_for, compute, window_layers

PAIRS = (
    Pair("When Mary and John went to the store, John gave a drink to", "When Mary and John went to the store, Mary gave a drink to", " Mary", " John"),
    Pair("When Anna and Peter went to the park, Peter gave a book to", "When Anna and Peter went to the park, Anna gave a book to", " Anna", " Peter"),
)
FIELDS = ("ld", "prob", "logprob", "kl")


@pytest.fixture(scope="module", params=["tiny_llama", "tiny_gpt2"])
def lm(request):
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module")
def ds(embedded_tokenizer):
    return build_dataset(list(PAIRS), embedded_tokenizer)


@pytest.fixture(scope="module")
def gn_ds(embedded_tokenizer):
    return build_dataset(list(PAIRS), embedded_tokenizer, "gn")


def sweep_hooks(lm, component: str = "head") -> set[str]:
    return {e.hook for c in cells_for(component, lm.n_layers, lm.n_heads, 1) for e in c.patch}


ALL_HOOKS = ("resid_pre", "attn_out", "mlp_out", "head")


def _prep(lm, ds, corruption="str", direction="denoise", **kw):
    hooks = set().union(*(sweep_hooks(lm, c) for c in ALL_HOOKS))
    return prepare(lm, ds, corruption, direction, hooks, noise_samples=kw.pop("noise_samples", 3), **kw)


def full_path(inp) -> None:
    """Make the engine compute everything on whole sequences."""
    inp.use_suffix = False


def max_diff(a: RowStats, b: RowStats) -> float:
    return max(float((getattr(a, f) - getattr(b, f)).abs().max()) for f in FIELDS)


def all_cells(lm, seq):
    return [c.patch for comp in ("resid_pre", "attn_out", "mlp_out", "head", "head_by_pos") for c in cells_for(comp, lm.n_layers, lm.n_heads, seq)]


# ---------------------------------------------------------------- restoring / destroying


@pytest.mark.parametrize("corruption", ["str", "gn"])
@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_patching_every_position_of_the_input_is_complete(lm, ds, gn_ds, corruption, direction):
    """One patch of resid_pre at layer 0 at every position turns the base run
    into the source run: logit_diff 1.0 either way (fully restored / destroyed)."""
    d = gn_ds if corruption == "gn" else ds
    prep = _prep(lm, d, corruption, direction)
    patch = tuple(Edit("blocks.0.hook_resid_pre", 0, pos=p) for p in range(d.seq_len))
    st = run_patches(prep.inputs, [patch])
    eff = effects(st, prep.clean, prep.corrupt, direction)
    assert float(eff["logit_diff"][0]) == pytest.approx(1.0, abs=1e-5)
    # And the rows themselves are the source run's.
    source = prep.clean if direction == "denoise" else prep.corrupt
    for f in ("ld", "logprob"):
        torch.testing.assert_close(getattr(st, f)[0], getattr(source, f), atol=1e-4, rtol=1e-5)


def test_patching_every_position_with_pos_none(lm, ds):
    """pos=None means all positions: the same as listing them."""
    prep = _prep(lm, ds)
    listed = tuple(Edit("blocks.1.hook_resid_pre", 1, pos=p) for p in range(ds.seq_len))
    st = run_patches(prep.inputs, [listed, (Edit("blocks.1.hook_resid_pre", 1),)])
    assert max_diff(RowStats(*(getattr(st, f)[:1] for f in FIELDS)), RowStats(*(getattr(st, f)[1:] for f in FIELDS))) < 1e-5
    assert float(effects(st, prep.clean, prep.corrupt, "denoise")["logit_diff"][1]) == pytest.approx(1.0, abs=1e-5)


def test_clean_into_clean_changes_nothing(lm, embedded_tokenizer):
    same = [Pair(p.clean, p.clean, p.answer, p.counter_answer) for p in PAIRS]
    d = build_dataset(same, embedded_tokenizer)
    prep = _prep(lm, d)
    assert prep.inputs.same_prefix == d.seq_len  # nothing differs: every patch is skipped
    patches = all_cells(lm, d.seq_len)
    st = run_patches(prep.inputs, patches)
    for f in FIELDS:
        assert torch.equal(getattr(st, f), getattr(prep.inputs.base_stats, f).expand(len(patches), -1))
    # Computed anyway (no skipping, whole sequences), nothing changes either.
    prep.inputs.same_prefix = 0
    full_path(prep.inputs)
    st = run_patches(prep.inputs, patches)
    base = prep.inputs.base_stats
    assert max_diff(st, RowStats(*(getattr(base, f).expand(len(patches), -1) for f in FIELDS))) < 1e-5
    assert float(st.kl.abs().max()) < 1e-5


# ---------------------------------------------------------------- shortcuts = plain computation


def test_skipped_prefix_patches_equal_computed_ones(lm, ds):
    prep = _prep(lm, ds)
    inp = prep.inputs
    first = inp.same_prefix
    assert 0 < first < ds.seq_len
    early = [c.patch for comp in ("resid_pre", "attn_out", "mlp_out", "head_by_pos") for c in cells_for(comp, lm.n_layers, lm.n_heads, ds.seq_len) if c.pos < first]
    calls = []
    orig = runner._run_group
    try:
        runner._run_group = lambda *a, **k: calls.append(1) or orig(*a, **k)
        skipped = run_patches(inp, early)
    finally:
        runner._run_group = orig
    assert calls == []  # nothing was run
    inp.same_prefix = 0
    full_path(inp)
    computed = run_patches(inp, early)
    assert max_diff(skipped, computed) < 1e-5


@pytest.mark.parametrize("corruption", ["str", "gn"])
@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_suffix_path_equals_full_sequence_path(lm, ds, gn_ds, corruption, direction):
    d = gn_ds if corruption == "gn" else ds
    patches = all_cells(lm, d.seq_len)
    prep = _prep(lm, d, corruption, direction)
    fast = run_patches(prep.inputs, patches)
    assert prep.inputs._suffix, "the shared-prefix path should be used on this architecture"
    assert prep.inputs._suffix.checked
    full_path(prep.inputs)
    slow = run_patches(prep.inputs, patches)
    assert max_diff(fast, slow) < 1e-5
    assert float(slow.kl.max()) > 1e-2  # real effects, not zeros


def test_full_path_matches_one_forward_per_patch(lm, ds):
    """The full-sequence engine against the bridge itself: patch one
    activation with a hook on an ordinary forward pass."""
    prep = _prep(lm, ds)
    inp = prep.inputs
    full_path(inp)
    cells = [(c.patch[0], c) for c in cells_for("head", lm.n_layers, lm.n_heads, ds.seq_len)][::3]
    cells += [(c.patch[0], c) for c in cells_for("mlp_out", lm.n_layers, lm.n_heads, ds.seq_len) if c.pos >= inp.same_prefix][::4]
    st = run_patches(inp, [c.patch for _, c in cells], max_rows=5)
    for k, (e, _) in enumerate(cells):
        src = inp.source[e.hook]

        def hook(act, hook=None, e=e, src=src):
            act[e.index()] = src[e.index()]
            return act

        logits = lm.bridge.run_with_hooks(ds.corrupt_tokens, fwd_hooks=[(e.hook, hook)])[:, -1, :]
        ref = readout.row_stats(logits, inp.answer, inp.counter, inp.clean_logprobs)
        for f in FIELDS:
            torch.testing.assert_close(getattr(st, f)[k], getattr(ref, f), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("max_rows", [1, 4, 7])
def test_results_do_not_depend_on_batching(lm, gn_ds, max_rows):
    """Row blocks (a patch's rows split), groups of patches and their order:
    none of it changes a patch's numbers."""
    prep = _prep(lm, gn_ds, "gn", "denoise", noise_samples=3)  # 6 rows
    first = prep.inputs.same_prefix
    patches = [c.patch for comp in ("head", "resid_pre") for c in cells_for(comp, lm.n_layers, lm.n_heads, gn_ds.seq_len)
               if c.pos is None or c.pos >= first - 1]
    if max_rows == 1:
        patches = patches[::3]
    ref = run_patches(prep.inputs, patches, max_rows=10_000)
    order = list(range(len(patches)))
    random.Random(max_rows).shuffle(order)
    got = run_patches(prep.inputs, [patches[i] for i in order], max_rows=max_rows)
    inv = torch.tensor(order).argsort()
    got = RowStats(*(getattr(got, f)[inv] for f in FIELDS))
    assert max_diff(got, ref) < 1e-5


def test_chunked_sweep_equals_unchunked(lm, ds, monkeypatch):
    spec = Spec(model=lm.name, task=None, pairs=PAIRS, component="head_by_pos", direction="noise")
    big = compute(spec, lm, ds).table
    monkeypatch.setenv("PATCHBOARD_MEM_BUDGET_MB", "0.05")  # a handful of rows per batch
    assert resources.sweep_rows(lm.cfg, ds.seq_len, ds.seq_len) < 10
    small = compute(spec, lm, ds).table
    for m in ("logit_diff", "prob", "logprob", "kl"):
        # Normalised metrics: the baselines themselves move by float noise.
        assert float((big[m] - small[m]).abs().max()) < 1e-4


def test_patches_mixing_layers_and_hooks(lm, ds):
    """Patches with edits at several layers and hooks join the growing batch
    at their lowest layer and get every edit."""
    prep = _prep(lm, ds, direction="noise")
    inp = prep.inputs
    p = inp.same_prefix
    patches = [
        (Edit("blocks.2.hook_mlp_out", 2, pos=p), Edit("blocks.0.attn.hook_z", 0, head=1)),
        (Edit("blocks.1.hook_attn_out", 1, pos=ds.seq_len - 1), Edit("blocks.1.hook_resid_pre", 1, pos=p + 1)),
        (Edit("blocks.2.attn.hook_z", 2, pos=p + 2, head=3),),
        (Edit("blocks.0.hook_resid_pre", 0, pos=0), Edit("blocks.2.hook_resid_pre", 2, pos=p)),  # first edit is a no-op
    ]
    fast = run_patches(inp, patches)
    full_path(inp)
    slow = run_patches(inp, patches, max_rows=2)
    assert max_diff(fast, slow) < 1e-5


def test_setter_edits_run_on_whole_sequences(lm, ds):
    """A custom ``setter`` sees the whole sequence; it gives what the same
    index-based edit gives."""
    prep = _prep(lm, ds)
    inp = prep.inputs
    src = inp.source["blocks.1.attn.hook_z"]

    def setter(act, rows):
        act[:, :, 2] = src[rows][:, :, 2]

    plain = (Edit("blocks.1.attn.hook_z", 1, head=2),)
    custom = (Edit("blocks.1.attn.hook_z", 1, setter=setter),)
    st = run_patches(inp, [plain, custom, plain], max_rows=2)
    for f in FIELDS:
        torch.testing.assert_close(getattr(st, f)[0], getattr(st, f)[1], atol=1e-5, rtol=1e-5)


def test_a_suffix_path_that_does_not_reproduce_the_run_is_dropped(lm, ds):
    """The shared-prefix path is checked against the unpatched run on first
    use; a wrong cache is caught and everything runs on whole sequences."""
    patches = [c.patch for c in cells_for("head", lm.n_layers, lm.n_heads, ds.seq_len)]
    good = run_patches(_prep(lm, ds).inputs, patches)
    inp = _prep(lm, ds).inputs
    inp.prefix_kv.keys = [torch.zeros_like(k) for k in inp.prefix_kv.keys]
    got = run_patches(inp, patches)
    assert inp._suffix is False
    assert max_diff(got, good) < 1e-5


def test_runner_for_other_callers(lm, ds):
    """``EngineInputs.runner`` (path patching uses it) runs whole sequences."""
    prep = _prep(lm, ds)
    inp = prep.inputs
    x = inp.runner.run_from(0, inp.base_resid[0].clone())
    st = readout.row_stats(inp.runner.final_logits(x[:, -1]), inp.answer, inp.counter, inp.clean_logprobs)
    assert max_diff(st, inp.base_stats) < 1e-4
    mid = inp.runner.run_from(0, inp.base_resid[0].clone(), stop=2)
    torch.testing.assert_close(mid, inp.base_resid[2], atol=1e-4, rtol=1e-5)


def test_cached_activations_are_not_modified(lm, ds):
    prep = _prep(lm, ds)
    inp = prep.inputs
    before = [r.clone() for r in inp.base_resid], {k: v.clone() for k, v in inp.source.items()}
    run_patches(inp, all_cells(lm, ds.seq_len), max_rows=1)
    assert all(torch.equal(a, b) for a, b in zip(before[0], inp.base_resid))
    assert all(torch.equal(before[1][k], inp.source[k]) for k in inp.source)


# ---------------------------------------------------------------- Gaussian noise


def test_gaussian_noise_is_seeded(lm, gn_ds):
    a = _prep(lm, gn_ds, "gn", "denoise", seed=1)
    b = _prep(lm, gn_ds, "gn", "denoise", seed=1)
    c = _prep(lm, gn_ds, "gn", "denoise", seed=2)
    assert a.sigma == b.sigma == c.sigma and a.sigma > 0
    assert torch.equal(a.corrupt.ld, b.corrupt.ld)
    assert not torch.allclose(a.corrupt.ld, c.corrupt.ld)
    # Noise only at the key positions: before the first one nothing moved.
    first = min(min(k) for k in gn_ds.key_positions)
    torch.testing.assert_close(a.inputs.base_resid[1][:, :first], c.inputs.base_resid[1][:, :first])
    assert not torch.allclose(a.inputs.base_resid[1][:, first:], c.inputs.base_resid[1][:, first:])
    spec = Spec(model=lm.name, task=None, pairs=PAIRS, corruption="gn", component="head", noise_samples=3, seed=1)
    r1, r2 = compute(spec, lm, gn_ds).table, compute(spec, lm, gn_ds).table
    r3 = compute(spec.with_(seed=2), lm, gn_ds).table
    assert (r1["kl"] == r2["kl"]).all()
    assert not (r1["kl"] == r3["kl"]).all()


def test_gaussian_noise_rows_are_pairs_times_samples(lm, gn_ds):
    prep = _prep(lm, gn_ds, "gn", "noise", noise_samples=5)
    assert prep.rows == gn_ds.n * 5
    assert prep.inputs.base_resid[0].shape[0] == gn_ds.n * 5
    # The clean run is repeated per sample; the noised run varies.
    assert torch.equal(prep.clean.ld[:5], prep.clean.ld[0].expand(5))
    assert prep.corrupt.ld[:5].unique().numel() == 5


# ---------------------------------------------------------------- windows


@pytest.mark.parametrize("component", ["attn_out", "mlp_out"])
def test_window_patches(lm, ds, component):
    """A window patch edits every layer of the window at once; window 1 is the
    single-layer sweep, and the summation baseline uses those singles."""
    spec = Spec(model=lm.name, task=None, pairs=PAIRS, component=component, window=3)
    win = compute(spec, lm, ds).table
    single = compute(spec.with_(window=1), lm, ds).table
    assert (win[["layer", "pos"]].to_numpy() == single[["layer", "pos"]].to_numpy()).all()
    for m in ("logit_diff", "kl"):
        assert float((win[f"single_{m}"] - single[m]).abs().max()) < 1e-5
        key = single.set_index(["layer", "pos"])[m]
        want = [sum(float(key[(j, p)]) for j in window_layers(l, 3, lm.n_layers)) for l, p in zip(win["layer"], win["pos"])]
        assert float((win[f"sum_{m}"] - torch.tensor(want).numpy()).abs().max()) < 1e-5
    # The joint effect, computed independently as one multi-layer patch on whole sequences.
    prep = _prep(lm, ds)
    full_path(prep.inputs)
    l, p = 1, ds.seq_len - 1
    hook = HOOKS[component]
    patch = tuple(Edit(hook.format(l=j), j, pos=p) for j in window_layers(l, 3, lm.n_layers))
    assert len(patch) == 3
    st = run_patches(prep.inputs, [patch])
    eff = effects(st, prep.clean, prep.corrupt, "denoise")
    row = win[(win["layer"] == l) & (win["pos"] == p)]
    assert float(row["logit_diff"].iloc[0]) == pytest.approx(float(eff["logit_diff"][0]), abs=1e-5)


def test_memory_budget_bounds_batches(lm, monkeypatch):
    monkeypatch.setenv("PATCHBOARD_MEM_BUDGET_MB", "1024")
    big = resources.sweep_rows(lm.cfg, 5, 15)
    monkeypatch.setenv("PATCHBOARD_MEM_BUDGET_MB", "1")
    small = resources.sweep_rows(lm.cfg, 5, 15)
    assert 1 <= small < big <= resources.MAX_BATCH_TOKENS // 5


def test_capturing_block_arguments_leaves_the_model_alone(lm, ds):
    """The suffix path's capture skips the blocks' computation meanwhile; the
    model must compute exactly as before afterwards."""
    before = lm.bridge(ds.clean_tokens)
    prep = _prep(lm, ds)
    path = blocks.build_suffix_path(lm, prep.inputs.prefix_kv, ds.seq_len)
    assert path is not None and len(path.calls) == lm.n_layers
    for b in lm.bridge.blocks:
        assert "forward" not in b.__dict__
        assert "forward" not in b.original_component.__dict__
    assert torch.equal(lm.bridge(ds.clean_tokens), before)


def test_without_a_shared_prefix_the_full_path_runs(lm, embedded_tokenizer):
    """Noise at BOS: nothing is shared, so whole sequences run (and agree
    with themselves however they are batched)."""
    d = build_dataset(list(PAIRS), embedded_tokenizer, "gn", key_positions=[0, 10])
    prep = _prep(lm, d, "gn", "denoise")
    assert prep.inputs.same_prefix == 0 and prep.inputs.suffix_path() is None
    patches = [c.patch for c in cells_for("head", lm.n_layers, lm.n_heads, d.seq_len)]
    a = run_patches(prep.inputs, patches)
    b = run_patches(prep.inputs, patches, max_rows=2)
    assert max_diff(a, b) < 1e-5 and float(a.kl.max()) > 1e-2


def test_without_prefix_keys_the_full_path_runs(lm, ds):
    """An architecture whose cache is not plain keys/values gets no PrefixKV
    from prepare(); the engine then runs whole sequences."""
    patches = [c.patch for c in cells_for("attn_out", lm.n_layers, lm.n_heads, ds.seq_len)]
    good = run_patches(_prep(lm, ds).inputs, patches)
    inp = _prep(lm, ds).inputs
    inp.prefix_kv = None
    got = run_patches(inp, patches)
    assert inp._suffix is None and inp.runner_ is not None
    assert max_diff(got, good) < 1e-5


def test_concurrent_sweeps_on_one_model(lm, ds):
    """Two app sessions may patch the same loaded model at once: the model
    lock keeps one sweep's hooks (and the capture's pass-through blocks) out
    of the other's forward passes."""
    import threading

    jobs = [("head", "denoise"), ("resid_pre", "noise"), ("mlp_out", "denoise")]
    want = {}
    for comp, direction in jobs:
        prep = _prep(lm, ds, direction=direction)
        want[comp] = run_patches(prep.inputs, [c.patch for c in cells_for(comp, lm.n_layers, lm.n_heads, ds.seq_len)])
    got, errors = {}, []

    def work(comp, direction):
        try:
            prep = _prep(lm, ds, direction=direction)
            got[comp] = run_patches(prep.inputs, [c.patch for c in cells_for(comp, lm.n_layers, lm.n_heads, ds.seq_len)], max_rows=8)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=j) for j in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for comp, _ in jobs:
        assert max_diff(got[comp], want[comp]) < 1e-5

