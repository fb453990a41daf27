"""The ``adapter-convert`` command line: parse, call the library, print. No conversion logic here."""

from __future__ import annotations

import contextlib
import json
import os
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
from transformers.utils import logging as transformers_logging

from . import __version__
from .errors import AdapterConvertError, UsageError
from .layer_maps import STRATEGIES
from .pipeline import ConversionRequest, Reporter, check_publishable, execute, prepare, summarize

app = typer.Typer(
    name="adapter-convert",
    help="Move a trained PEFT adapter (LoRA, DoRA, IA3) onto another base model.\n\n"
    "Example: adapter-convert convert ./my-lora --target ./distilled-model --out ./my-lora-distilled",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # tokens must never reach a traceback
)

EXIT_CODES = """Exit codes: 0 ok; 1 internal error; 2 bad usage; 3 bad adapter; 4 unsupported input;
5 bad layer map; 6 output exists; 7 verification failed; 8 widths differ; 9 source not found;
10 Hub repo not found; 11 Hub authentication; 12 gated repo; 13 revision not found;
14 file missing on the Hub; 15 Hub unreachable (network, timeouts, server errors after retries, offline)."""

TokenOption = Annotated[
    str | None,
    typer.Option("--token", help="Hub token. Default: HF_TOKEN, else a cached 'hf auth login'. Never printed.", show_default=False),
]
PrivateOption = Annotated[bool, typer.Option("--private", help="Create the repo as private (if it does not exist yet).")]
BranchOption = Annotated[str | None, typer.Option("--branch", "--revision", help="Push to this branch (created if missing).")]
CreatePrOption = Annotated[bool, typer.Option("--create-pr", help="Open a pull request instead of committing to the branch.")]
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


def plan_table(summary: dict) -> Table:
    source, target = summary["source_base"], summary["target_base"]
    table = Table(title="Conversion plan", show_header=True, title_justify="left")
    table.add_column("")
    table.add_column("source")
    table.add_column("target")
    table.add_row("base", source["id"], target["id"])
    table.add_row("architecture", source["model_type"], target["model_type"])
    table.add_row("layers / hidden", f"{source['layers']} / {source['hidden']}", f"{target['layers']} / {target['hidden']}")
    table.add_row("method", summary["method"], summary["alignment"]["reason"])
    rows = summary["layer_map"]["rows"]
    table.add_row(
        f"layer map ({summary['layer_map']['strategy']})",
        ", ".join("+".join(map(str, r["sources"])) for r in rows),
        ", ".join(str(r["target"]) for r in rows),
    )
    for module in summary["modules"]:
        table.add_row(f"{module['role']} ({module['operation']})", ", ".join(module["sources"]), module["target"])
    for source_head, target_head in summary["heads"].items():
        table.add_row("task head", source_head, target_head)
    for key in summary["dropped"]:
        table.add_row("dropped (base weights)", key, "-")
    return table


def alignment_table(report: dict) -> Table:
    table = Table(title=f"Alignment ({report['method']}): {report['score']} of the fitted maps", title_justify="left")
    for column in ("target layer", "source layer", "module", "input fit", "output fit"):
        table.add_column(column, justify="right" if "fit" in column or "layer" in column else "left")
    for row in report["modules"]:
        table.add_row(str(row["target_layer"]), str(row["source_layer"]), row["role"], f"{row['input_fit']:.3f}", f"{row['output_fit']:.3f}")
    table.add_row("", "", "task head / last hidden", f"{report['head_input_fit']:.3f}", "")
    agreement = report.get("agreement")
    if agreement:
        before = report.get("agreement_before_distill")
        extra = f" (before distillation {before['value']:.3f})" if before else ""
        table.caption = f"{agreement['metric']} on {agreement['held_out_tokens']} held-out tokens: {agreement['value']:.3f}{extra}"
    return table


def _push(console: Console, folder: Path, repo_id: str, **options) -> dict:
    from .hub import push_folder

    console.print(f"- Pushing {folder} to {repo_id}", highlight=False)
    result = push_folder(folder, repo_id, **options)
    if not result.changed:
        console.print(f"No changes: {repo_id} already holds these files; no commit was made ({result.commit_sha}).", highlight=False)
    elif result.pr_url:
        console.print(f"Opened pull request: {result.pr_url}", highlight=False)
    else:
        console.print(f"Pushed commit {result.commit_sha}: {result.commit_url}", highlight=False)
    return {"repo": repo_id, "commit": result.commit_sha, "commit_url": result.commit_url, "pr_url": result.pr_url, "changed": result.changed}


