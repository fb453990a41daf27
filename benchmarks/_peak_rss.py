"""Peak resident memory of a block of code: RSS sampled every 5 ms from /proc/self/statm.
Imported by the benchmark subprocesses; ``ru_maxrss`` would be hidden by import-time peaks."""

from __future__ import annotations

import os
import threading


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakRSS:
    """``with PeakRSS() as rss: ...`` then ``rss.peak - rss.start`` is what the block added at its peak."""

    def __enter__(self) -> PeakRSS:
        self.start = self.peak = rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss_mb())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())
