"""Layer types (gemma2: sliding_attention / full_attention layers alternate) in real conversions:
``auto`` keeps every target layer on a source layer of its own type; a named map is kept as asked
and the plan, --json and the model card name the target layers fed from a layer of another type."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from adapter_convert.architectures import get_architecture
from adapter_convert.cli import app
from helpers import save_adapter, save_tiny_model
from test_architectures import assert_same_effects, convert, lora_on_everything

WARNING = "1 of 2 target layers get their adapter from a source layer of another type: 1 (full_attention) <- 2 (sliding_attention)"


def test_auto_maps_full_attention_onto_full_attention(tmp_path):
    teacher, student, plan = convert(tmp_path, "gemma2", "gemma2", lora_on_everything("gemma2"), layer_map="auto")
    assert plan.target_dims.layer_types == ("sliding_attention", "full_attention")
    # SKIP would take source layer 2 (sliding) for target layer 1 (full): source layer 3 is full attention
    assert plan.layer_map.sources == {0: (0,), 1: (3,)} and plan.layer_map.mismatches() == []
    assert_same_effects(student, teacher, {0: 0, 1: 3}, student_type="gemma2", teacher_type="gemma2")
    assert "Layer types" not in (tmp_path / "out" / "README.md").read_text()


def test_skip_is_kept_and_the_plan_json_and_card_name_the_mismatch(tmp_path):
    teacher = save_tiny_model(tmp_path / "teacher", "gemma2", 4)
    save_tiny_model(tmp_path / "student", "gemma2", 2, seed=7)
    save_adapter(tmp_path / "adapter", teacher, lora_on_everything("gemma2"), tmp_path / "teacher")
    args = ["convert", str(tmp_path / "adapter"), "--target", str(tmp_path / "student"), "--layer-map", "skip", "--align", "none",
            "--out", str(tmp_path / "out")]
    runner = CliRunner()
    dry = runner.invoke(app, [*args, "--dry-run"], env={"COLUMNS": "400", "NO_COLOR": "1"})
    assert dry.exit_code == 0, dry.output
    assert "warning: layer types" in dry.output and WARNING in " ".join(dry.output.split())
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    layer_map = json.loads(result.stdout)["layer_map"]
    assert layer_map["strategy"] == "skip" and [r["sources"] for r in layer_map["rows"]] == [[0], [2]]
    assert layer_map["type_mismatches"] == [{"target": 1, "sources": [2]}] and layer_map["warning"] == WARNING
    assert f"**Layer types:** {WARNING}." in (tmp_path / "out" / "README.md").read_text()


def test_moe_and_dense_layers_are_told_apart_by_the_module_tree():
    """llama4 with MoE in every other layer: the derived architecture says which layers hold experts."""
    from transformers import AutoConfig

    config = AutoConfig.for_model("llama4_text", num_hidden_layers=4, interleave_moe_layer_step=2, hidden_size=64,
                                  intermediate_size=96, intermediate_size_mlp=112, num_attention_heads=4, num_key_value_heads=2,
                                  head_dim=16, num_local_experts=2, vocab_size=160)
    arch = get_architecture("llama4_text", config)
    dims = arch.dims(config)
    assert dims.mlp_types == ("dense", "moe", "dense", "moe")
    assert dims.layer_types == tuple(config.layer_types)
