"""Every module the docs, help texts and docstrings name exists.

A renamed or split module leaves its old name behind in prose; a newcomer who
follows ``patching/hypothesis.py`` or ``patching.compare`` to nothing is lost.
Slash paths (``patching/methods/paths.py``) must be files; dotted names
(``patching.methods.paths.sweep``) must be a package, a module or a name a
module defines at its top level (read from the source, nothing imported).
"""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path


ROOT = Path(__file__).resolve().parents[2]
#: Where prose that names modules lives: the docs, and every source file
#: (docstrings, comments, help texts and page captions alike).
SOURCES = ["README.md", "docs/*.md", "benchmarks/README.md", "app.py", "patching/**/*.py", "ui/**/*.py", "pages/*.py",
           "benchmarks/*.py", "tests/**/*.py", "Makefile", ".ci/run"]
SLASH = re.compile(r"(?<![\w./-])((?:patching|ui|pages|benchmarks|tests)(?:/[A-Za-z0-9_]+)+\.py)\b")
DOTTED = re.compile(r"(?<![\w./-])(patching(?:\.[A-Za-z_][A-Za-z0-9_]*)+)")


def _files() -> list[Path]:
    out: set[Path] = set()
    for pattern in SOURCES:
        out.update(p for p in ROOT.glob(pattern) if p.is_file() and ".venv" not in p.parts)
    return sorted(out - {Path(__file__).resolve()})  # this file names missing modules on purpose


@functools.lru_cache(maxsize=None)
def _top_level_names(path: Path) -> frozenset[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                names.update(n.id for n in ast.walk(t) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return frozenset(names)


def dotted_exists(name: str) -> bool:
    """``patching.a.b.c``: the longest prefix that is a package or module, then
    at most two attribute steps (a name it defines, e.g. ``Spec.validated``)."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        base = ROOT.joinpath(*parts[:i])
        module = base.with_suffix(".py") if not base.is_dir() else base / "__init__.py"
        if not module.is_file():
            continue
        rest = parts[i:]
        if not rest:
            return True
        if rest[0] in _top_level_names(module):
            return True
        return False
    return False


def _named() -> list[tuple[str, str, str]]:
    found = []
    for f in _files():
        text = f.read_text(encoding="utf-8", errors="replace")
        rel = str(f.relative_to(ROOT))
        for m in SLASH.finditer(text):
            found.append((rel, "path", m.group(1)))
        for m in DOTTED.finditer(text):
            found.append((rel, "module", m.group(1).rstrip(".")))
    return found


def test_every_named_module_exists():
    missing = sorted({(where, name) for where, how, name in _named()
                      if not ((ROOT / name).is_file() if how == "path" else dotted_exists(name))})
    assert not missing, "named but missing:\n  " + "\n  ".join(f"{w}: {n}" for w, n in missing)


def test_the_check_can_fail():
    assert dotted_exists("patching.service.run") and not dotted_exists("patching.compare")
    assert not (ROOT / "patching/hypothesis.py").exists()
