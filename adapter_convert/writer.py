"""Write a folder atomically: build it beside the destination, move it into place when complete."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import OutputExistsError


def check_output_free(out: Path, *, force: bool) -> None:
    if out.exists() and not force:
        raise OutputExistsError(f"Output folder {str(out)!r} already exists.", "Pass --force to replace it, or pick another --out.")
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"Output path {str(out)!r} exists and is not a folder.", "Pick another --out.")


def write_folder_atomically(out: Path, fill: Callable[[Path], None], *, force: bool) -> None:
    """Call ``fill(tmp)`` on a fresh folder next to ``out``; on success it replaces ``out``.

    A failure inside ``fill`` (including verification) removes the temporary folder and leaves
    ``out`` as it was.
    """
    out = Path(out)
    check_output_free(out, force=force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        fill(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        out.rename(old / out.name)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)
