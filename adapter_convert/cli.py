"""The ``adapter-convert`` command line: parse, call the library, print. No conversion logic here.

Start-up stays light: only typer, rich and the package's pure modules load before a command runs;
torch, transformers and peft load inside the commands that use them, so ``--help``, ``version``
and usage errors answer at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import signal
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from . import __version__
from .alignment_methods import METHODS
from .errors import SIGNAL_EXIT_CODES, AdapterConvertError, FidelityBelowMinimumError, UsageError, exit_code_table
from .layer_maps import STRATEGIES, explicit
from .reporting import Reporter
from .summary import AlignmentSummary, ConversionSummary, InspectionReport, PushSummary

app = typer.Typer(
    name="adapter-convert",
    help="Move a trained PEFT adapter (LoRA, DoRA, IA3) onto another base model.\n\n"
    "Example: adapter-convert convert ./my-lora --target ./distilled-model --out ./my-lora-distilled",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # tokens must never reach a traceback
)

EXIT_CODES = "Exit codes: " + "; ".join(
    f"{code} {label}" for code, label in [*exit_code_table(), *SIGNAL_EXIT_CODES.items()]
) + ". Nothing partial is left behind on any failure."

AdapterArgument = Annotated[str, typer.Argument(help="The trained adapter: a folder with adapter_config.json, or a Hub id (user/name\\[@revision]).")]
TargetOption = Annotated[str, typer.Option("--target", "-t", help="The base model to move the adapter onto: a folder or a Hub id (user/name\\[@revision]).")]
SourceBaseOption = Annotated[
    str | None, typer.Option(help="The base the adapter was trained on. Default: the adapter's base_model_name_or_path.")
]
LayerMapOption = Annotated[
    str,
    typer.Option(
        help="How target layers take source layers. " + "".join(f"{name}: {strategy.HELP}. " for name, strategy in STRATEGIES.items())
        + f"Or {explicit.HELP}."
    ),
]
AlignOption = Annotated[
    str,
    typer.Option(
        help="auto: copy tensors only when the shapes agree AND the bases are measured to share a hidden space "
        "(their token embeddings, a few MB read); otherwise align and refine by distillation; stop (exit 19) when "
        "nothing can be measured. none: copy without measuring (a fine-tune or a student cut from the source). "
        + "".join(f"{name}: {help_text}. " for name, help_text in METHODS.items())
        + "fresh: a new adapter of the source's kind, rank and modules on the target, trained by distillation. "
        "distill: the best start (a copy only between bases measured compatible; for a causal or seq2seq LM between unrelated "
        "bases a fresh adapter), refined by a short distillation. A causal or seq2seq LM is distilled in output space: the source with its "
        "adapter answers the calibration prompts and the target learns its answers. "
        "Alignment runs both base models on calibration text.",
        rich_help_panel="Alignment",
    ),
]
CalibrationDataOption = Annotated[
    str | None,
    typer.Option(help="Calibration text: a .txt (one per line), .jsonl (text or prompt field, or chat messages) or .conll/.conllu file, or a "
                 "Hub dataset id (user/name\\[@revision]) holding one. For a causal or seq2seq LM these are the task's prompts, without "
                 "answers: the source with its adapter answers them (chat messages: each model in its own chat template). Default: a built-in multilingual sample.", rich_help_panel="Alignment"),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON summary on stdout (human output goes to stderr).")]

TokenOption = Annotated[
    str | None,
    typer.Option("--token", help="Hub token. Default: HF_TOKEN, else a cached 'hf auth login'. Never printed.", show_default=False),
]
PrivateOption = Annotated[bool, typer.Option("--private", help="Create the repo as private (if it does not exist yet).")]
BranchOption = Annotated[
    str | None,
    typer.Option("--branch", "--revision", help="Push to this branch (created if missing), or refs/pr/N to add a commit to open "
                 "pull request N. With --create-pr: the existing branch the pull request is opened against."),
]
CreatePrOption = Annotated[
    bool, typer.Option("--create-pr", help="Open a pull request (against main, or --branch) instead of committing to the branch.")
]
CommitMessageOption = Annotated[str | None, typer.Option("--commit-message", help="Commit message for the push.")]


class ConsoleReporter(Reporter):
    """Rich progress bars on a terminal; plain lines otherwise (CI logs)."""

    def __init__(self, console: Console):
        self.console = console

    def stage(self, message: str) -> None:
        self.console.print(f"[dim]-[/dim] {message}", highlight=False)

    @contextlib.contextmanager
    def progress(self, description: str, total: int) -> Iterator[Callable[..., None]]:
        if not self.console.is_terminal:
            self.console.print(f"- {description} ({total} steps)", highlight=False)
            last: list[str | None] = [None]
            yield lambda info=None, amount=1: last.__setitem__(0, info)
            if last[0]:
                self.console.print(f"  {description}: {last[0]}", highlight=False)
            return
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("{task.fields[info]}"))
        with Progress(*columns, console=self.console, transient=True) as bar:
            task = bar.add_task(description, total=total, info="")
            yield lambda info=None, amount=1: bar.update(task, advance=amount, info=info or "")


def _fail(err: BaseException, console: Console) -> typer.Exit:
    if isinstance(err, AdapterConvertError):
        console.print(f"[bold red]Error:[/bold red] {err}", highlight=False, soft_wrap=True)
        return typer.Exit(err.exit_code)
    if os.environ.get("ADAPTER_CONVERT_DEBUG"):
        traceback.print_exception(err)
    console.print(
        f"[bold red]Internal error:[/bold red] {type(err).__name__}: {err}. "
        "Set ADAPTER_CONVERT_DEBUG=1 for a traceback, and please report it.",
        highlight=False,
        soft_wrap=True,
    )
    return typer.Exit(1)


def plan_table(summary: ConversionSummary) -> Table:
    source, target, layer_map = summary.source_base, summary.target_base, summary.layer_map
    table = Table(title="Conversion plan", show_header=True, title_justify="left")
    table.add_column("")
    table.add_column("source")
    table.add_column("target")
    table.add_row("base", source.id, target.id)
    table.add_row("architecture", source.described, target.described)
    table.add_row("layers / hidden", f"{source.layers} / {source.hidden}", f"{target.layers} / {target.hidden}")
    table.add_row("method", summary.method, summary.alignment.reason)
    # one row per layer stack (an encoder-decoder's encoder and decoder), or one for a single stack
    stacks = list(dict.fromkeys(r.get("stack") for r in layer_map["rows"])) or [None]
    for stack in stacks:
        rows = [r for r in layer_map["rows"] if r.get("stack") == stack]
        table.add_row(
            f"layer map{f', {stack}' if stack else ''} ({layer_map.get('stacks', {}).get(stack, layer_map['strategy'])})",
            ", ".join("+".join(map(str, r["sources"])) for r in rows),
            ", ".join(str(r["target"]) for r in rows),
        )
    if layer_map.get("warning"):
        table.add_row("[yellow]warning: layer types[/yellow]", layer_map["warning"], "")
    for module in summary.modules:
        table.add_row(f"{module.role} ({module.operation})", ", ".join(module.sources), module.target)
    for source_head, target_head in summary.heads.items():
        table.add_row("task head", source_head, target_head)
    for key in summary.dropped:
        table.add_row("dropped (base weights)", key, "-")
    return table


def alignment_table(report: AlignmentSummary) -> Table:
    """The fits of an alignment run (``report.modules`` set)."""
    table = Table(title=f"Alignment ({report.method}): {report.score} of the fitted maps", title_justify="left")
    for column in ("target layer", "source layer", "module", "input fit", "output fit", "input R^2: copy / linear"):
        table.add_column(column, justify="right" if "fit" in column or "layer" in column or "R^2" in column else "left")
    for row in report.modules or ():
        copy = "-" if row.identity_r2 is None else f"{row.identity_r2:.3f}"
        table.add_row(str(row.target_layer), str(row.source_layer), row.role, f"{row.input_fit:.3f}", f"{row.output_fit:.3f}",
                      f"{copy} / {row.linear_r2:.3f}")
    if report.head_input_fit is not None:
        table.add_row("", "", "task head / last hidden", f"{report.head_input_fit:.3f}", "", "")
    agreement, before = report.agreement, report.agreement_before_distill
    if agreement:
        extra = f" (before distillation {before.value:.3f})" if before else ""
        table.caption = f"{agreement.metric} on {agreement.held_out_tokens} held-out tokens: {agreement.value:.3f}{extra}"
    return table


def fidelity_table(report: AlignmentSummary) -> Table:
    """A causal or seq2seq LM's output-space fidelity on held-out prompts (``report.fidelity`` set)."""
    f = report.fidelity
    table = Table(title=f"Fidelity to the teacher on {f.held_out_prompts} held-out prompts ({f.prompts})", title_justify="left")
    for column in ("", "target base", "start", "converted"):
        table.add_column(column, justify="right" if column else "left")
    table.add_row("bits per byte of the teacher's answers (lower: closer)", *(f"{f.bits_per_byte[k]:.3f}" for k in ("target base", "start", "converted")))
    table.add_row("token F1 of greedy generations", f"{f.token_f1['target base']:.3f}", "", f"{f.token_f1['converted']:.3f}")
    table.add_row("exact match", f"{f.exact_match['target base']:.3f}", "", f"{f.exact_match['converted']:.3f}")
    if report.distill and report.distill.best_step is not None:
        table.caption = f"{report.distill.steps} distillation steps of at most {report.distill.max_steps}; kept step {report.distill.best_step}"
    return table


