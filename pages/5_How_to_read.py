"""How to read this: activation patching for people who don't code,
illustrated with the current example (the spec of the link or the session)."""

from __future__ import annotations

import streamlit as st

from patching.core.errors import PatchboardError
from patching.analysis.detection import top_components, with_detection
from patching.analysis.formatting import baseline_sentences, effect_sentence, fmt, show_token
from ui.plain import md_plain
from ui import panel, runtime, url
from ui import html as ui_html

ui_html.page_setup("How to read this")
st.title("How to read this")
url.page_link("pages/7_Tour.py", label="Or take the guided tour: one real result in six steps", query_params={"step": "1"}, icon=":material/tour:")

spec, msg = panel.current_spec()
if msg:
    st.error(msg, icon=":material/warning:")
url.write_url(spec)
res = runtime.lookup_result(spec)

ex = None
if res is not None:
    m = res.meta
    ex = {"clean_tokens": m.get("clean_tokens", []), "corrupt_tokens": m.get("corrupt_tokens", []),
          "key_positions": m.get("key_positions"), "position_labels": m.get("position_labels")}
else:
    try:
        pv = runtime.token_preview(spec)
        if "unavailable" not in pv:
            ex = pv
    except PatchboardError:
        ex = None

st.markdown(
    """
A language model reads a prompt and predicts the next word. Inside, it computes in **layers**; each layer has
**attention heads** (which move information between words) and an **MLP** (which transforms it). *Activation
patching* asks which of these pieces actually produce a given answer.

It needs two prompts that differ only in a detail that changes the answer:
"""
)

if ex:
    diff = [j for j, (a, b) in enumerate(zip(ex["clean_tokens"], ex["corrupt_tokens"])) if a != b]
    ui_html.show_tokens(ex["clean_tokens"], ex["corrupt_tokens"], ex.get("key_positions"), ex.get("position_labels"))
    changed = ", ".join(f"position {j} ({md_plain(show_token(ex['clean_tokens'][j]), 40)} → {md_plain(show_token(ex['corrupt_tokens'][j]), 40)})" for j in diff[:4])
    ans = ""
    if ex.get("answer"):
        ans = f" On the clean prompt the right answer is **{md_plain(repr(ex['answer']), 80)}**; the corrupted prompt points to **{md_plain(repr(ex['counter_answer']), 80)}** instead."
    st.markdown(
        f"This is the current example (**{md_plain(spec.label())}**). The **clean** prompt (top row) and the **corrupted** prompt "
        f"(bottom row) differ at {changed or 'no position'} (yellow).{ans}"
    )
else:
    st.markdown("*(Pick a setting on the **Patch** page to see your own example here.)*")

st.markdown(
    """
**The experiment.** Run the model on both prompts and remember every intermediate result (“activation”). Then run it
again, but replace **one** activation — say, one attention head in layer 9 — with the one from the other run, and see
how much the answer moves. Repeat for every head (or every layer and position). The heatmap on the **Patch** page shows
one coloured square per piece.

### Corruption: how the prompt is broken
* **str — symmetric token replacement.** Swap the key words for other, similar words (e.g. one name for another). The
  corrupted prompt still looks like normal text, so the model is not confused, only pointed at a different answer.
  Recommended by Zhang & Nanda (2023).
* **gn — Gaussian noise.** Keep the words but blur their internal representation with random noise (3× the typical
  size, averaged over several noisy copies). Used by the ROME paper; it can push the model into unusual states, so
  results may differ from str.
* **resample — another prompt.** The broken run reads another prompt of the same dataset, drawn at random (several
  draws averaged), while the right and wrong answers stay those of the original prompt. Goldowsky-Dill et al. (2023)
  use it for path patching: it asks what the model does on a typical prompt of the task that lacks this prompt's
  specific information.
* **mean — the average (mean ablation).** In the *clean* run, replace the piece by its average at the same position
  over the *other* prompts of the dataset (never the prompt itself), or over the corrupted prompts ("Mean over"): what
  is left is what the prompts have in common. Noise only: there is no averaged run to put a clean piece back into.
* **zero — zeros (zero ablation).** In the clean run, replace the piece by zeros. Noise only. Both compare with the
  *ablated run*, where every piece is replaced at once.

### Metric: how the effect is scored
* **logit_diff** — how strongly the model prefers the right answer over the wrong one, rescaled so that **1 = as on
  the clean prompt** and **0 = as on the corrupted prompt**. 0.4 means the piece accounts for 40% of the difference.
* **prob** — the change in the probability of the right answer (0.05 = five percentage points).
* **logprob** — the change in the log-probability of the right answer.
* **kl** — how much the *whole* prediction (not just the two answers) moves towards the run the patched piece came
  from, in KL divergence: under **denoise**, how much closer it gets to the clean prediction; under **noise**, how much
  closer the clean run's prediction gets to the corrupted (or ablated) one. Negative means it moves *further away*:
  under noise that can be a piece working against the answer, or a broken piece pushing the model somewhere unusual,
  away from both runs; logit_diff beside it tells which.
* **prob_diff** — the change in P(right answers) − P(wrong answers): for greater-than, P(a later year) − P(an earlier
  year), the score Hanna et al. use (the default for that task).

Switching the metric re-reads the same stored runs: all five are computed at once.

### Direction: what is swapped into what
* **denoise** — put one *clean* piece into the *corrupted* run. A big effect means the piece is **sufficient** to
  bring the answer back (on its own).
* **noise** — put one *corrupted* piece into the *clean* run. A big effect means the piece is **necessary**: breaking
  it breaks the answer.

Patchboard orients both so that **a positive value always means “this piece carries the behaviour”** (for noising,
the drop is counted as positive). A piece can be necessary without being sufficient and vice versa, which is why the
two directions can highlight different pieces (Heimersheim & Nanda, 2024).

### Reading the heatmap
* **Blue** squares carry the behaviour, **red** ones work against it, **white** ones do little. The colour scale is
  centred on 0 and symmetric. Hover over a square to see its exact value.
* A square with a **solid black outline** was *detected* by the 2-SD rule: its effect is more than two standard
  deviations away from the average piece. A **dashed magenta outline** marks a detected piece with a *negative*
  effect (e.g. “negative name-mover heads” in IOI) — important, but pushing the other way.
* On layer × position maps the column labels are the prompt's tokens, so you can see *where* in the prompt the
  information sits at each layer.
* With a **window** (several neighbouring layers patched together), the line chart compares the joint effect with the
  **sum of single-layer effects**: if the joint effect is much bigger, the layers work together.
"""
)

if res is not None:
    st.markdown("### In the current example")
    for s in baseline_sentences(res.baselines, spec):
        st.markdown(f"* {md_plain(s, 2000)}")
    t, th = with_detection(res.table, spec.metric)
    top = top_components(t, 3)
    full = t.set_index("label")
    for lab in top["label"]:
        st.markdown(f"* {md_plain(effect_sentence(full.loc[lab], spec.metric, spec.direction, spec.corruption), 2000)}")
    n_det = int((t["detected"] != "").sum())
    st.markdown(f"* The 2-SD rule detects **{n_det}** of {len(t)} pieces for this metric "
                f"(effects outside [{fmt(th.get('lower'))}, {fmt(th.get('upper'))}]).")
    url.page_link("pages/1_Patch.py", label="See this result on the Patch page", icon=":material/biotech:", query_params=spec.to_query())
else:
    url.page_link("pages/1_Patch.py", label="Go to the Patch page", icon=":material/biotech:", query_params=spec.to_query())
url.copy_link(spec, label="Link to this explanation with this example")
