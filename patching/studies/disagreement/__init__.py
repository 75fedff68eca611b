"""Disagreement: one model, dataset and component type under every patching
setting, and where the settings disagree about which components matter (the
Disagreement page, the guided tour, ``python -m patching compare``).

* :mod:`.grid` — the settings, the grid and what of it is stored or computed;
* :mod:`.tables` — the numbers that compare the settings;
* :mod:`.robust` — the same with uncertainty, from the per-prompt values;
* :mod:`.layout` — the settings arranged by factor (blocks, short labels, factor pairs);
* :mod:`.factors` — the agreement between settings that differ in one factor;
* :mod:`.consensus` — the component × setting cells, the stable core and the fringe;
* :mod:`.grid_stats` — all of it for one grid, computed once; :mod:`.stored` — stored with the sweeps;
* :mod:`.answer`, :mod:`.view`, :mod:`.tour` — what the page and the tour draw from them;
* :mod:`.text` — the mechanisms and the CLI command in words;
* :mod:`.report` — the older per-grid report (findings in words, robustness), recomputed from the sweeps.
"""