def _local_base(folder: Path) -> str | None:
    """The adapter's base_model_name_or_path when it is a local path, not a Hub id."""
    from .adapter_io import CONFIG_NAME
    from .hub import parse_hub_reference

    try:
        base = json.loads((Path(folder) / CONFIG_NAME).read_text()).get("base_model_name_or_path") or ""
    except (OSError, ValueError, AttributeError):
        return None
    return base if base and (parse_hub_reference(base) is None or Path(base).expanduser().exists()) else None


def _push(console: Console, folder: Path, repo_id: str, **options) -> PushSummary:
    from .hub import PUBLISHED_FILES, push_folder

    branch = options.get("branch")
    local_base = _local_base(folder)
    if local_base:
        console.print(f"[yellow]Warning:[/yellow] the adapter names its base by a local path ({local_base!r}); on the Hub the card's "
                      "base_model and PeftModel.from_pretrained need a Hub id. Convert with --target user/name to publish one.",
                      highlight=False, soft_wrap=True)
    console.print(f"- Pushing {folder} to {repo_id}" + (f" ({branch})" if branch else ""), highlight=False)
    result = push_folder(folder, repo_id, **options)
    if result.left_out:
        shown = ", ".join(result.left_out[:10]) + (f" and {len(result.left_out) - 10} more" if len(result.left_out) > 10 else "")
        console.print(f"Left out (only {', '.join(PUBLISHED_FILES)} are published): {shown}", highlight=False)
    if result.existing_pr:
        console.print(f"No new pull request: the open pull request {result.pr_url} (opened by adapter-convert) already holds "
                      f"these files (commit {result.commit_sha}).", highlight=False)
    elif not result.changed:
        console.print(f"No changes: {repo_id} already holds these files; no commit was made ({result.commit_sha}).", highlight=False)
    elif not result.committed:
        console.print(f"Created {' and '.join(result.created)} at commit {result.commit_sha}, which already holds these files; "
                      "no commit was made.", highlight=False)
    elif result.pr_url and options.get("create_pr"):
        console.print(f"Opened pull request: {result.pr_url}", highlight=False)
    elif result.pr_url:
        console.print(f"Pushed commit {result.commit_sha} to pull request {result.pr_url}", highlight=False)
    else:
        console.print(f"Pushed commit {result.commit_sha}: {result.commit_url}", highlight=False)
    if result.reply_lost:
        console.print("The Hub's answer to the commit was lost; reading the repo back showed that the commit landed.", highlight=False)
    return PushSummary(repo=repo_id, branch=branch or "main", commit=result.commit_sha, commit_url=result.commit_url,
                       pr_url=result.pr_url, changed=result.changed, existing_pr=result.existing_pr,
                       created=tuple(result.created), files=tuple(result.files), left_out=tuple(result.left_out))


