"""The rules of a path request, apart from the graph's grammar
(:mod:`patching.methods.graph`): what a sweep's receivers, senders and
positions are in canonical form, which methods and forms exist and go
together, which spec fields a path computation uses, and a model's geometry
known before it loads.

The request classes that carry these parameters, each declared once, are in
:mod:`patching.requests`. No torch here: a link is canonicalised (for its
cache key) from the model's config alone.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from patching.core.errors import PatchboardError, shown
from patching.core.spec import ABLATIONS, MAX_IG_STEPS, Spec
from patching.methods.graph import (
    ALL,
    Geometry,
    canonical_receivers,
    canonical_senders,
    parse_position_spec,
    parse_receiver_list,
    parse_sender_list,
    position_text,
)

#: Path-patching forms (:mod:`patching.methods.paths`): Patchboard's joint direct
#: paths (every receiver in one run), TransformerLens's get_act_patch_direct_path
#: (one receiver per run: a row per edge) and Wang et al.'s three steps.
FORMS = ("direct", "tl_direct", "wang")
#: The most sender → receiver runs one ``tl_direct`` sweep may ask for.
MAX_EDGE_RUNS = 20_000
#: Path-sweep methods: exact (one patched run per sender), EAP, EAP-IG.
PATH_METHODS = ("exact", "eap", "eap_ig")


@dataclass(frozen=True)
class SweepRequest:
    """What a sender sweep computes besides the spec, in canonical form."""

    receivers: str
    senders: str = "*"
    sender_positions: str = ALL
    by_pos: bool = False

    @staticmethod
    def make(geo: Geometry, receivers: Any, senders: Any = None, sender_positions: Any = None, by_pos: bool = False) -> "SweepRequest":
        return SweepRequest(
            receivers=canonical_receivers(parse_receiver_list(receivers, geo), geo),
            senders=canonical_senders(parse_sender_list(senders, geo), geo),
            sender_positions=position_text(parse_position_spec(sender_positions, "sender-positions", "sender positions", from_end=False)),
            by_pos=bool(by_pos),
        )


def check_edge_runs(geo: Geometry, form: str, receivers: Any, senders: Any = None) -> None:
    """``tl_direct`` runs one patched run per sender → receiver edge: refuse
    more than :data:`MAX_EDGE_RUNS` before any model loads (per position
    with ``by_pos``, checked again once the prompt length is known)."""
    if form != "tl_direct":
        return
    recv = parse_receiver_list(receivers, geo)
    n = sum(r.reads(node, geo.n_layers) for node in parse_sender_list(senders, geo) for r in recv)
    if n > MAX_EDGE_RUNS:
        raise PatchboardError("form", f"tl_direct runs one patched run per sender → receiver edge: {n} here, over the limit of "
                              f"{MAX_EDGE_RUNS} (MAX_EDGE_RUNS); name fewer receivers or senders, or use form direct")


def hf_config(name: str) -> dict | None:
    """A model's config.json as a dict without loading its weights: a known
    model's converted copy or a local folder (read as a file), else the hub
    cache (never a download); None when not at hand."""
    from patching.core.config import known, model_config

    cfg = model_config(name)
    if cfg is not None or known(name) is not None:
        return cfg
    try:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(name, local_files_only=True).to_dict()
    except Exception:  # noqa: BLE001 - unknown until the model loads
        return None


def geometry_for(name: str) -> Geometry | None:
    """A model's geometry without loading its weights: from a model this
    process loaded, else a known model's converted config.json (read as
    JSON) or, where it is not installed, its table entry (so its stored
    results open there), else the config of a local folder or the hub cache
    (never a download); None when unknown."""
    from patching.core.config import known, model_config
    from patching.core.registry import REGISTRY

    lm = REGISTRY.peek(name)
    if lm is not None:
        return Geometry.of(lm)
    m = known(name)
    if m is not None:
        # Its converted config.json is ours: read as plain JSON (no transformers import on the way to a
        # stored result); not installed here, the table's geometry, so its stored results still open.
        cfg = model_config(name)
        try:
            n_heads = int(cfg["num_attention_heads"])
            return Geometry(int(cfg["num_hidden_layers"]), n_heads, int(cfg.get("num_key_value_heads") or n_heads))
        except (TypeError, KeyError, ValueError):
            return Geometry(m.n_layers, m.n_heads, m.n_kv_heads)
    try:
        from transformers import AutoConfig

        # The config object, not its dict: attribute maps name the fields alike across families.
        cfg = AutoConfig.from_pretrained(name, local_files_only=True)
        n_layers = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer")
        n_heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head")
        kv = getattr(cfg, "num_key_value_heads", None) or n_heads
        return Geometry(int(n_layers), int(n_heads), int(kv))
    except Exception:  # noqa: BLE001 - unknown until the model loads
        return None


#: Architectures whose blocks run attention and the MLP in parallel (both
#: read the same residual stream), by config: path patching's graph needs
#: sequential blocks. The value says which config flag switches it, if any.
PARALLEL_BLOCKS = {"gptj": None, "codegen": None, "phi": None, "cohere": None, "cohere2": None,
                   "gpt_neox": "use_parallel_residual", "stablelm": "use_parallel_residual", "falcon": "parallel_attn"}


def config_problem(cfg: dict | None) -> str | None:
    """Why path patching cannot run on a model, read from its config alone
    (before any weights load), or None. Attention normalised after the head
    sum (Gemma 2/3) is supported: :mod:`patching.engine.head_write`."""
    if not cfg:
        return None
    mt = str(cfg.get("model_type") or "")
    if mt in PARALLEL_BLOCKS:
        flag = PARALLEL_BLOCKS[mt]
        parallel = True if flag is None else bool(cfg.get(flag, mt == "gpt_neox"))
        if mt == "falcon" and cfg.get("new_decoder_architecture"):
            parallel = True
        if parallel:
            return f"{mt} runs attention and the MLP in parallel; path patching supports sequential blocks only"
    return None


def preflight(name: str) -> None:
    """Refuse a path request from the model's config, before loading it."""
    problem = config_problem(hf_config(name))
    if problem:
        raise PatchboardError("model", f"{name[:80]!r}: {problem}")


