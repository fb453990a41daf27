"""What a conversion as planned will cost before it runs: the files it downloads (local ones
listed, a Hub repo's through the caller's ``file_sizes``) and its peak memory (estimates,
documented as such). ``inspect`` reports them; nothing here reads a tensor.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path

from .sources import BASE_FILES, ResolvedSource
from .summary import Costs, DownloadFile, Downloads, ResourcePrediction

# Memory a conversion needs beyond its tensors: the Python process with torch, transformers and
# peft imported (measured at about 0.55 GB RSS on this project's CPU machine, benchmarks/).
LIBRARY_BYTES = 600 * 2**20


def predict_costs(adapter: ResolvedSource, bases: tuple[ResolvedSource, ResolvedSource], *, adapter_bytes: int, needs_weights: bool,
                  resources: ResourcePrediction | None, file_sizes=None) -> Costs:
    """Downloads and peak memory of a conversion: ``adapter`` and the two ``bases`` as resolved,
    ``adapter_bytes`` its tensors, ``needs_weights`` whether the plan reads base weights,
    ``resources`` the alignment's predicted memory (the summary's; None for a direct mapping).
    ``file_sizes(source, patterns) -> {file: bytes}`` lists a Hub source's files (None: local only)."""
    from .hub import ADAPTER_FILES, WEIGHT_FILES

    files: list[tuple[DownloadFile, bool]] = []  # (file, local)
    base_patterns = BASE_FILES + (WEIGHT_FILES if needs_weights else [])
    wanted = [(adapter, ADAPTER_FILES)] + [(base, base_patterns) for base in bases]
    weight_bytes = 0
    for source, patterns in wanted:
        sizes = _sizes(source, patterns, file_sizes)
        for name, size in sorted(sizes.items()):
            files.append((DownloadFile(repo=source.id, file=name, bytes=size), source.repo_id is None))
            if name.endswith(".safetensors") and source is not adapter:
                weight_bytes += size
    # direct: the adapter read, its converted copy, and a verification load of that copy;
    # aligned: align/budget.py's prediction (both models, activations, the statistics of one pass)
    peak = LIBRARY_BYTES + 3 * adapter_bytes + (resources.peak_bytes if resources else weight_bytes if needs_weights else 0)
    remote = tuple(file for file, local in files if not local)
    return Costs(
        resources=resources,
        downloads=Downloads(files=remote, bytes=sum(f.bytes for f in remote)),
        base_weights_needed=needs_weights,
        base_weight_bytes=weight_bytes if needs_weights else 0,
        predicted_peak_bytes=peak,
        note="estimates: libraries + 3 x the adapter" + (" + the alignment's predicted peak (models, activations, statistics)"
                                                          if resources else " + both bases' weights as stored" if needs_weights else ""),
    )


def _sizes(source: ResolvedSource, patterns: list[str], file_sizes) -> dict[str, int]:
    if source.repo_id is None or file_sizes is None:
        folder = Path(source.path)
        return {p.name: p.stat().st_size for p in folder.iterdir() if p.is_file() and any(fnmatch.fnmatch(p.name, pat) for pat in patterns)}
    return file_sizes(source, patterns)
