"""Derived architecture data: the hand-written families reproduced, overrides checked, and every
model type of the installed transformers converting exactly or refused with a named reason.

``test_every_model_type`` re-runs each row of ``adapter_convert/architectures/coverage.json``
(written with ``docs/coverage.md`` by ``scripts/coverage_table.py``): a tiny random model with a
LoRA on every role, converted by the real pipeline onto the same type with fewer layers and onto
llama of equal widths, every module's delta weight compared after loading with peft.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import pytest
import transformers

from adapter_convert import architectures
from adapter_convert.architectures import get_architecture
from adapter_convert.architectures import model as architecture_model
from architecture_coverage import check_model_type, tiny_config
from adapter_convert.architectures.derive import _peft_moe_renames, derive
from adapter_convert.errors import BadModelConfigError, UnsupportedError

ROOT = Path(__file__).resolve().parent.parent
HANDWRITTEN = json.loads((Path(__file__).parent / "data" / "handwritten_architectures.json").read_text())
COVERAGE_FILE = ROOT / "adapter_convert" / "architectures" / "coverage.json"
COVERAGE = json.loads(COVERAGE_FILE.read_text()) if COVERAGE_FILE.is_file() else []
# heads the hand-written files left out, which the module tree shows (same backbone attribute)
EXTRA_HEADS = {
    "gpt2": {"QUESTION_ANS": "qa_outputs"},
    "gpt_neox": {"QUESTION_ANS": "qa_outputs"},
    "mistral": {"QUESTION_ANS": "qa_outputs"},
    "roberta": {"CAUSAL_LM": "lm_head"},
    "xlm-roberta": {"CAUSAL_LM": "lm_head"},
}


@pytest.mark.parametrize("model_type", sorted(HANDWRITTEN))
def test_handwritten_families_derive_exactly(model_type):
    """The 15 families that had a complete hand-written file derive to exactly what it said:
    backbone, layer list, every role's module, embeddings, Conv1D, config keys; heads add only
    the ones listed in EXTRA_HEADS. Fused row layouts (gpt2, phi3, gpt_neox) come from overrides."""
    expected = HANDWRITTEN[model_type]
    arch = dataclasses.asdict(get_architecture(model_type))
    for key in ("backbone", "layers", "modules", "embeddings", "conv1d"):
        assert arch[key] == expected.get(key, False if key == "conv1d" else {}), key
    assert arch["heads"] == expected["heads"] | EXTRA_HEADS.get(model_type, {})
    assert {r: arch["fused_layout"].get(r, "concat") for r in arch["modules"] if "." in r} == \
           {r: expected.get("fused_layout", {}).get(r, "concat") for r in expected["modules"]}
    # config keys: the same attribute read for every size (an attribute the config lacks reads as none)
    config = transformers.AutoConfig.for_model(model_type)
    effective = lambda keys: {  # noqa: E731
        size: key if key and hasattr(config, key) else None
        for size, key in ({**architecture_model._DEFAULT_CONFIG_KEYS, **keys}).items()
    }
    assert effective(arch["config"]) == effective(expected.get("config", {}))
    assert arch["unsupported"] == {}
    # derivation alone (no file) gives the same modules; only the fused layout is unknown then
    derived = derive(model_type)
    assert derived.modules == expected["modules"] and derived.layers == expected["layers"]


def test_a_fused_module_without_a_stated_layout_copies_onto_its_own_type_only():
    arch = get_architecture("codegen")  # qkv_proj: an interleaved layout no override describes
    assert "attn.qkv" in arch.modules and not arch.known_layout("attn.qkv")
    row = next(r for r in COVERAGE if r["model_type"] == "codegen")
    assert row["status"] == "converts"
    assert row["onto_llama"].startswith("refused: codegen's fused attn.qkv module 'attn.qkv_proj'")


def test_overrides_are_checked_against_the_model(monkeypatch):
    cases = {
        "llama": ({"modules": {"attn.q": "self_attn.nowhere"}}, "which its layers do not have"),
        "qwen2": ({"modules": {"attn.q": "self_attn.k_proj"}}, "maps 64 -> 32"),
        "phi3": ({"fused_layout": {"attn.qkv": "per_head"}}, "per_head needs parts of equal width"),
        "mistral": ({"fused_layout": {"attn.qkv": "concat"}}, "not a fused module"),
        "gemma": ({"fused_layout": {"attn.qkv": "sideways"}}, "not a fused module"),
    }
    for model_type, (override, message) in cases.items():
        monkeypatch.setattr(architectures, "load_override", lambda _t, o=override: o)
        architectures._architecture.cache_clear()
        with pytest.raises(UnsupportedError, match=message):
            get_architecture(model_type)
    monkeypatch.undo()
    architectures._architecture.cache_clear()


def test_unknown_and_refused_model_types_name_the_reason():
    with pytest.raises(UnsupportedError, match="Unknown model_type 'no_such_model'"):
        get_architecture("no_such_model")
    with pytest.raises(UnsupportedError, match="'mamba': its config has no num_attention_heads"):
        get_architecture("mamba")


def test_derivation_follows_the_real_config():
    """Structure comes from the config given: gpt2 with cross-attention has modules without a role,
    named with the reason, and the target_modules of a conversion must not select them."""
    config = transformers.AutoConfig.for_model("gpt2", add_cross_attention=True)
    arch = get_architecture("gpt2", config)
    assert arch.unsupported["crossattention.c_attn"].startswith("cross-attention")
    assert "crossattention.c_attn" in arch.other_modules
    assert get_architecture("gpt2").unsupported == {}  # the default gpt2 has none


def test_the_coverage_table_is_current_and_the_goal_met():
    sys.path.insert(0, str(ROOT / "scripts"))
    from coverage_table import render

    assert COVERAGE, "run scripts/coverage_table.py"
    assert (ROOT / "docs" / "coverage.md").read_text() == render(COVERAGE)
    converts = [r for r in COVERAGE if r["status"] == "converts"]
    assert len(converts) >= 100
    assert not [r["model_type"] for r in COVERAGE if r["status"] == "failed"]
    assert not [r["model_type"] for r in COVERAGE if r["onto_llama"].startswith("failed")]
    for row in COVERAGE:
        if row["status"] == "refused":
            assert row["reason"].startswith(("Unsupported model_type", "Adapter key", "Cannot build", "The adapter adapts")) or \
                   "module" in row["reason"], row


# the default run converts a sample of every kind of row: the hand-written families, fused
# projections, encoder-decoders, hybrids and experts, and refusals and unbuildable types of each
# reason; the whole sweep (240 types, minutes) is opt-in: RUN_FULL_SWEEP=1 pytest -m sweep, and
# the scheduled job in .github/workflows/sweep.yml
SAMPLE = set(HANDWRITTEN) | {"t5", "bart", "whisper", "jamba", "minimax", "mixtral", "qwen2_moe", "falcon", "bloom", "codegen",
                             "mamba", "deepseek_v3", "albert", "rwkv", "trocr", "blt", "dbrx"}
FULL_SWEEP = bool(os.environ.get("RUN_FULL_SWEEP"))


def sweep_row(row: dict):
    """A row of the sweep: in the default run when sampled, else marked ``sweep`` and opt-in."""
    if row["model_type"] in SAMPLE:
        return pytest.param(row, id=row["model_type"])
    return pytest.param(row, id=row["model_type"], marks=[pytest.mark.sweep, pytest.mark.skipif(
        not FULL_SWEEP, reason="the full model-type sweep is opt-in: RUN_FULL_SWEEP=1 pytest -m sweep")])


def test_the_sample_covers_every_kind_of_row():
    sampled = [r for r in COVERAGE if r["model_type"] in SAMPLE]
    assert len(sampled) == len(SAMPLE)  # each sampled type is a row of the table
    assert {r["status"] for r in sampled} == {r["status"] for r in COVERAGE}
    assert any(r["roles"] and "cross" in json.dumps(r["roles"]) for r in sampled)  # an encoder-decoder's cross-attention


@pytest.mark.parametrize("row", [sweep_row(r) for r in COVERAGE])
def test_every_model_type(row, tmp_path):
    """Converts exactly (delta weight per module, same type and onto llama) or is refused with the
    recorded reason; never a crash, never a wrong mapping."""
    outcome = check_model_type(row["model_type"], tmp_path)
    assert outcome.status != "failed", outcome.reason
    recorded = {k: row[k] for k in ("status", "reason", "origin", "roles", "onto_llama")}
    if row["status"] == "converts" and _peft_moe_renames(row["model_type"]):
        # the installed peft renames this mixture-of-experts type's MLP targets onto its fused experts (peft 0.22 does
        # for qwen2_moe, 0.21 did not): a shared expert's MLP roles cannot be targeted by name; derivation leaves
        # them out, each for that reason
        arch = get_architecture(row["model_type"], tiny_config(row["model_type"], 2))
        left_out = [r for r in recorded["roles"] if r not in arch.modules]
        assert all(r.startswith("mlp.") for r in left_out)
        assert len([why for why in arch.unsupported.values() if "peft renames" in why]) >= len(left_out)
        recorded["roles"] = [r for r in recorded["roles"] if r in arch.modules]
    assert {k: getattr(outcome, k) for k in recorded} == recorded


def test_mpt_mlp_width_follows_what_transformers_builds():
    """mpt states its MLP width as expansion_ratio * d_model, but transformers' MptMLP builds
    4 * d_model whatever the ratio says: derivation finds that out by building it with another
    ratio, reads the width as 4 * d_model, and refuses a config stating another ratio (its
    weights would not fit the model) instead of checking shapes against the wrong width."""
    config = transformers.AutoConfig.for_model("mpt", d_model=128, n_heads=4, n_layers=2, expansion_ratio=4)
    arch = get_architecture("mpt", config)
    assert arch.fixed == {"expansion_ratio": 4}
    assert arch.dims(config).intermediate == 512
    config.expansion_ratio = 2
    with pytest.raises(BadModelConfigError, match=r"sets expansion_ratio=2, but transformers .*'s mpt ignores expansion_ratio "
                                                  r"and builds its layers with expansion_ratio=4"):
        get_architecture("mpt", config).dims(config)
    assert get_architecture("llama").fixed == {}
