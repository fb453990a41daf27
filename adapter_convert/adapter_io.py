"""Read an adapter folder from disk, refusing anything malformed before any work starts."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import PeftConfig
# peft's file names, under the names the package uses: adapter_config.json, adapter_model.safetensors, adapter_model.bin
from peft.utils import CONFIG_NAME
from peft.utils import SAFETENSORS_WEIGHTS_NAME as WEIGHTS_NAME
from peft.utils import WEIGHTS_NAME as PICKLE_WEIGHTS_NAME
from safetensors import SafetensorError
from safetensors.torch import load_file

from .errors import BadAdapterError, SourceNotFoundError, UnsupportedError

SUPPORTED_PEFT_TYPES = ("LORA", "IA3")


@dataclass
class AdapterCheckpoint:
    folder: Path
    config: PeftConfig
    tensors: dict[str, torch.Tensor]
    license: str | None = None  # from the adapter's model card (README.md metadata); None when it states none

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
    _check_lora_numbers(raw, path)
    try:
        config = PeftConfig.from_pretrained(str(folder))
    except (TypeError, ValueError) as err:
        raise BadAdapterError(f"peft cannot read {str(path)!r}: {err}", "Fix or re-save the adapter config.") from None
    check_carried_fields(config)
    return config


# Config fields that name modules of the source model in ways we cannot carry over.
# target_parameters (LoRA on the experts' 3-D weights) is carried over as it is, between equal expert layouts
_REFUSED_FIELDS = ("layer_replication", "trainable_token_indices")


def check_carried_fields(config: PeftConfig) -> None:
    """Settings of the adapter that name the source model in ways no conversion can carry over."""
    for name in _REFUSED_FIELDS:
        if getattr(config, name, None):
            raise UnsupportedError(
                f"The adapter config sets {name}={getattr(config, name)!r}, which adapter-convert cannot carry over.",
                f"Retrain without {name}.",
            )
    if getattr(config, "bias", "none") != "none" or getattr(config, "lora_bias", False):
        raise UnsupportedError(
            f"The adapter trains biases (bias={config.bias!r}); only bias='none' adapters convert.",
            "Retrain with bias='none', or convert the bias-free part by editing the adapter.",
        )


def _check_lora_numbers(raw: dict, path: Path) -> None:
    """peft takes r and lora_alpha as they come; a rank of "four" must not reach the output."""
    if raw["peft_type"] != "LORA":
        return

    def bad(field: str, value) -> BadAdapterError:
        return BadAdapterError(f"{str(path)!r} sets {field} to {value!r}, which is not a valid number here.",
                               "Fix the adapter config: r is a whole number of 1 or more, lora_alpha a positive number.")

    rank, alpha = raw.get("r", 8), raw.get("lora_alpha", 8)
    if not _positive(rank, whole=True):
        raise bad("r", rank)
    if not _positive(alpha, whole=False):
        raise bad("lora_alpha", alpha)
    for field, whole in (("rank_pattern", True), ("alpha_pattern", False)):
        pattern = raw.get(field) or {}
        if not isinstance(pattern, dict):
            raise bad(field, pattern)
        for key, value in pattern.items():
            if not _positive(value, whole=whole):
                raise bad(f"{field}[{key!r}]", value)


def _positive(value, *, whole: bool) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (whole and not isinstance(value, int)):
        return False
    return math.isfinite(value) and value > 0


def all_finite(tensor: torch.Tensor) -> bool:
    """Whether every value is finite. A sum is NaN or Inf whenever one value is, so one reduction
    settles the usual case without a boolean copy of the tensor (a tenth of a direct conversion's
    time on a 7B-sized adapter); only a sum that overflows falls back to checking every value."""
    return bool(torch.isfinite(tensor.sum())) or bool(torch.isfinite(tensor).all())


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
        if not isinstance(tensors, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in tensors.items()):
            what = type(tensors).__name__ if not isinstance(tensors, dict) else "a dict holding non-tensor values"
            raise BadAdapterError(
                f"{str(folder / PICKLE_WEIGHTS_NAME)!r} holds {what}, not a state dict of tensors.",
                "Point ADAPTER at a folder saved by PeftModel.save_pretrained.",
            )
    else:
        raise BadAdapterError(f"{str(folder)!r} has no {WEIGHTS_NAME}.", "Point ADAPTER at a complete adapter folder.")
    if not tensors:
        raise BadAdapterError(f"The adapter in {str(folder)!r} holds no tensors.", "Re-save the trained adapter.")
    integral = [name for name, t in tensors.items() if not t.is_floating_point()]
    if integral:
        raise BadAdapterError(
            f"The adapter's tensor {integral[0]!r} holds {tensors[integral[0]].dtype} values; adapter weights are floating point.",
            "Point ADAPTER at a folder saved by PeftModel.save_pretrained.",
        )
    bad = [name for name, t in tensors.items() if not all_finite(t)]
    if bad:
        raise BadAdapterError(
            f"The adapter holds NaN or Inf values in {len(bad)} tensor(s), first {bad[0]!r}.",
            "The training diverged; convert a checkpoint from before that.",
        )
    return AdapterCheckpoint(folder=folder, config=config, tensors=tensors, license=card_license(folder))


def card_license(folder: Path) -> str | None:
    """The ``license`` of the model card in ``folder`` (README.md front matter), or None: no card,
    none stated, or a card whose metadata does not parse (a license is carried, never guessed)."""
    import yaml
    from huggingface_hub import metadata_load

    try:
        license_ = (metadata_load(folder / "README.md") or {}).get("license") if (folder / "README.md").is_file() else None
    except (yaml.YAMLError, ValueError, OSError):  # malformed front matter
        return None
    return str(license_) if isinstance(license_, str) and license_.strip() else None
