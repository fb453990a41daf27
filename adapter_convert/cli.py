"""The ``adapter-convert`` command line: parse, call the library, print. No conversion logic here."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
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
from .errors import AdapterConvertError
from .layer_maps import STRATEGIES
from .pipeline import ConversionRequest, Reporter, execute, prepare, summarize

app = typer.Typer(
    name="adapter-convert",
    help="Move a trained PEFT adapter (LoRA, DoRA, IA3) onto another base model.\n\n"
    "Example: adapter-convert convert ./my-lora --target ./distilled-model --out ./my-lora-distilled",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # tokens must never reach a traceback
)

EXIT_CODES = """Exit codes: 0 ok; 1 internal error; 2 bad usage; 3 bad adapter; 4 unsupported input;
5 bad layer map; 6 output exists; 7 verification failed; 8 widths differ; 9 source not found."""


class ConsoleReporter(Reporter):
    """Rich progress bars on a terminal; plain lines otherwise (CI logs)."""

    def __init__(self, console: Console):
        self.console = console

    def stage(self, message: str) -> None:
        self.console.print(f"[dim]-[/dim] {message}", highlight=False)

    @contextlib.contextmanager
    def progress(self, description: str, total: int) -> Iterator[Callable[[], None]]:
        if not self.console.is_terminal:
            self.console.print(f"- {description} ({total} steps)", highlight=False)
            yield lambda: None
            return
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=self.console, transient=True) as bar:
            task = bar.add_task(description, total=total)
            yield lambda: bar.advance(task)


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


def _command_line(adapter: str, target: str, out: Path, source_base: str | None, layer_map: str) -> str:
    words = ["adapter-convert", "convert", adapter, "--target", target, "--out", str(out), "--layer-map", layer_map]
    if source_base:
        words += ["--source-base", source_base]
    return shlex.join(words)


@app.command(epilog=EXIT_CODES)
def convert(
    adapter: Annotated[str, typer.Argument(help="The trained adapter: a folder with adapter_config.json.")],
    target: Annotated[str, typer.Option("--target", "-t", help="The base model to move the adapter onto (a folder with config.json).")],
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
) -> None:
    """Convert ADAPTER onto --target and write a PEFT-loadable adapter with a model card to --out."""
    console = Console(stderr=json_output)
    errors = Console(stderr=True)
    request = ConversionRequest(
        adapter=adapter,
        target=target,
        out=None if dry_run else out,
        source_base=source_base,
        layer_map=layer_map,
        force=force,
        allow_pickle=allow_pickle,
        command_line=_command_line(adapter, target, out, source_base, layer_map),
    )
    reporter = ConsoleReporter(console)
    try:
        prepared = prepare(request, reporter)
        plan_summary = summarize(prepared)
        console.print(plan_table(plan_summary))
        if dry_run:
            summary = plan_summary | {"dry_run": True}
        else:
            summary = execute(prepared, reporter) | {"dry_run": False}
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


@app.command()
def demo(
    workdir: Annotated[Path, typer.Option(help="Where to build the demo models and adapters.")] = Path("adapter-convert-demo"),
    steps: Annotated[int, typer.Option(help="Training steps for the example teacher adapter.")] = 150,
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
