"""Every failure huggingface_hub raises, translated to one typed error of ``adapter_convert.errors``
with the repo, what it was, and the next step: subclass first, one table in code."""

from __future__ import annotations

import httpx2
from huggingface_hub import constants, get_token
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from ..errors import (HubAuthError, HubError, HubFileMissingError, HubGatedError, HubRepoNotFoundError, HubRevisionNotFoundError,
                      HubUnreachableError)
from .references import HubReference


def hub_error(
    err: BaseException, ref: HubReference, *, what: str, token: str | None, writing: bool = False, retries: int = 0
) -> HubError:
    if isinstance(err, HubError):
        return err
    where = f"{ref.repo_id}" + (f"@{ref.revision}" if ref.revision else "")
    after = f", after {retries} retries" if retries else ""
    have_token = bool(token or get_token())
    if isinstance(err, GatedRepoError):
        return HubGatedError(
            f"The {what} {where} is gated: its owner must grant you access before you can download it.",
            f"Request access at {constants.ENDPOINT}/{ref.repo_id}, then pass a token of the account that has it (--token or HF_TOKEN).",
        )
    if isinstance(err, RepositoryNotFoundError):
        if not have_token:
            return HubAuthError(
                f"The {what} {where} was not found, or it is private and no token was given.",
                "Check the repo id; for a private repo pass --token, set HF_TOKEN, or run 'hf auth login'.",
            )
        return HubRepoNotFoundError(
            f"The {what} {where} was not found, or the token given may not read it.",
            "Check the repo id and that the token's account has access to it.",
        )
    if isinstance(err, RevisionNotFoundError):
        return HubRevisionNotFoundError(
            f"The {what} {ref.repo_id} has no revision {ref.revision!r}.", "Use a branch, tag or commit sha that exists in the repo."
        )
    if isinstance(err, LocalEntryNotFoundError):
        cause = err.__cause__ or err.__context__
        if isinstance(cause, OfflineModeIsEnabled) or constants.HF_HUB_OFFLINE:
            return HubUnreachableError(
                f"HF_HUB_OFFLINE is set and the {what} {where} is not in the Hub cache ({constants.HF_HUB_CACHE}).",
                "Run once online to cache it, or unset HF_HUB_OFFLINE.",
            )
        if isinstance(cause, HfHubHTTPError) and cause.response is not None:
            return HubUnreachableError(
                f"The Hub answered HTTP {cause.response.status_code} for the {what} {where}{after}.",
                "The Hub may be down; try again later.",
            )
        return HubUnreachableError(
            f"Could not reach the Hub at {constants.ENDPOINT} for the {what} {where} ({type(cause or err).__name__}{after}).",
            "Check the network (and HF_ENDPOINT), or use HF_HUB_OFFLINE=1 if it is cached.",
        )
    if isinstance(err, EntryNotFoundError):
        return HubFileMissingError(f"A file of the {what} {where} is missing on the Hub: {err}", "Check the repo's files.")
    if isinstance(err, HfHubHTTPError) and err.response is not None:
        status = err.response.status_code
        if status in (401, 403):
            if not have_token:
                return HubAuthError(f"No Hub token was given, and the Hub refused access to {where} (HTTP {status}).",
                                    "Pass --token, set HF_TOKEN, or run 'hf auth login'.")
            action = "write to" if writing else "read"
            fix = "Pass a token with write access (--token or HF_TOKEN)." if writing else "Pass a token with access."
            return HubAuthError(f"The Hub refused to let this token {action} {where} (HTTP {status}).", fix)
        if writing:
            return HubUnreachableError(f"The Hub answered HTTP {status} for the {what} {where}{after}.",
                                       "Try again later." if status >= 500 else "Check the request.")
        downloading = "/resolve/" in str(err.response.request.url)
        return HubUnreachableError(
            f"The Hub answered HTTP {status} {'while downloading a file of' if downloading else 'for'} the {what} {where}{after}.",
            "Try again later; files already downloaded stay in the Hub cache." if status >= 500 else "Check the request.",
        )
    if isinstance(err, (httpx2.TransportError, OSError)):
        return HubUnreachableError(
            f"Could not reach the Hub at {constants.ENDPOINT} for the {what} {where} ({type(err).__name__}: {str(err).rstrip('.')}{after}).",
            "Check the network and HF_ENDPOINT." if writing else
            "Check the network and HF_ENDPOINT, or use HF_HUB_OFFLINE=1 if it is cached.",
        )
    if isinstance(err, HFValidationError):
        return HubRepoNotFoundError(f"{where!r} is not a valid Hub repo id: {err}", "Use the form user/name or user/name@revision.")
    raise err
