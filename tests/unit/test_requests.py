"""Path requests declared once (patching/requests.py): one name per setting,
the URL name is the CLI flag without dashes, the key payload is the
declaration's, and a stored row (the shipped demo's included) rebuilds its
request and link without a stored page URL."""

from __future__ import annotations

from patching import requests, service
from patching.core.spec import Spec
from patching.methods.graph import Geometry

GEO = Geometry(4, 4, 2)


def test_url_names_are_the_cli_flags_and_old_names_are_aliases():
    names = {s.name: (s.flag, s.aliases) for s in requests.PATH_FIELDS.values()}
    assert names["sender_positions"] == ("sender-positions", ("sender-pos",))
    assert names["method"] == ("method", ("path-method",))
    assert names["ig_steps"] == ("ig-steps", ("eap-steps",))
    from patching.cli import build_parser

    flags = {o for a in build_parser()._subparsers._group_actions[0].choices["paths"]._actions for o in a.option_strings}
    assert {"--sender-positions", "--method", "--ig-steps", "--receivers", "--senders", "--form", "--by-pos"} <= flags


def test_declaration_keys_as_before():
    """The key payload is the declaration's: defaults added later stay out;
    the results issue 20's definitions changed (the Wang form's step 3,
    EAP-IG's Riemann rule) carry the definitions version, the others not."""
    from patching.core.spec import DEFINITIONS_VERSION

    spec = Spec(model="x")
    defs = {"definitions": DEFINITIONS_VERSION}
    base = {"kind": "paths", "receivers": "logits", "senders": "*", "sender_positions": "all", "by_pos": False, "paths": "1"}
    for kw, extra in (({}, {}), ({"form": "wang"}, {"form": "wang"} | defs), ({"method": "eap", "ig_steps": 9}, {"method": "eap"}),
                      ({"form": "tl_direct"}, {"form": "tl_direct"}),
                      ({"method": "eap_ig", "ig_steps": 9}, {"method": "eap_ig", "ig_steps": 9} | defs),
                      ({"method": "eap_ig", "ig_rule": "midpoint"}, {"method": "eap_ig", "ig_steps": 5, "ig_rule": "midpoint"} | defs)):
        assert service.PathSweep(spec, "logits", **kw).canonical(GEO).key_extra() == base | extra


def test_a_stored_row_rebuilds_its_request_and_link():
    spec = Spec(model="x", task="ioi", n_pairs=2)
    req = service.PathSweep(spec, "logits", sender_positions="END", method="eap_ig", ig_steps=7).canonical(GEO)
    meta = {"receivers": req.receivers, "senders": req.senders, "sender_positions": req.sender_positions, "by_pos": False,
            "form": "direct", "method": "eap_ig", "ig_steps": 7}
    again = requests.request_of("paths", req.spec, meta)
    assert again.key_extra() == req.key_extra()
    q = again.query()
    assert q["sender-positions"] == "END" and q["method"] == "eap_ig" and q["ig-steps"] == "7" and q["mode"] == "sweep"


def test_shipped_demo_rows_link_as_their_stored_page_query_did():
    """Rows written before the requests were declared once (in
    patching/demo/demo.zip) carry ``page_query``; the link rebuilt from their
    spec and meta opens the same view, in new names, and their key is the one
    the rebuilt request computes. Rows written since carry no page URL."""
    import json
    from pathlib import Path

    from patching import bundles
    from patching.core import codec

    rows = bundles.read_bundle((Path(requests.__file__).parent / "demo" / "demo.zip").read_bytes()).rows
    renamed = {a: s.flag for s in requests.PATH_FIELDS.values() for a in s.aliases}
    seen = set()
    for r in rows:
        if r["kind"] == "activation":
            continue
        meta, spec = json.loads(r["meta_json"]), Spec.from_dict(json.loads(r["spec_json"]))
        if "page_query" not in meta:  # written since: its link is rebuilt, never stored
            continue
        old = {renamed.get(k, k): str(v) for k, v in meta["page_query"].items()}
        new = requests.request_of(r["kind"], spec, meta).query()
        if "hypothesis" in old:  # the store keeps the hypothesis with its keys sorted: the same object
            assert json.loads(codec.decode_hypothesis(new.pop("hypothesis"))) == json.loads(codec.decode_hypothesis(old.pop("hypothesis")))
        assert {k: new[k] for k in old} == old, r["label"]
        if r["kind"] == "paths":
            req = requests.request_of("paths", spec, meta)
            assert req.spec.cache_key(r["model_fingerprint"], engine=r["engine_version"], **req.key_extra()) == r["key"]
        seen.add(r["kind"])
    assert seen == {"paths", "hypothesis"}
