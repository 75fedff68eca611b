"""The service from the command line on the embedded model: a stored spec is
answered from the store, byte for byte, without importing torch (the
in-process service on tiny models: tests/engine/test_service.py)."""

from __future__ import annotations

import os
import subprocess
import sys


def test_cli_store_hit_does_not_import_torch(embedded, tmp_path):
    """A second identical `run` is answered from the store: same CSV bytes, and
    torch is never imported (the embedded model's fingerprint is known)."""
    env = dict(os.environ)
    args = ["--task", "ioi", "--n-pairs", "1", "--component", "head"]
    out1, out2 = tmp_path / "a.csv", tmp_path / "b.csv"
    r1 = subprocess.run([sys.executable, "-m", "patching", "run", *args, "--out", str(out1)], capture_output=True, text=True, env=env)
    assert r1.returncode == 0, r1.stderr
    probe = ("import sys, runpy; sys.argv=['patching','run',*sys.argv[1:]]\n"
             "try:\n    runpy.run_module('patching', run_name='__main__')\nexcept SystemExit as e:\n    code = e.code\n"
             "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr)\n")
    r2 = subprocess.run([sys.executable, "-c", probe, *args, "--out", str(out2)], capture_output=True, text=True, env=env)
    assert "from store" in r2.stderr, r2.stderr
    assert r2.stderr.strip().endswith("NO-TORCH"), r2.stderr
    assert out1.read_bytes() == out2.read_bytes()
