"""The model card: a pure function from the conversion summary (summary.py) to a ``ModelCard``."""

from __future__ import annotations

from importlib import resources

from huggingface_hub import ModelCard, ModelCardData

from .summary import CompatibilitySummary, ConversionSummary
from .tasks import model_class_name, pipeline_tag

TEMPLATE = resources.files(__package__) / "templates" / "model_card.md"


def build_model_card(summary: ConversionSummary) -> ModelCard:
    """Render the card for a conversion ``summary`` (the value ``--json`` prints as ``summary.to_json()``)."""
    source, target = summary.source_base, summary.target_base
    tags = ["peft", "adapter-convert", summary.peft_type.lower(), source.model_type, target.model_type]
    card_data = ModelCardData(
        base_model=target.id,
        library_name="peft",
        tags=list(dict.fromkeys(tags)),
        base_model_relation="adapter",
        pipeline_tag=pipeline_tag(summary.task_type),
    )
    return ModelCard.from_template(
        card_data,
        template_str=TEMPLATE.read_text(),
        title=f"{summary.peft_type} adapter for {target.id}",
        peft_type=summary.peft_type,
        target_base=target.id,
        target_base_revision=target.revision,
        target_model_type=target.model_type,
        target_layers=target.layers,
        source_adapter=summary.source_adapter.id,
        source_adapter_revision=summary.source_adapter.revision,
        source_base=source.id,
        source_base_revision=source.revision,
        source_model_type=source.model_type,
        source_layers=source.layers,
        method=summary.method,
        layer_strategy=summary.layer_map["strategy"],
        # with several layer stacks (encoder, decoder) each row names its stack: "decoder 1"
        layer_rows=[(f"{row['stack']} {row['target']}" if "stack" in row else row["target"], row["sources"]) for row in summary.layer_map["rows"]],
        layer_type_warning=summary.layer_map.get("warning"),
        module_rows=summary.modules,
        heads=list(summary.heads.items()),
        tool_version=summary.tool_version,
        command_line=summary.command_line,
        model_class=model_class_name(summary.task_type),
        num_labels=summary.num_labels,
        alignment=summary.alignment,
        compatibility=describe_compatibility(summary.compatibility),
    )


def describe_compatibility(compatibility: CompatibilitySummary) -> str:
    """One line: the verdict and the numbers behind it (no timings or byte counts: the card is byte-stable)."""
    evidence = compatibility.evidence
    if evidence is None:
        return "not measured (--align none)"
    numbers = [f"{label} {value:.3f}" for value, label in ((evidence.identity_cosine, "embedding-row cosine"), (evidence.linear_fit, "linear fit"))
               if value is not None]
    shared = f" over {evidence.sampled_rows} shared tokens ({evidence.token_match})" if evidence.sampled_rows else ""
    return f"{compatibility.verdict}: " + (", ".join(numbers) + shared if numbers else evidence.reason or "")