@app.command(epilog=EXIT_CODES)
def convert(
    adapter: Annotated[str, typer.Argument(help="The trained adapter: a folder with adapter_config.json, or a Hub id (user/name\\[@revision]).")],
    target: Annotated[str, typer.Option("--target", "-t", help="The base model to move the adapter onto: a folder or a Hub id (user/name\\[@revision]).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write the converted adapter and its model card to.")],
    source_base: Annotated[
        str | None, typer.Option(help="The base the adapter was trained on. Default: the adapter's base_model_name_or_path.")
    ] = None,
    layer_map: Annotated[
        str,
        typer.Option(
            help=f"How target layers take source layers: {', '.join(STRATEGIES)}, or explicit source:target "
            "pairs such as '0:0,2:1,4:2'. auto = identity for equal depth, skip when the source depth is a "
            "multiple of the target's, else uniform."
        ),
    ] = "auto",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan and write nothing.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON summary on stdout (human output goes to stderr).")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace --out if it exists.")] = False,
    allow_pickle: Annotated[
        bool, typer.Option("--allow-pickle", help="Accept a pickled adapter_model.bin (loaded with weights_only=True).")
    ] = False,
    align: Annotated[
        str,
        typer.Option(
            help="How to handle modules whose shapes differ: auto (direct when shapes agree, else lstsq), none, "
            "correlation (the paper's Prune & Align), lstsq (ridge least-squares maps), distill (lstsq, or direct for "
            "equal shapes, refined by a short distillation). Alignment runs both base models on calibration text.",
            rich_help_panel="Alignment",
        ),
    ] = "auto",
    calibration_data: Annotated[
        str | None,
        typer.Option(help="Calibration text: a .txt, .jsonl (text field) or .conll/.conllu file, or a Hub dataset id "
                     "(user/name\\[@revision]) holding one. Default: a built-in multilingual sample.", rich_help_panel="Alignment"),
    ] = None,
    calibration_tokens: Annotated[int, typer.Option(help="Paired tokens to fit the alignment on.", rich_help_panel="Alignment", min=16)] = 4096,
    distill_steps: Annotated[int, typer.Option(help="Steps of --align distill.", rich_help_panel="Alignment", min=0)] = 100,
    lr: Annotated[float, typer.Option(help="Learning rate of --align distill.", rich_help_panel="Alignment")] = 1e-3,
    seed: Annotated[int, typer.Option(help="Seed for distillation (results are reproducible).", rich_help_panel="Alignment")] = 0,
    push: Annotated[str | None, typer.Option("--push", help="After a verified conversion, push --out to this Hub repo (user/name).")] = None,
    private: PrivateOption = False,
    branch: BranchOption = None,
    create_pr: CreatePrOption = False,
    commit_message: CommitMessageOption = None,
    token: TokenOption = None,
) -> None:
    """Convert ADAPTER onto --target and write a PEFT-loadable adapter with a model card to --out.

    ADAPTER, --source-base and --target are local folders or Hub ids; from the Hub only the
    adapter files and the bases' config and tokenizer files are downloaded, and every revision is
    pinned to its commit sha in the model card and the --json summary."""
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
    )
    reporter = ConsoleReporter(console)
    try:
        prepared = prepare(request, reporter)
        plan_summary = summarize(prepared)
        console.print(plan_table(plan_summary))
        if dry_run:
            summary = plan_summary | {"dry_run": True, "output": None}
        else:
            summary = execute(prepared, reporter) | {"dry_run": False}
            if summary.get("alignment") and summary["alignment"].get("modules"):
                console.print(alignment_table(summary["alignment"]))
            if push:  # only ever after a complete, verified write
                summary["push"] = _push(console, out, push, token=token, private=private, branch=branch,
                                        create_pr=create_pr, commit_message=commit_message)
    except Exception as err:  # one clean message and an exit code a CI job can act on
        raise _fail(err, errors) from None
    if json_output:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    if dry_run:
        console.print("Dry run: nothing written.")
    else:
        written = summary["output"]
        console.print(
            f"[green]Done.[/green] Wrote {written['tensors']} tensors ({written['bytes'] / 1e6:.2f} MB) to {written['path']}; "
            f"model card: {Path(written['path']) / 'README.md'}",
            highlight=False,
        )


@app.command(epilog=EXIT_CODES)
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

    The folder is checked first (adapter config, weights, model card); pushing identical content
    again makes no commit. Lets a CI job convert, check, then publish."""
    console = Console(stderr=json_output)
    try:
        check_publishable(folder)
        result = _push(console, folder, repo_id, token=token, private=private, branch=branch, create_pr=create_pr,
                       commit_message=commit_message)
    except Exception as err:
        raise _fail(err, Console(stderr=True)) from None
    if json_output:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")


@app.command()
def demo(
    workdir: Annotated[Path, typer.Option(help="Where to build the demo models and adapters.")] = Path("adapter-convert-demo"),
    steps: Annotated[int, typer.Option(help="Training steps for the example teacher adapter.")] = 100,
    data: Annotated[
        Path | None, typer.Option(help="WikiNEuRal folder with val.conllu and test.conllu. Default: ../shared/data/wikineural-en.")
    ] = None,
) -> None:
    """Offline demo: build a 6-layer teacher and a 3-layer DistilBERT student from the installed
    all-MiniLM-L6-v2, train a small NER LoRA on the teacher, and convert it with SKIP."""
    from .demo import run_demo

    console = Console()
    try:
        run_demo(workdir, steps=steps, data=data, console=console, reporter=ConsoleReporter(console))
    except Exception as err:
        raise _fail(err, Console(stderr=True)) from None


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(f"adapter-convert {__version__}")


@app.callback()
def _quiet_libraries() -> None:
    """Library warnings (peft, transformers) are noise in a CLI; ADAPTER_CONVERT_DEBUG=1 keeps them."""
    if not os.environ.get("ADAPTER_CONVERT_DEBUG"):
        warnings.simplefilter("ignore")
        transformers_logging.set_verbosity_error()
        transformers_logging.disable_progress_bar()


def main() -> None:
    app()
