"""Patchboard's library: activation and path patching on TransformerLens.

No Streamlit here; the pages in ``pages/`` only lay out widgets around it.
"""

from patching.core.errors import PatchboardError
from patching.core.spec import Spec

__all__ = ["PatchboardError", "Spec"]
