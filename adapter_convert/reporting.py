"""Where the stages report progress: the interface the pipeline calls and the CLI draws. Free of
heavy imports, so the CLI defines its reporter without loading torch."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator


class Reporter:
    """Where the pipeline reports progress. The default says nothing; the CLI draws bars."""

    def stage(self, message: str) -> None:
        pass

    @contextlib.contextmanager
    def progress(self, description: str, total: int) -> Iterator[Callable[..., None]]:
        """Yields ``advance(info=None, amount=1)``; ``info`` (a loss, say) may be shown beside the bar."""
        yield lambda info=None, amount=1: None
