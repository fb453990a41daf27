"""Read an adapter folder from disk, refusing anything malformed before any work starts."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import PeftConfig
from safetensors import SafetensorError
from safetensors.torch import load_file

from .errors import BadAdapterError, SourceNotFoundError, UnsupportedError

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PICKLE_WEIGHTS_NAME = "adapter_model.bin"
SUPPORTED_PEFT_TYPES = ("LORA", "IA3")


@dataclass
class AdapterCheckpoint:
    folder: Path
    config: PeftConfig
    tensors: dict[str, torch.Tensor]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())


def read_adapter_config(folder: Path) -> PeftConfig:
    path = folder / CONFIG_NAME
    if not folder.is_dir():
        raise SourceNotFoundError(f"Adapter folder {str(folder)!r} does not exist.", "Check the path (or the Hub id).")
    if not path.is_file():
        raise BadAdapterError(
            f"{str(folder)!r} has no {CONFIG_NAME}, so it is not a PEFT adapter folder.",
            "Point ADAPTER at the folder that PeftModel.save_pretrained wrote.",
        )
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BadAdapterError(f"{str(path)!r} is not valid JSON ({err}).", "Re-save the adapter with peft.") from None
    if not isinstance(raw, dict) or "peft_type" not in raw:
        raise BadAdapterError(f"{str(path)!r} has no 'peft_type' field.", "Re-save the adapter with peft.")
    if raw["peft_type"] not in SUPPORTED_PEFT_TYPES:
        raise UnsupportedError(
            f"Adapter type {raw['peft_type']!r} is not supported.",
            f"adapter-convert converts {', '.join(SUPPORTED_PEFT_TYPES)} adapters (LoRA including DoRA and rsLoRA).",
        )
    try:
        return PeftConfig.from_pretrained(str(folder))
    except (TypeError, ValueError) as err:
        raise BadAdapterError(f"peft cannot read {str(path)!r}: {err}", "Fix or re-save the adapter config.") from None


def read_adapter(folder: Path, *, allow_pickle: bool = False) -> AdapterCheckpoint:
    folder = Path(folder)
    config = read_adapter_config(folder)
    weights = folder / WEIGHTS_NAME
    if weights.is_file():
        try:
            tensors = load_file(weights)
        except (SafetensorError, OSError) as err:
            raise BadAdapterError(
                f"{str(weights)!r} is corrupt or truncated ({err}).", "Download or save the adapter again."
            ) from None
    elif (folder / PICKLE_WEIGHTS_NAME).is_file():
        if not allow_pickle:
            raise BadAdapterError(
                f"{str(folder)!r} holds only a pickled {PICKLE_WEIGHTS_NAME}; pickles can run code when loaded.",
                "Re-save the adapter as safetensors, or pass --allow-pickle to load it with torch.load(weights_only=True).",
            )
        try:
            tensors = torch.load(folder / PICKLE_WEIGHTS_NAME, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises many types for a bad pickle
            raise BadAdapterError(f"Cannot load {PICKLE_WEIGHTS_NAME}: {err}", "Re-save the adapter as safetensors.") from None
    else:
        raise BadAdapterError(f"{str(folder)!r} has no {WEIGHTS_NAME}.", "Point ADAPTER at a complete adapter folder.")
    if not tensors:
        raise BadAdapterError(f"The adapter in {str(folder)!r} holds no tensors.", "Re-save the trained adapter.")
    bad = [name for name, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise BadAdapterError(
            f"The adapter holds NaN or Inf values in {len(bad)} tensor(s), first {bad[0]!r}.",
            "The training diverged; convert a checkpoint from before that.",
        )
    return AdapterCheckpoint(folder=folder, config=config, tensors=tensors)
