"""Where and in what dtype alignment runs the two bases: pure choices from the request, the
checkpoints' configs and sizes, and the machine (a GPU seen, the memory available)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def load_dtype(asked: str | None, device: str, folders, configs, *, available: int | None) -> tuple[torch.dtype | str, str]:
    """The dtype the bases load in, and why. As asked (``--dtype``); on the CPU, float32 for
    half-precision checkpoints when both bases in float32 fit in half the available memory;
    else each checkpoint's own ("auto"). Measured on this project's CPU (docs/benchmarks.md
    section 7): a bfloat16 SmolLM2 -> gemma-3-270m conversion took 2.5x (ner) and 4.7x (types) as
    long as in float32, most of it the CPU copying gemma's 262k-row output weight on each bfloat16
    logits call; a GPU runs half precision fast, so there the checkpoint's own stays."""
    if asked:
        return getattr(torch, asked), f"--dtype {asked}"
    half = [c for c in configs if _config_dtype(c) in (torch.float16, torch.bfloat16)]
    if device != "cpu" or not half:
        return "auto", "each checkpoint's own"
    weights = sum(f.stat().st_size * 4 // max(1, (_config_dtype(c) or torch.float32).itemsize)
                  for folder, c in zip(folders, configs) for f in Path(folder).iterdir() if f.suffix in WEIGHT_SUFFIXES and f.is_file())
    if available is not None and 2 * weights > available:
        return "auto", f"each checkpoint's own: float32 would take {weights / 2**30:.1f} GiB of {available / 2**30:.1f} GiB available"
    return torch.float32, "float32 on the CPU (half-precision kernels run slower there)"


def _config_dtype(config) -> torch.dtype | None:
    value = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(value, str):
        value = getattr(torch, value, None)
    return value if isinstance(value, torch.dtype) else None


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation: Linux's MemAvailable, else the machine's
    physical memory (macOS); None where neither is known."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


def free_bytes(device: torch.device) -> int | None:
    """Bytes free for a new allocation on ``device``: a GPU's free memory, else the host's
    (``available_memory``); None where unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return available_memory() if device.type == "cpu" else None


def resolve_device(device: str | None) -> str:
    """The device alignment runs on: as asked, else cuda when torch sees one, else cpu."""
    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def training_autocast(model) -> torch.dtype | None:
    """The dtype training steps (and, with the frozen weights cast once, generations) compute in
    under autocast, or None for the weights' own. bfloat16 for float32 weights where the device
    computes it fast: a GPU that supports it, or a CPU with oneDNN's bfloat16 kernels
    (AVX512-BF16 or AMX). Measured on this project's CPU: a gemma-3-270m distillation step took
    0.67 s instead of 1.1 s (0.45 s with the weights cast once). The adapter's own parameters, the
    optimizer and every bits-per-byte check stay float32; only the matmuls round."""
    if model.dtype != torch.float32:
        return None
    device = model.device.type
    if device == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    if device == "cpu" and torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return torch.bfloat16
    return None
