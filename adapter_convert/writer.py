"""Write the output folder safely: never over an input, never over a user's other files, never half.

The folder is built under a temporary name (``.NAME.partial-PID-XXXX``) and moved into place
only when complete. Replacing a previous output (``--force``) swaps its files one by one from a
staging folder inside it, so ``--out .`` and mount points work too. Leftovers of a run that was
killed outright (SIGKILL) are removed by the next run that writes to the same place.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path

from safetensors import SafetensorError

from .adapter_io import CONFIG_NAME, PICKLE_WEIGHTS_NAME, WEIGHTS_NAME
from .errors import AdapterConvertError, OutputExistsError, OutputWriteError

# What a previous conversion leaves in its output folder; --force replaces nothing else.
ADAPTER_OUTPUT_FILES = frozenset({CONFIG_NAME, WEIGHTS_NAME, PICKLE_WEIGHTS_NAME, "README.md"})
_PARTIAL = ".partial-"
_OLD = ".old-"  # written by adapter-convert 0.1.0 when it swapped folders


def resolve_output(out: Path | str) -> Path:
    """The absolute path that will be written, with symlinks (dangling ones too) followed."""
    return Path(os.path.realpath(os.path.expanduser(str(out))))


def check_output(out: Path | str, *, force: bool, inputs: Mapping[str, Path] | None = None) -> Path:
    """Refuse an ``out`` that is, holds or lies inside an input, or holds anything but a previous
    output; check that it can be created. Returns the resolved path. Writes nothing."""
    out = resolve_output(out)
    for what, path in (inputs or {}).items():
        path = Path(os.path.realpath(path))
        if out == path or out in path.parents or path in out.parents:
            relation = "is" if out == path else ("holds" if out in path.parents else "lies inside")
            raise OutputExistsError(
                f"--out {str(out)!r} {relation} the {what} ({str(path)!r}); writing there could destroy an input.",
                "Pick an --out folder outside every input.",
            )
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise OutputExistsError(f"--out {str(out)!r} exists and is not a folder.", "Pick another --out.")
        entries = [p for p in out.iterdir() if not _is_leftover(p, out.name)]
        if not force and entries:
            raise OutputExistsError(
                f"Output folder {str(out)!r} already exists.",
                "Pass --force to replace a previous conversion's output there, or pick another --out.",
            )
        foreign = sorted(p.name + ("/" if p.is_dir() else "") for p in entries if p.name not in ADAPTER_OUTPUT_FILES or p.is_dir())
        if entries and (foreign or not (out / CONFIG_NAME).is_file()):
            shown = foreign or sorted(p.name for p in entries)
            raise OutputExistsError(
                f"--force replaces only an empty folder or a previous adapter output, and {str(out)!r} holds "
                f"{'other files' if foreign else 'no ' + CONFIG_NAME}; it would have deleted: "
                f"{', '.join(shown[:10])}{' ...' if len(shown) > 10 else ''}.",
                "Pick another --out, or empty that folder yourself.",
            )
        return out
    ancestor = out.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputWriteError(f"Cannot create --out {str(out)!r}: {str(ancestor)!r} is a file, not a folder.", "Pick another --out.")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputWriteError(f"Cannot create --out {str(out)!r}: no permission to write in {str(ancestor)!r}.", "Pick a folder you can write to.")
    return out


def write_folder_atomically(
    out: Path | str, fill: Callable[[Path], None], *, force: bool, inputs: Mapping[str, Path] | None = None
) -> Path:
    """Call ``fill(tmp)`` on a fresh folder; when it returns, its files become ``out``.

    Any failure inside ``fill`` (verification included), SIGINT, or SIGTERM turned into an
    exception by the CLI, removes the temporary folder and leaves ``out`` as it was.
    """
    out = check_output(out, force=force, inputs=inputs)
    replacing = out.is_dir()
    staging_parent = out if replacing else out.parent
    tmp = None
    try:
        staging_parent.mkdir(parents=True, exist_ok=True)
        remove_leftovers(staging_parent, out.name)
        tmp = staging_parent / f".{out.name}{_PARTIAL}{os.getpid()}-{secrets.token_hex(4)}"
        tmp.mkdir()  # a plain mkdir: the user's umask decides the permissions, as for any folder
        fill(tmp)
        if replacing:
            written = {p.name for p in tmp.iterdir()}
            for name in sorted(written):
                os.replace(tmp / name, out / name)
            for stale in ADAPTER_OUTPUT_FILES - written:
                (out / stale).unlink(missing_ok=True)
            tmp.rmdir()
        else:
            tmp.rename(out)
    except BaseException as err:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, (OSError, SafetensorError)) and not isinstance(err, AdapterConvertError):
            raise write_error(err, out) from None
        raise
    return out


def write_error(err: BaseException, out: Path) -> OutputWriteError:
    """An OS-level write failure as one clear error; nothing partial is left (the caller removed it)."""
    code = getattr(err, "errno", None)
    text = str(err)
    if code == errno.ENOSPC or "No space left" in text or "StorageFull" in text:
        return OutputWriteError(f"The disk is full: writing {str(out)!r} failed, and nothing was written.", "Free some space, or pick an --out on another disk.")
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return OutputWriteError(f"No permission to write {str(out)!r} ({err.strerror if hasattr(err, 'strerror') else text}); nothing was written.", "Pick a folder you can write to.")
    return OutputWriteError(f"Writing {str(out)!r} failed ({type(err).__name__}: {text}); nothing was written.", "Check the path and the disk.")


def _is_leftover(path: Path, name: str) -> bool:
    return path.name.startswith(f".{name}{_PARTIAL}") or path.name.startswith(f".{name}{_OLD}")


def remove_leftovers(folder: Path, name: str) -> list[Path]:
    """Remove temporary folders of earlier runs on ``name`` whose process is gone (killed outright)."""
    removed = []
    for path in folder.glob(f".{name}.*"):
        if _is_leftover(path, name) and not _owner_alive(path.name):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _owner_alive(leftover_name: str) -> bool:
    """Whether the process that made ``.NAME.partial-PID-XXXX`` still runs (another conversion)."""
    pid_text = leftover_name.rsplit(_PARTIAL, 1)[-1].split("-", 1)[0] if _PARTIAL in leftover_name else ""
    if not pid_text.isdigit() or int(pid_text) == os.getpid():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
