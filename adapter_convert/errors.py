"""One base error; each subclass also inherits the builtin it refines and carries its exit code.

Messages are one paragraph: what is wrong (quoting the bad value) and what to do about it.
"""

from __future__ import annotations


class AdapterConvertError(Exception):
    """Base of every error adapter-convert reports to a user."""

    exit_code = 1

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem} {fix}" if fix else problem)


class UsageError(AdapterConvertError, ValueError):
    """Options that cannot go together."""

    exit_code = 2


class BadAdapterError(AdapterConvertError, ValueError):
    """The adapter folder is missing, malformed, corrupt or inconsistent with its base."""

    exit_code = 3


class UnsupportedError(AdapterConvertError, NotImplementedError):
    """A valid input that this version cannot convert (adapter type, architecture, option)."""

    exit_code = 4


class LayerMapError(AdapterConvertError, ValueError):
    """A layer map that cannot be built or is out of range."""

    exit_code = 5


class OutputExistsError(AdapterConvertError, FileExistsError):
    """The output folder exists and --force was not given."""

    exit_code = 6


class VerificationError(AdapterConvertError, RuntimeError):
    """The converted adapter did not load cleanly with peft onto the target."""

    exit_code = 7


class WidthMismatchError(AdapterConvertError, ValueError):
    """Source and target modules differ in shape; a direct mapping is impossible."""

    exit_code = 8


class SourceNotFoundError(AdapterConvertError, FileNotFoundError):
    """A model or adapter location that does not exist."""

    exit_code = 9


class HubError(AdapterConvertError, OSError):
    """A Hub operation failed; subclasses say which way."""

    exit_code = 15


class HubRepoNotFoundError(HubError):
    exit_code = 10


class HubAuthError(HubError):
    """No token, or a token that may not read or write the repo."""

    exit_code = 11


class HubGatedError(HubError):
    exit_code = 12


class HubRevisionNotFoundError(HubError):
    exit_code = 13


class HubFileMissingError(HubError):
    exit_code = 14


class HubUnreachableError(HubError):
    """Network down, timeouts, server errors after retries, or offline mode without a cached copy."""

    exit_code = 15