def quietly(command: Callable) -> Callable:
    """Run ``command`` with the libraries quiet (``quiet_libraries``); entered when the command
    runs, after its options parsed, so ``--help`` and usage errors never load transformers."""
    @functools.wraps(command)
    def run(*args, **kwargs):
        with quiet_libraries():
            return command(*args, **kwargs)

    return run


@app.command(epilog=EXIT_CODES)
@quietly
def convert(
    adapter: AdapterArgument,
    target: TargetOption,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write the converted adapter and its model card to.")],
    source_base: SourceBaseOption = None,
    layer_map: LayerMapOption = "auto",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan and write nothing.")] = False,
    json_output: JsonOption = False,
    force: Annotated[bool, typer.Option("--force", help="Replace --out when it holds a previous conversion's output (never other files, never an input).")] = False,
    allow_pickle: Annotated[
        bool, typer.Option("--allow-pickle", help="Accept a pickled adapter_model.bin (loaded with weights_only=True).")
    ] = False,
    align: AlignOption = "auto",
    calibration_data: CalibrationDataOption = None,
    calibration_tokens: Annotated[int, typer.Option(help="Paired tokens to fit the alignment on.", rich_help_panel="Alignment", min=16)] = 4096,
    distill_steps: Annotated[int | None, typer.Option(help="Most distillation steps (--align distill, fresh, and auto when it aligns). "
                                                      "Default: 200 for a causal or seq2seq LM, which stops earlier when held-out "
                                                      "fidelity stops improving; 100 otherwise.", rich_help_panel="Alignment", min=0,
                                                      show_default=False)] = None,
    max_new_tokens: Annotated[int | None, typer.Option(
        help="Causal or seq2seq LM: the most tokens the source with its adapter writes per prompt (prompt and answer fit 1024 "
             "tokens: a longer prompt loses its beginning, never its end). Default: 64 (a quarter of the window at most), raised "
             "to fit the answers (up to 256, half the window at most) when half or more of the first 32 run past it and most of "
             "them end within 256 (with --calibration-data prompts); the card says so.",
        rich_help_panel="Alignment", min=1, show_default=False)] = None,
    stop: Annotated[list[str] | None, typer.Option(help="Causal or seq2seq LM: a string that ends an answer (kept in it), beside EOS; "
                                                   "repeatable, e.g. --stop $'\\n'. Answers also end where the teacher begins the "
                                                   "prompts' common opening again, or loops. Without --stop, answers end at their "
                                                   "first line break when the teacher's first 32 show it never stops and runs on "
                                                   "past one line.", rich_help_panel="Alignment", show_default=False)] = None,
    batch_size: Annotated[int, typer.Option(help="Causal or seq2seq LM: prompts per distillation step.", rich_help_panel="Alignment", min=1)] = 4,
    span_weight: Annotated[float, typer.Option(help="Causal LM: weight of a second distillation term (ALM's span likelihoods): "
                                               "on each stretch of an answer that both tokenizers cut at the same characters, the "
                                               "target's probability of writing it is pulled to the source's, recorded as it wrote the "
                                               "answer. Measured: the target scores text more like the source (bits per byte of gold "
                                               "answers 0.24 -> 0.19 on NER), its greedy answers no closer. 0: off.",
                                               rich_help_panel="Alignment", min=0.0)] = 0.0,
    lr: Annotated[float, typer.Option(help="Learning rate of --align distill.", rich_help_panel="Alignment")] = 1e-3,
    seed: Annotated[int, typer.Option(help="Seed for distillation (results are reproducible).", rich_help_panel="Alignment")] = 0,
    device: Annotated[
        str | None,
        typer.Option(help="Where alignment and distillation run: cpu, cuda, cuda:N, mps, or auto (accelerate's device map: "
                     "spreads a base that does not fit one device over GPUs, CPU and disk). Default: cuda when torch sees one, else cpu.",
                     rich_help_panel="Alignment", show_default=False),
    ] = None,
    dtype: Annotated[
        str | None,
        typer.Option(help="dtype the bases load in for alignment: float32, bfloat16 or float16. Default: on a GPU each "
                     "checkpoint's own (the two may differ); on the CPU float32 when both fit in half the available memory "
                     "(a bfloat16 conversion took 2.5-4.7x as long there), else each checkpoint's own. Without it, output distillation's "
                     "steps compute in bfloat16 autocast where the device is fast at it (its generations too, where copies of the frozen "
                     "weights fit in memory); given, they compute in this dtype. "
                     "Statistics and maps are float64 either way.",
                     rich_help_panel="Alignment", show_default=False),
    ] = None,
    memory_budget: Annotated[
        str | None,
        typer.Option(help="Alignment working memory beyond the models, e.g. 4GiB or 512MiB: the calibration runs in as many passes "
                     "as its statistics need to fit (float32 statistics for big widths, float64 solves). Default: "
                     "$ADAPTER_CONVERT_ALIGN_BUDGET, else 4GiB; --dry-run --json prints the prediction as resources.",
                     rich_help_panel="Alignment", show_default=False),
    ] = None,
    push: Annotated[str | None, typer.Option("--push", help="After a verified conversion, push --out to this Hub repo (user/name).")] = None,
    min_fidelity: Annotated[
        float | None,
        typer.Option(help="Fail (exit 20, nothing pushed; --json still prints the summary) when the converted adapter's measured "
                     "fidelity to the source adapter (the summary's 'fidelity': agreement on held-out data, 0 to 1) is below this. "
                     "A conversion that measures nothing (a direct copy) fails it before any work.", show_default=False),
    ] = None,
    private: PrivateOption = False,
    branch: BranchOption = None,
    create_pr: CreatePrOption = False,
    commit_message: CommitMessageOption = None,
    token: TokenOption = None,
) -> None:
    """Convert ADAPTER onto --target and write a PEFT-loadable adapter with a model card to --out.

    ADAPTER, --source-base and --target are local folders or Hub ids; from the Hub only the adapter files, the bases' config and tokenizer files and a few MB of their token embeddings (byte ranges) are downloaded, unless alignment needs the weights. Every revision is pinned to its commit sha in the model card and the --json summary.

    Example: adapter-convert convert user/bert-ner-lora --target distilbert/distilbert-base-uncased --out ./converted"""
    from .pipeline import ConversionRequest, check_fidelity, execute, prepare, summarize

    console = Console(stderr=json_output)
    errors = Console(stderr=True)
    if dry_run and push:
        raise _fail(UsageError("--dry-run writes nothing, so there is nothing to --push.", "Drop one of them."), errors)
    request = ConversionRequest(
        adapter=adapter,
        target=target,
        out=out,
        source_base=source_base,
        layer_map=layer_map,
        force=force,
        allow_pickle=allow_pickle,
        dry_run=dry_run,
        token=token,
        align=align,
        calibration_data=calibration_data,
        calibration_tokens=calibration_tokens,
        distill_steps=distill_steps,
        lr=lr,
        seed=seed,
        device=device,
        dtype=dtype,
        memory_budget=memory_budget,
        max_new_tokens=max_new_tokens,
        stop=tuple(stop or ()),
        batch_size=batch_size,
        span_weight=span_weight,
        min_fidelity=min_fidelity,
    )
    reporter = ConsoleReporter(console)
    below_minimum = None  # the fidelity gate's refusal: raised after the summary is printed
    try:
        if push:  # destination, options and token checked before any work, and before any request
            from .hub import check_push_options

            check_push_options(push, branch=branch, create_pr=create_pr, commit_message=commit_message, token=token)
        prepared = prepare(request, reporter)
        summary = summarize(prepared)
        console.print(plan_table(summary))
        if not dry_run:
            summary = execute(prepared, reporter, planned=summary)  # one summary per conversion, completed by the run
            if summary.alignment.modules:
                console.print(alignment_table(summary.alignment))
            if summary.alignment.fidelity:
                console.print(fidelity_table(summary.alignment))
            try:
                check_fidelity(summary, min_fidelity)
            except FidelityBelowMinimumError as err:
                below_minimum = err
            if push and below_minimum is None:  # only ever after a complete, verified write that passed the gate
                summary = dataclasses.replace(summary, push=_push(console, out, push, token=token, private=private, branch=branch,
                                                                  create_pr=create_pr, commit_message=commit_message))
    except Exception as err:  # one clean message and an exit code a CI job can act on
        raise _fail(err, errors) from None
    if json_output:
        sys.stdout.write(json.dumps(summary.to_json(), indent=2) + "\n")
    if below_minimum is not None:
        raise _fail(below_minimum, errors)
    if summary.output is None:
        console.print("Dry run: nothing written.")
    else:
        written = summary.output
        console.print(
            f"[green]Done.[/green] Wrote {written.tensors} tensors ({written.bytes / 1e6:.2f} MB) to {written.path}; "
            f"model card: {Path(written.path) / 'README.md'}",
            highlight=False,
        )


