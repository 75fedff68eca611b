"""The Circuits page (pages/6_Circuits.py) under AppTest on a tiny model:
grow the circuits from a link, draw the curve and the circuit at the knee,
show one edge's exact effect and estimate, and reopen it all from the store."""

from __future__ import annotations

from tests.helpers.apptest import charts, open_page, qp, texts

PAGE = "pages/6_Circuits.py"
LINK = {"model": "tiny-llama", "task": "ioi", "n-pairs": "4", "mode": "curve", "points": "6", "random": "3"}


def test_grow_draw_pick_an_edge_and_reopen(env):
    at = open_page(PAGE, LINK)
    assert not at.exception, at.exception
    assert "not stored yet" in texts(at)
    next(b for b in at.button if b.label == "Grow the circuits").click().run()
    assert not at.exception, at.exception
    assert [m.label for m in at.metric][:4] == ["CPR", "CMD", "Random circuits: CPR", "Knee"]
    assert len(charts(at)) == 2  # the curve and the circuit
    link = qp(at)
    assert link["mode"] == "curve" and int(link["n"]) > 0 and link["scoring"] == "eap"
    # An edge of the drawn circuit, picked through the link (a click sets the same parameter).
    labels = _drawn_edges(link)
    assert labels and all(f"{x}" in _html(at) for x in labels[:3])
    at = open_page(PAGE, link | {"edge": labels[0]})
    assert not at.exception, at.exception
    assert "not stored yet" not in texts(at) and len(charts(at)) == 2  # stored: drawn at once
    assert f"Edge {labels[0]}" in texts(at).replace("\\", "")  # markdown-escaped on the page
    next(b for b in at.button if b.label.startswith("Compute this edge's exact effect")).click().run()
    assert not at.exception, at.exception
    shown = [m.label for m in at.metric]
    assert "Exact effect (direct path)" in shown and "Estimate (eap)" in shown
    assert qp(at)["edge"] == labels[0]


def _html(at) -> str:
    import html

    return html.unescape(" ".join(h.proto.body for h in at.get("html")))


def _drawn_edges(link: dict) -> list[str]:
    """The drawn circuit's edges, read from the store as the page reads them."""
    from patching import service
    from patching.analysis.circuit_view import graph_tables
    from patching.circuit_requests import CircuitCurve
    from patching.methods.circuit_curve import circuit_at, decode_scores
    from patching.methods.circuit_graph import EdgeIndex
    from patching.methods.path_request import geometry_for
    from patching.store import Store

    res = service.lookup(CircuitCurve.from_query(link), Store())
    geo = geometry_for(link["model"])
    scores = decode_scores(res.meta["scores"], EdgeIndex.of(geo).n_edges)
    _, edges, _ = graph_tables(circuit_at(res, int(link["n"]), geo), geo, scores)
    return edges["label"].tolist()
