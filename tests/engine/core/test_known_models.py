"""Models as a registry (patching/core/config.py's table, patching/cli/models.py):
what is known, installed and allowed, the terms flag, the GGUF hash check,
and the refusals and light tools that never load a model (a local folder
holding only a tokenizer and a config proves it: loading would fail)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import pytest

from patching.core import config
from patching.core.errors import PatchboardError


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    """A cache folder where no model is converted."""
    monkeypatch.setenv("PATCHBOARD_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_table_knows_both_models_and_the_embedded_default(empty_cache):
    assert config.EMBEDDED == "smollm2-135m" and list(config.MODELS)[0] == config.EMBEDDED
    g = config.MODELS["gemma-3-270m"]
    assert all("==" in p for p in g.packages) and g.sha256 and g.size == 253_113_024
    assert config.installed_models() == [config.EMBEDDED]  # the embedded model converts at first use
    assert not config.is_installed("gemma-3-270m")
    # Stored results are found before the model is installed: the table's fingerprint.
    assert config.known_fingerprint("gemma-3-270m") == g.fingerprint
    (empty_cache / "models" / "gemma-3-270m").mkdir(parents=True)
    (empty_cache / "models" / "gemma-3-270m" / "fingerprint.txt").write_text("abcdef0123456789\n")
    assert config.known_fingerprint("gemma-3-270m") == "abcdef0123456789"  # the sidecar wins


def test_known_names_are_allowed_paths_are_not():
    config.check_allowed("gemma-3-270m", "")
    with pytest.raises(PatchboardError, match="not allowed"):
        config.check_allowed("/tmp/gemma-3-270m", "*")


def test_models_add_requires_the_terms_before_installing_anything(empty_cache, monkeypatch):
    from patching.cli import models as models_cli

    monkeypatch.setattr(models_cli, "install_packages", lambda pins: pytest.fail("installed without the terms"))
    with pytest.raises(PatchboardError) as e:
        models_cli.add("gemma-3-270m", accepted=False)
    assert e.value.field == "accept-gemma-terms"
    assert "ai.google.dev/gemma/terms" in e.value.message and "--accept-gemma-terms" in e.value.message
    assert "\n" not in str(e.value)
    assert not (empty_cache / "models" / "gemma-3-270m").exists()
    rows = {r["name"]: r for r in models_cli.list_rows()}
    assert rows["gemma-3-270m"]["status"] == "available" and "--accept-gemma-terms" in rows["gemma-3-270m"]["how"]
    assert rows["smollm2-135m"]["status"] == "embedded"


def test_gguf_pieces_are_concatenated_and_hash_checked(empty_cache, tmp_path, monkeypatch):
    from patching.core import gguf

    parts = []
    for i, data in enumerate((b"GGUF" + b"a" * 100, b"b" * 50, b"c" * 7)):
        p = tmp_path / f"x.gguf.part0{i}"
        p.write_bytes(data)
        parts.append(p)
    whole = b"".join(p.read_bytes() for p in parts)
    m = replace(config.GEMMA3_270M, sha256=hashlib.sha256(whole).hexdigest(), size=len(whole))
    monkeypatch.setattr(gguf, "gguf_pieces", lambda _m: parts)
    out = tmp_path / "out"
    out.mkdir()
    assert gguf.assemble_gguf(m, out).read_bytes() == whole
    # A wrong hash: refused, and the conversion leaves nothing behind.
    bad = replace(m, sha256="0" * 64)
    with pytest.raises(PatchboardError, match="SHA-256"):
        gguf.convert_gguf(bad)
    root = empty_cache / "models"
    assert not (root / m.name).exists() and not [p for p in root.iterdir() if p.name.startswith(".")]


def _tokenizer_only_folder(tmp_path, tokenizer, cfg: dict):
    folder = tmp_path / "no-weights"
    tokenizer.save_pretrained(str(folder))
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def test_pairs_reads_a_local_folders_tokenizer_without_loading(tmp_path, embedded_tokenizer):
    from patching.cli.pairs import tokenizer_for
    from patching.core import tasks
    from patching.core.registry import REGISTRY
    from patching.core.spec import Spec

    folder = _tokenizer_only_folder(tmp_path, embedded_tokenizer, {"model_type": "llama", "architectures": ["LlamaForCausalLM"]})
    tok = tokenizer_for(str(folder))  # no model.safetensors: loading would fail
    assert REGISTRY.peek(str(folder)) is None
    rows = tasks.pairs_table(Spec(task="ioi", n_pairs=3), tok)
    assert rows == tasks.pairs_table(Spec(task="ioi", n_pairs=3), embedded_tokenizer)


def test_known_model_not_added_refuses_before_loading(empty_cache):
    from patching import service
    from patching.cli.pairs import tokenizer_for
    from patching.core.spec import Spec

    for call in (lambda: tokenizer_for("gemma-3-270m"), lambda: service.run(Spec(model="gemma-3-270m"), use_store=False),
                 lambda: service.run(service.PathSweep(Spec(model="gemma-3-270m"), receivers="logits"), use_store=False)):
        with pytest.raises(PatchboardError) as e:
            call()
        assert e.value.field == "model" and "models add gemma-3-270m --accept-gemma-terms" in e.value.message


@pytest.mark.parametrize("cfg", [{"model_type": "gptj"}, {"model_type": "gpt_neox", "use_parallel_residual": True}])
def test_path_refusals_come_from_the_config_before_loading(tmp_path, embedded_tokenizer, cfg):
    from patching import service
    from patching.core.spec import Spec

    folder = _tokenizer_only_folder(tmp_path, embedded_tokenizer, {**cfg, "num_hidden_layers": 2, "num_attention_heads": 4})
    with pytest.raises(PatchboardError, match="in parallel"):
        service.run(service.PathSweep(Spec(model=str(folder)), receivers="logits"), use_store=False)
    # Receivers outside the geometry: refused from the config too.
    ok = _tokenizer_only_folder(tmp_path / "ok", embedded_tokenizer, {"model_type": "gemma3_text", "num_hidden_layers": 2,
                                                                      "num_attention_heads": 4, "num_key_value_heads": 1})
    with pytest.raises(PatchboardError, match="receivers"):
        service.run(service.PathSweep(Spec(model=str(ok)), receivers="7.0:q"), use_store=False)
