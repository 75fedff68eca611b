"""Old name of :mod:`ui.estimate_error`, kept for ``pages/4_Paths.py`` until
it imports that module (``from ui import estimate_error``). New code imports
:mod:`ui.estimate_error`.
"""

from ui.estimate_error import NAMES, compare_or_offer, scatter, show  # noqa: F401
