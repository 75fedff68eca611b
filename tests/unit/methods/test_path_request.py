"""The path methods' request rules (patching/methods/path_request.py) without a
model: a method the form cannot take, and EAP-IG's steps, are one-line
errors naming the field."""

from __future__ import annotations

import pytest

from patching.core.errors import PatchboardError
from patching.methods import path_request


def test_bad_method_and_form_name_the_field():
    with pytest.raises(PatchboardError) as e:
        path_request.check_method("atp")
    assert str(e.value).startswith("method:")
    with pytest.raises(PatchboardError) as e:
        path_request.check_method("eap", "wang")
    assert str(e.value).startswith("method:")
    with pytest.raises(PatchboardError) as e:
        path_request.check_method("eap_ig", "direct", 0)
    assert str(e.value).startswith("ig-steps:")
    assert path_request.check_method("eap", "direct", 9) == ("eap", 0)
