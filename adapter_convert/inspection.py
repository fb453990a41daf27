"""``adapter-convert inspect``: everything a conversion would do and cost, measured, nothing written.

It reads the conversion's own planning (``pipeline.prepare`` as a dry run with ``plan_undecided``,
which includes the token-embedding compatibility probe: the CLI runs it and hands the prepared
conversion on, as ``convert`` hands it to ``execute``) and adds what a user decides on: the verdict with its
evidence, the recommended ``convert`` command, and the predicted costs (files and bytes to
download, whether base weights are needed, peak memory).
"""

from __future__ import annotations

import dataclasses
import shlex

from .costs import predict_costs
from .pipeline import PreparedConversion, summarize
from .plan import width_mismatch
from .summary import InspectionReport, Recommendation


def inspect_conversion(prepared: PreparedConversion, *, file_sizes=None) -> InspectionReport:
    """The inspection report (the ``--json`` of ``inspect``) of a conversion prepared as a dry run
    (``prepare(..., plan_undecided=True)``, which raises the conversion's own typed error when no
    conversion is possible).

    ``file_sizes(source, patterns) -> {file: bytes}`` lists a Hub source's files (None: local only).
    """
    plan = prepared.plan
    # none (the fast path, nothing more to read) between bases measured compatible with equal shapes, or where
    # a copy is the only conversion; otherwise distill: the best alignment refined by a short distillation
    recommended = "none" if plan.alignment.method is None and not plan.alignment.refine else "distill"
    why = plan.alignment.reason
    if prepared.undecided and recommended == "none":
        why = (f"{prepared.undecided} No alignment is defined for this pair, so a copy is the only conversion: "
               "check the converted adapter on your task before you use it.")
    elif prepared.undecided:
        why = prepared.undecided
    # the plan's summary (the part of convert's --json that inspect shows), its command with the recommended --align
    summary = summarize(dataclasses.replace(prepared, request=dataclasses.replace(prepared.request, align=recommended)))
    command = summary.command_line + ("" if "--align" in shlex.split(summary.command_line) else f" --align {recommended}")
    as_json = summary.to_json()
    costs = predict_costs(prepared.adapter_source, (prepared.source.source, prepared.target.source), adapter_bytes=prepared.adapter.nbytes,
                          needs_weights=plan.fetches_weights, resources=summary.resources, file_sizes=file_sizes)
    return InspectionReport(
        supported=True,
        plan={key: as_json[key] for key in ("source_adapter", "source_base", "target_base", "peft_type", "task_type", "method",
                                             "layer_map", "modules", "heads", "dropped", "alignment")}
        | {"width_mismatch": any(width_mismatch(p.modules, p.embeddings, p.source_dims, p.target_dims) is not None
                                for p in (*plan.stacks, plan))},  # each layer stack's, and the embeddings
        compatibility=summary.compatibility,
        recommended=Recommendation(align=recommended, command=command, why=why),
        costs=costs,
    )
