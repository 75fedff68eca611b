"""Patchboard: the Streamlit entry point (``streamlit run app.py``).

It only builds the navigation. Every file in ``pages/`` becomes a page, in
file-name order (``1_Patch.py`` is the home page at ``/``), so a new page is
added by dropping a file there; titles come from the file name
(``3_Disagreement.py`` -> "Disagreement") unless listed in TITLES.
"""

from __future__ import annotations

import re
from pathlib import Path

from ui import timing

timing.start("app")

import streamlit as st  # noqa: E402

HERE = Path(__file__).resolve().parent
TITLES = {
    "1_Patch.py": ("Patch", ":material/biotech:"),
    "2_Library.py": ("Library", ":material/library_books:"),
    "3_Disagreement.py": ("Disagreement", ":material/compare_arrows:"),
    "4_Paths.py": ("Paths", ":material/route:"),
    "5_How_to_read.py": ("How to read this", ":material/lightbulb:"),
    "6_Circuits.py": ("Circuits", ":material/hub:"),
    "7_Tour.py": ("Guided tour", ":material/tour:"),
}

st.set_page_config(page_title="Patchboard", page_icon=str(HERE / "ui" / "assets" / "favicon.png"), layout="wide")


def _title(name: str) -> str:
    return re.sub(r"^\d+_", "", Path(name).stem).replace("_", " ")


pages = []
for f in sorted((HERE / "pages").glob("*.py"), key=lambda p: (int(m.group(1)) if (m := re.match(r"(\d+)", p.name)) else 99, p.name)):
    if f.name.startswith("_"):
        continue
    title, icon = TITLES.get(f.name, (_title(f.name), None))
    pages.append(st.Page(str(f.relative_to(HERE)), title=title, icon=icon, default=f.name == "1_Patch.py"))

st.navigation(pages).run()
