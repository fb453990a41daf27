"""One base error; each subclass also inherits the builtin it refines and carries its exit code.

Messages are one paragraph: what is wrong (quoting the bad value) and what to do about it.
"""

from __future__ import annotations


class AdapterConvertError(Exception):
    """Base of every error adapter-convert reports to a user."""

    exit_code = 1
    label = "internal error"

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem} {fix}" if fix else problem)


class UsageError(AdapterConvertError, ValueError):
    """Options that cannot go together."""

    exit_code = 2
    label = "bad usage (options, option values)"


class BadAdapterError(AdapterConvertError, ValueError):
    """The adapter folder is missing, malformed, corrupt or inconsistent with its base."""

    exit_code = 3
    label = "bad adapter"


class UnsupportedError(AdapterConvertError, NotImplementedError):
    """A valid input that this version cannot convert (adapter type, architecture, option)."""

    exit_code = 4
    label = "unsupported input"


class LayerMapError(AdapterConvertError, ValueError):
    """A layer map that cannot be built or is out of range."""

    exit_code = 5
    label = "bad layer map"


class OutputExistsError(AdapterConvertError, FileExistsError):
    """The output folder exists and --force was not given."""

    exit_code = 6
    label = "output exists, or would overlap an input"


class VerificationError(AdapterConvertError, RuntimeError):
    """The converted adapter did not load cleanly with peft onto the target."""

    exit_code = 7
    label = "verification failed"


class WidthMismatchError(AdapterConvertError, ValueError):
    """Source and target modules differ in shape; a direct mapping is impossible."""

    exit_code = 8
    label = "widths differ"


class SourceNotFoundError(AdapterConvertError, FileNotFoundError):
    """A model or adapter location that does not exist."""

    exit_code = 9
    label = "source not found"


class BadModelConfigError(AdapterConvertError, ValueError):
    """A base model's config.json that is malformed or holds impossible sizes."""

    exit_code = 16
    label = "bad base model config"


class CalibrationDataError(AdapterConvertError, ValueError):
    """Calibration text that is missing, empty, not text, or malformed."""

    exit_code = 17
    label = "bad calibration data"


class OutputWriteError(AdapterConvertError, OSError):
    """The output cannot be written: no permission, disk full, a parent that is a file."""

    exit_code = 18
    label = "cannot write the output"


class CompatibilityUnknownError(AdapterConvertError, RuntimeError):
    """--align auto could not measure whether the two bases share a hidden space (no weights readable)."""

    exit_code = 19
    label = "compatibility could not be measured"


class FidelityBelowMinimumError(AdapterConvertError, RuntimeError):
    """--min-fidelity: the measured fidelity is below the minimum, or this conversion measures none."""

    exit_code = 20
    label = "fidelity below --min-fidelity (nothing pushed)"


class HubError(AdapterConvertError, OSError):
    """A Hub operation failed; subclasses say which way."""

    exit_code = 15


class HubRepoNotFoundError(HubError):
    exit_code = 10
    label = "Hub repo not found"


class HubAuthError(HubError):
    """No token, or a token that may not read or write the repo."""

    exit_code = 11
    label = "Hub authentication"


class HubGatedError(HubError):
    exit_code = 12
    label = "gated repo"


class HubRevisionNotFoundError(HubError):
    exit_code = 13
    label = "revision not found"


class HubFileMissingError(HubError):
    exit_code = 14
    label = "file missing on the Hub"


class HubUnreachableError(HubError):
    """Network down, timeouts, server errors after retries, or offline mode without a cached copy."""

    exit_code = 15
    label = "Hub unreachable (network, timeouts, server errors after retries, offline)"


# a process stopped by a signal exits 128 + the signal's number (after removing its partial output)
SIGNAL_EXIT_CODES = {130: "interrupted (Ctrl-C, SIGINT)", 143: "terminated (SIGTERM)"}


def exit_code_table() -> list[tuple[int, str]]:
    """(exit code, meaning) for every error above, in code order: the one source for help and docs."""
    codes: dict[int, str] = {0: "ok", 1: AdapterConvertError.label}
    pending = [AdapterConvertError]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if "label" in vars(cls):
            codes.setdefault(cls.exit_code, cls.label)
    return sorted(codes.items())
