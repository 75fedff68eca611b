"""Links written with the old path names (``sender-pos``, ``path-method``,
``eap-steps``) open the same Paths view as the new ones (the URL name is the
CLI flag without dashes; patching/requests.py declares both)."""

from __future__ import annotations

import pytest

from tests.app.test_paths_page import SPEC, env_model, open_page, tiny  # noqa: F401 (fixtures: the Paths page tests' model)
from tests.helpers.apptest import qp


@pytest.mark.parametrize("old,new", [
    ({"sender-pos": "END"}, {"sender-positions": "END"}),
    ({"path-method": "eap"}, {"method": "eap"}),
    ({"path-method": "eap_ig", "eap-steps": "7"}, {"method": "eap_ig", "ig-steps": "7"}),
])
def test_old_link_names_open_the_same_view(env, old, new):
    """An old link also carried the spec's own ``method=exact`` and
    ``ig-steps=5`` (Spec.to_query writes every field): the old name wins."""
    base = SPEC.to_query() | {"mode": "sweep", "receivers": "2.1:q,logits"}
    at_old = open_page(base | old)
    at_new = open_page(base | new)
    for at in (at_old, at_new):
        assert not at.exception, at.exception
        assert not at.error, [e.value for e in at.error]
    keys = ("pb_x_receivers", "pb_x_senders", "pb_x_sender-positions", "pb_x_form", "pb_x_method", "pb_x_ig-steps")
    state = [{k: at.session_state[k] for k in keys if k in at.session_state} for at in (at_old, at_new)]
    assert state[0] == state[1]
    url_old, url_new = qp(at_old), qp(at_new)
    for k, v in new.items():
        assert url_old[k] == v and url_new[k] == v  # the page rewrites an old link with the new names
    assert url_old == url_new