@app.command(epilog=EXIT_CODES)
@quietly
def inspect(
    adapter: AdapterArgument,
    target: TargetOption,
    source_base: SourceBaseOption = None,
    layer_map: LayerMapOption = "auto",
    align: AlignOption = "auto",
    calibration_data: CalibrationDataOption = None,
    json_output: JsonOption = False,
    token: TokenOption = None,
) -> None:
    """Say whether ADAPTER can move onto --target and how, measured, writing nothing.

    Reports the plan (layer map, module mapping, fused/split operations, width mismatches), a compatibility verdict with its evidence (the rows of shared tokens in both bases' token embeddings: a few MB read by byte range, never the checkpoint), the recommended convert command, and the predicted costs.

    Exit 0 whenever a conversion is possible, whatever the verdict; otherwise the exit code of what blocks it."""
    from .hub import repo_file_sizes
    from .inspection import inspect_conversion
    from .pipeline import ConversionRequest, prepare

    console = Console(stderr=json_output)
    request = ConversionRequest(adapter=adapter, target=target, out=None, source_base=source_base, layer_map=layer_map,
                                align=align, calibration_data=calibration_data, token=token, dry_run=True)
    try:
        prepared = prepare(request, ConsoleReporter(console), plan_undecided=True)
        report = inspect_conversion(prepared, file_sizes=lambda source, patterns: repo_file_sizes(source.repo_id, source.revision, patterns, token=token))
    except Exception as err:
        raise _fail(err, Console(stderr=True)) from None
    if json_output:
        sys.stdout.write(json.dumps(report.to_json(), indent=2) + "\n")
    console.print(inspection_text(report), highlight=False)


