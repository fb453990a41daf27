"""``adapter-convert inspect``: everything a conversion would do and cost, measured, nothing written.

It runs the conversion's own planning (``pipeline.prepare`` as a dry run, which includes the
token-embedding compatibility probe) and adds what a user decides on: the verdict with its
evidence, the recommended ``convert`` command, and the predicted costs (files and bytes to
download, whether base weights are needed, peak memory).
"""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path

from .pipeline import ConversionRequest, PreparedConversion, Reporter, prepare, summarize
from .plan import width_mismatch
from .sources import BASE_FILES, ResolvedSource
from .summary import Costs, DownloadFile, Downloads, InspectionReport, Recommendation, ResourcePrediction

# Memory a conversion needs beyond its tensors: the Python process with torch, transformers and
# peft imported (measured at about 0.55 GB RSS on this project's CPU machine, benchmarks/).
LIBRARY_BYTES = 600 * 2**20


def inspect_conversion(request: ConversionRequest, reporter: Reporter | None = None, *, file_sizes=None) -> InspectionReport:
    """The inspection report (the ``--json`` of ``inspect``). Raises the conversion's own typed
    error when no conversion is possible (the blocking module or setting is in its message).

    ``file_sizes(source, patterns) -> {file: bytes}`` lists a Hub source's files (None: local only).
    """
    prepared = prepare(dataclasses.replace(request, dry_run=True, out=None), reporter, plan_undecided=True)
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
    costs = predict_costs(prepared, summary.resources, file_sizes=file_sizes)
    return InspectionReport(
        supported=True,
        plan={key: as_json[key] for key in ("source_adapter", "source_base", "target_base", "peft_type", "task_type", "method",
                                             "layer_map", "modules", "heads", "dropped", "alignment")}
        | {"width_mismatch": width_mismatch(plan.modules, plan.embeddings, plan.source_dims, plan.target_dims) is not None},
        compatibility=summary.compatibility,
        recommended=Recommendation(align=recommended, command=command, why=why),
        costs=costs,
    )


def predict_costs(prepared: PreparedConversion, resources: ResourcePrediction | None, *, file_sizes=None) -> Costs:
    """Downloads and peak memory of the conversion as planned (estimates, documented as such);
    ``resources``: the alignment's predicted memory (the summary's), None for a direct mapping."""
    from .hub import ADAPTER_FILES, WEIGHT_FILES

    needs_weights = prepared.plan.fetches_weights
    files: list[tuple[DownloadFile, bool]] = []  # (file, local)
    wanted = [(prepared.adapter_source, ADAPTER_FILES)]
    base_patterns = BASE_FILES + (WEIGHT_FILES if needs_weights else [])
    wanted += [(prepared.source.source, base_patterns), (prepared.target.source, base_patterns)]
    weight_bytes = 0
    for source, patterns in wanted:
        sizes = _sizes(source, patterns, file_sizes)
        for name, size in sorted(sizes.items()):
            files.append((DownloadFile(repo=source.id, file=name, bytes=size), source.repo_id is None))
            if name.endswith(".safetensors") and source is not prepared.adapter_source:
                weight_bytes += size
    adapter_bytes = prepared.adapter.nbytes
    # direct: the adapter read, its converted copy, and a verification load of that copy;
    # aligned: align/budget.py's prediction (both models, activations, the statistics of one pass)
    peak = LIBRARY_BYTES + 3 * adapter_bytes + (resources.peak_bytes if resources else weight_bytes if needs_weights else 0)
    remote = tuple(file for file, local in files if not local)
    return Costs(
        resources=resources,
        downloads=Downloads(files=remote, bytes=sum(f.bytes for f in remote)),
        base_weights_needed=needs_weights,
        base_weight_bytes=weight_bytes if needs_weights else 0,
        predicted_peak_bytes=peak,
        note="estimates: libraries + 3 x the adapter" + (" + the alignment's predicted peak (models, activations, statistics)"
                                                          if resources else " + both bases' weights as stored" if needs_weights else ""),
    )


def _sizes(source: ResolvedSource, patterns: list[str], file_sizes) -> dict[str, int]:
    import fnmatch

    if source.repo_id is None or file_sizes is None:
        folder = Path(source.path)
        return {p.name: p.stat().st_size for p in folder.iterdir() if p.is_file() and any(fnmatch.fnmatch(p.name, pat) for pat in patterns)}
    return file_sizes(source, patterns)
