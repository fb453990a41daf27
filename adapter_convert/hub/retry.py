"""Retries around what huggingface_hub does not retry itself, a count of the retries it does (for
the error message, instead of a warning line each), and the ``adapter_convert.hub`` logger that
prints this package's warnings to stderr."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import httpx2
from huggingface_hub.errors import HfHubHTTPError

RETRY_STATUS = (408, 429, 500, 502, 503, 504)  # huggingface_hub's own list
MAX_RETRIES = 5

logger = logging.getLogger("adapter_convert.hub")  # the package's warnings (pull.py: a cached snapshot used)


class _StderrHandler(logging.Handler):
    """Writes to the ``sys.stderr`` of the moment (the terminal, or a test runner's capture)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(f"Warning: {record.getMessage()}\n")
            sys.stderr.flush()
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
    logger.addHandler(_StderrHandler(logging.WARNING))


class _RetryCounter(logging.Handler):
    """Counts the retries huggingface_hub logs (and keeps its per-retry warnings off the terminal)."""

    MARKERS = ("Retrying in", "Trying to resume download", "Rate limited")

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.retries = 0

    def emit(self, record: logging.LogRecord) -> None:
        if any(marker in record.getMessage() for marker in self.MARKERS):
            self.retries += 1


@contextlib.contextmanager
def _counting_retries() -> Iterator[_RetryCounter]:
    """During one Hub call, the counter stands in for huggingface_hub's own stderr handler: the
    retries end up as a number in our error message instead of a line each on the terminal."""
    logger = logging.getLogger("huggingface_hub")
    counter, own_handlers = _RetryCounter(), list(logger.handlers)
    for handler in own_handlers:
        logger.removeHandler(handler)
    logger.addHandler(counter)
    try:
        yield counter
    finally:
        logger.removeHandler(counter)
        for handler in own_handlers:
            logger.addHandler(handler)


# ---- retries ---------------------------------------------------------------------------------

T = TypeVar("T")
_sleep = time.sleep  # the waits between tries (tests make them instant)


def wait(seconds: float) -> None:
    """One wait between tries (through ``_sleep``, which tests replace)."""
    _sleep(seconds)


def _transient(err: BaseException) -> bool:
    """An answer or a failure worth another try: 408/429/5xx, or a connection that failed."""
    if isinstance(err, HfHubHTTPError) and err.response is not None:
        return err.response.status_code in RETRY_STATUS
    return isinstance(err, httpx2.TransportError) and not isinstance(err, (httpx2.ProxyError, httpx2.UnsupportedProtocol))


def _retrying(call: Callable[[], T], counter: _RetryCounter, *, retry_if: Callable[[BaseException], bool] = _transient) -> T:
    """``call()``, tried again after huggingface_hub's waits (1, 2, 4, 8, 8 s) while ``retry_if``
    says the failure is transient. Only for calls that are safe to repeat."""
    wait = 1.0
    for attempt in range(MAX_RETRIES + 1):
        try:
            return call()
        except Exception as err:
            if attempt == MAX_RETRIES or not retry_if(err):
                raise
        counter.retries += 1
        _sleep(wait)
        wait = min(8.0, wait * 2)
    raise AssertionError("unreachable")


def _request_of(err: BaseException) -> httpx2.Request | None:
    try:
        if isinstance(err, HfHubHTTPError):
            return err.response.request if err.response is not None else None
        return err.request if isinstance(err, httpx2.RequestError) else None
    except RuntimeError:  # an error raised without its request
        return None


def _request_method(err: BaseException) -> str | None:
    request = _request_of(err)
    return request.method if request is not None else None


_BACKOFF_PATHS = ("/tree/", "/preupload/")  # requests huggingface_hub sends through http_backoff itself


def _api_needs_retry(err: BaseException) -> bool:
    """A transient failure of an API call, unless huggingface_hub already retried that request."""
    request = _request_of(err)
    return _transient(err) and not (request is not None and any(part in request.url.path for part in _BACKOFF_PATHS))


def _download_needs_retry(err: BaseException) -> bool:
    """A transient failure of ``snapshot_download`` that huggingface_hub did not already retry:
    a file GET answered 5xx (it retries only 408/429 there), or a HEAD or listing whose connection
    dropped or broke. Time-outs, refused connections and cut file GETs it retried itself."""
    if isinstance(err, HfHubHTTPError) and err.response is not None:
        request = err.response.request
        return err.response.status_code >= 500 and request.method == "GET" and "/resolve/" in str(request.url)
    if isinstance(err, (httpx2.TimeoutException, httpx2.ConnectError)):
        return False
    if isinstance(err, httpx2.RemoteProtocolError):
        return _request_method(err) != "GET"  # a file GET that drops is resumed by huggingface_hub
    return isinstance(err, httpx2.NetworkError)