def inspection_text(report: InspectionReport) -> str:
    compatibility, recommended, costs = report.compatibility.to_json(), report.recommended, report.costs
    evidence = compatibility["evidence"] or {}
    numbers = ", ".join(f"{name} {evidence[key]:.3f}" for key, name in (("identity_cosine", "embedding-row cosine"), ("linear_fit", "linear fit"))
                        if evidence.get(key) is not None)
    lines = [
        f"Supported: yes. Plan: {report.plan['method']} ({report.plan['alignment']['reason']}).",
        f"Compatibility: {compatibility['verdict']}" + (f" ({numbers}; {evidence.get('reason', '')})" if evidence else "") + ".",
        f"Recommended: {recommended.command}",
        f"Costs: download {costs.downloads.bytes / 1e6:.1f} MB in {len(costs.downloads.files)} files; base weights "
        f"{'needed (' + format(costs.base_weight_bytes / 1e9, '.2f') + ' GB)' if costs.base_weights_needed else 'not needed'}; "
        f"predicted peak memory {costs.predicted_peak_bytes / 2**30:.2f} GiB.",
    ]
    return "\n".join(lines)


@app.command(epilog=EXIT_CODES)
@quietly
def push(
    folder: Annotated[Path, typer.Argument(help="A converted adapter folder (as written by 'convert --out').")],
    repo_id: Annotated[str, typer.Argument(help="Destination Hub repo, user/name; created if missing.")],
    private: PrivateOption = False,
    branch: BranchOption = None,
    create_pr: CreatePrOption = False,
    commit_message: CommitMessageOption = None,
    token: TokenOption = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON result on stdout.")] = False,
) -> None:
    """Push a converted adapter folder to the Hub as one commit (or a pull request with --create-pr).

    Only adapter_config.json, adapter_model.safetensors and README.md are uploaded; other files in
    the folder are named and left out. The folder is checked first (adapter config, weights, model
    card); pushing identical content again makes no commit (or no second pull request). A failed
    push leaves nothing it created behind and says what exists on the Hub. Lets a CI job convert,
    check, then publish."""
    from .hub import check_push_options
    from .pipeline import check_publishable

    console = Console(stderr=json_output)
    try:
        check_push_options(repo_id, branch=branch, create_pr=create_pr, commit_message=commit_message, token=token)
        check_publishable(folder)
        result = _push(console, folder, repo_id, token=token, private=private, branch=branch, create_pr=create_pr,
                       commit_message=commit_message)
    except Exception as err:
        raise _fail(err, Console(stderr=True)) from None
    if json_output:
        sys.stdout.write(json.dumps(result.to_json(), indent=2) + "\n")