def data_label(spec: Spec, direction: bool = True) -> str:
    """``Spec.label()`` without the component (a sweep's senders are every
    node) and, for hypotheses, without the direction."""
    parts = spec.label().split(" · ")[:-1]
    return " · ".join(p for p in parts if direction or p not in ("denoise", "noise"))


def paths_spec(spec: Spec) -> Spec:
    """The spec fields a sweep uses: the component and window do not apply."""
    return replace(spec, component="head", window=1, method="exact").validated()


def check_method(method: Any, form: str = "direct", ig_steps: Any = 5, corruption: str = "str") -> tuple[str, int]:
    """(method, ig_steps) checked; ig_steps is 0 except for eap_ig."""
    if method not in PATH_METHODS:
        raise PatchboardError("method", f"{shown(method, 20)} is not one of {', '.join(PATH_METHODS)}")
    if method != "exact" and form != "direct":
        raise PatchboardError("method", f"{method} estimates the direct form; use form direct, or method exact for the {form} form")
    if method == "eap_ig" and corruption in ABLATIONS:
        raise PatchboardError("method", f"eap_ig interpolates between two inputs' embeddings; {corruption} ablation has no second input "
                              "(the reference's EAP-IG-inputs refuses it too): use eap")
    if method != "eap_ig":
        return method, 0
    if isinstance(ig_steps, bool) or not isinstance(ig_steps, int) or not 1 <= ig_steps <= MAX_IG_STEPS:
        raise PatchboardError("ig-steps", f"{shown(ig_steps, 20)} is not a whole number of steps from 1 to {MAX_IG_STEPS}")
    return method, ig_steps
