"""Old name of :mod:`patching.analysis.formatting` and
:mod:`patching.analysis.detection`, kept only so that notebooks exported
before the split (``from patching.analysis.view import with_detection``) still
run. Nothing in the project imports it; new code imports those two modules.
"""

from patching.analysis.detection import component_label, top_components, with_detection  # noqa: F401
from patching.analysis.formatting import (  # noqa: F401
    baseline_sentences,
    effect_sentence,
    fmt,
    guess_pairs_format,
    pairs_to_text,
    show_token,
    token_alignment,
)
