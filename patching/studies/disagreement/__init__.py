"""Disagreement: one model, dataset and component type under every patching
setting, and where the settings disagree about which components matter (the
Disagreement page, ``python -m patching compare``).

* :mod:`.grid` — the settings, the grid and what of it is stored or computed;
* :mod:`.tables` — the numbers that compare the settings;
* :mod:`.robust` — the same with uncertainty, from the per-prompt values;
* :mod:`.text` — the findings, mechanisms and CLI command in words;
* :mod:`.report` — all of it for one grid, computed once (page and CLI).
"""
