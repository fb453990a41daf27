"""Derived architectures are kept on disk (deriving builds the model on the meta device, which
every process would pay again): the cached value equals the derived one, a damaged file is
derived again, and another structure gets another file."""

from __future__ import annotations

import pytest

from adapter_convert import architectures
from adapter_convert.architectures import _architecture, get_architecture
from helpers import tiny_config


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPTER_CONVERT_CACHE", str(tmp_path))
    _architecture.cache_clear()
    yield tmp_path / "architectures"
    _architecture.cache_clear()


@pytest.mark.parametrize("model_type", ["llama", "gpt2", "phi3", "gemma3_text", "qwen2_moe"])
def test_the_cached_architecture_equals_the_derived_one(cache_dir, model_type):
    derived = get_architecture(model_type)
    (cache_file,) = cache_dir.glob(f"{model_type}-*.json")
    _architecture.cache_clear()  # a new process: only the disk cache is left
    cached = get_architecture(model_type)
    assert cached == derived and cached is not derived


def test_a_damaged_cache_file_is_derived_again(cache_dir, monkeypatch):
    derived = get_architecture("llama")
    (cache_file,) = cache_dir.glob("llama-*.json")
    cache_file.write_text('{"model_type": "llama", "backbone": ')
    _architecture.cache_clear()
    calls = []
    real = architectures._derive_architecture
    monkeypatch.setattr(architectures, "_derive_architecture", lambda *a: calls.append(a) or real(*a))
    assert get_architecture("llama") == derived and len(calls) == 1
    _architecture.cache_clear()
    assert get_architecture("llama") == derived and len(calls) == 1  # rewritten whole: read, not derived


def test_another_structure_is_another_file(cache_dir):
    plain = get_architecture("llama", tiny_config("llama", 2))
    biased = get_architecture("llama", tiny_config("llama", 2, mlp_bias=True))
    assert len(list(cache_dir.glob("llama-*.json"))) == 2
    assert plain.modules == biased.modules  # same roles; the files differ by key, not by content


def test_an_unwritable_cache_only_costs_the_derivation(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would be")  # mkdir fails, even as root
    monkeypatch.setenv("ADAPTER_CONVERT_CACHE", str(blocker))
    _architecture.cache_clear()
    try:
        assert get_architecture("mistral").modules["attn.q"].endswith("q_proj")
    finally:
        _architecture.cache_clear()
    assert blocker.read_text().startswith("a file")


def test_a_width_setting_named_or_not_is_another_structure(cache_dir):
    """Widths' values are left out of the key, but whether a config names one is not: tapas given a
    stray num_key_value_heads derives other heads, and must not share the plain tapas's cache file."""
    from transformers import AutoConfig

    plain = AutoConfig.for_model("tapas", hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48)
    stray = AutoConfig.for_model("tapas", hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                                 num_key_value_heads=4)
    assert architectures.structure_signature(plain) != architectures.structure_signature(stray)
    assert architectures.structure_signature(plain) == architectures.structure_signature(
        AutoConfig.for_model("tapas", hidden_size=64, num_hidden_layers=2, num_attention_heads=8, intermediate_size=96))
    get_architecture("tapas", plain)
    get_architecture("tapas", stray)
    assert len(list(cache_dir.glob("tapas-*.json"))) == 2
