"""The progress callback every long computation accepts: ``(done, total)``."""

from typing import Callable

ProgressFn = Callable[[int, int], None]
