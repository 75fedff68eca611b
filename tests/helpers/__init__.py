"""Helpers shared by the test tiers (plain functions; the fixtures are in the
tiers' ``conftest.py`` files)."""

from pathlib import Path

#: The repository root (app.py, pages/, examples/).
ROOT = Path(__file__).resolve().parents[2]
