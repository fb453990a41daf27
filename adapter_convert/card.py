"""The model card: a pure function from the conversion summary (summary.py) to a ``ModelCard``."""

from __future__ import annotations

from importlib import resources

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .summary import CompatibilitySummary, ConversionSummary, Measurement
from .tasks import model_class_name, pipeline_tag

TEMPLATE = resources.files(__package__) / "templates" / "model_card.md"


def build_model_card(summary: ConversionSummary) -> ModelCard:
    """Render the card for a conversion ``summary`` (the value ``--json`` prints as ``summary.to_json()``)."""
    source, target = summary.source_base, summary.target_base
    tags = ["peft", "adapter-convert", summary.peft_type.lower(), source.model_type, target.model_type]
    adapter, calibration = summary.source_adapter, summary.alignment.calibration
    name = f"{adapter.id.rstrip('/').split('/')[-1]} on {target.id.rstrip('/').split('/')[-1]}"
    card_data = ModelCardData(
        base_model=target.id,
        library_name="peft",
        tags=list(dict.fromkeys(tags)),
        base_model_relation="adapter",
        pipeline_tag=pipeline_tag(summary.task_type),
        license=adapter.license,  # carried from the source adapter's card, never invented
        datasets=[calibration.dataset] if calibration and calibration.dataset else None,
        model_name=name if summary.measurements else None,
        eval_results=eval_results(summary) or None,
        # where the adapter came from, pinned: the Hub has no standard key for an adapter's source adapter
        converted_from={"adapter": adapter.id, "revision": adapter.revision, "url": adapter.url,
                        "base_model": source.id, "base_model_revision": source.revision},
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
        source_adapter_url=summary.source_adapter.url,
        license=summary.source_adapter.license,
        measurements=summary.measurements,
    )


def eval_results(summary: ConversionSummary) -> list[EvalResult]:
    """The card's ``model-index``: one result per measurement of the converted adapter against the
    source adapter (none for a direct mapping, which measures nothing)."""
    calibration = summary.alignment.calibration
    hub_dataset = calibration.dataset if calibration else None  # its pinned revision follows the "@" of the source
    dataset = dict(dataset_type=hub_dataset, dataset_revision=calibration.source.partition("@")[2] or None) if hub_dataset else \
        dict(dataset_type="held-out-calibration")

    def result(measurement: Measurement) -> EvalResult:
        return EvalResult(task_type=pipeline_tag(summary.task_type) or "feature-extraction", dataset_name=measurement.data, **dataset,
                          metric_type=measurement.type, metric_name=measurement.name, metric_value=measurement.value,
                          source_name=f"adapter-convert {summary.tool_version}",
                          source_url=f"https://pypi.org/project/adapter-convert/{summary.tool_version}/")

    return [result(m) for m in summary.measurements]


def describe_compatibility(compatibility: CompatibilitySummary) -> str:
    """One line: the verdict and the numbers behind it (no timings or byte counts: the card is byte-stable)."""
    evidence = compatibility.evidence
    if evidence is None:
        return "not measured (--align none)"
    numbers = [f"{label} {value:.3f}" for value, label in ((evidence.identity_cosine, "embedding-row cosine"), (evidence.linear_fit, "linear fit"))
               if value is not None]
    shared = f" over {evidence.sampled_rows} shared tokens ({evidence.token_match})" if evidence.sampled_rows else ""
    return f"{compatibility.verdict}: " + (", ".join(numbers) + shared if numbers else evidence.reason or "")