@app.command()
@quietly
def demo(
    workdir: Annotated[Path, typer.Option(help="Where to build the demo models and adapters.")] = Path("adapter-convert-demo"),
    steps: Annotated[int, typer.Option(help="Training steps for the example teacher adapter.")] = 100,
    data: Annotated[
        Path | None,
        typer.Option(help="WikiNEuRal folder with val.conllu and test.conllu. Default: the sample shipped in the package."),
    ] = None,
) -> None:
    """Offline demo: build a 6-layer teacher and a 3-layer DistilBERT student from the installed
    all-MiniLM-L6-v2, train a small NER LoRA on the teacher, and convert it with SKIP."""
    from .demo import run_demo
    from .pipeline import summarize

    console = Console()
    try:
        run_demo(workdir, steps=steps, data=data, console=console, reporter=ConsoleReporter(console),
                 show_plan=lambda prepared: console.print(plan_table(summarize(prepared))))
    except Exception as err:
        raise _fail(err, Console(stderr=True)) from None


@app.command()
def version() -> None:
    """Print the version (also: adapter-convert --version)."""
    typer.echo(f"adapter-convert {__version__}")


def _print_version(value: bool) -> None:
    if value:
        version()
        raise typer.Exit()


@app.callback()
def app_options(
    show_version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                               help="Print the version and exit.")] = False,
) -> None:
    """The options before any command; the app's help text is ``Typer(help=...)``'s."""


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """Library warnings (peft, transformers), transformers' logs and its progress bars are noise in a
    CLI: off while a command runs, and as they were afterwards (the CLI may run inside a caller's
    process, as tests and notebooks run it). ADAPTER_CONVERT_DEBUG=1 keeps them."""
    if os.environ.get("ADAPTER_CONVERT_DEBUG"):
        yield
        return
    from transformers.utils import logging as transformers_logging

    verbosity, progress_bars = transformers_logging.get_verbosity(), transformers_logging.is_progress_bar_enabled()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        transformers_logging.set_verbosity_error()
        transformers_logging.disable_progress_bar()
        try:
            yield
        finally:
            transformers_logging.set_verbosity(verbosity)
            if progress_bars:
                transformers_logging.enable_progress_bar()


class Terminated(BaseException):
    """SIGTERM or SIGINT, raised where the process is, so that every cleanup (the writer's) runs."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.exit_code = 128 + signum


def _raise_terminated(signum, frame) -> None:
    raise Terminated(signum)


def main() -> None:
    handled = (signal.SIGTERM, signal.SIGINT)
    previous = {signum: signal.signal(signum, _raise_terminated) for signum in handled}
    try:
        app()
    except Terminated as stop:
        name = signal.Signals(stop.exit_code - 128).name
        Console(stderr=True).print(f"Stopped by {name}: nothing partial was left behind.", highlight=False)
        sys.exit(stop.exit_code)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
