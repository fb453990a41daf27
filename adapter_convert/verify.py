"""Load a written adapter with peft onto an empty-weights target model: the proof it is usable.

The target model is built on the meta device from its config, so no base weights are read and
no memory is spent on them; peft's own loader then reports missing and unexpected keys.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from peft import PeftConfig, get_peft_model, set_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import PretrainedConfig

from .adapter_io import WEIGHTS_NAME
from .errors import VerificationError
from .plan import head_labels
from .tasks import LABELLED, TASKS, model_class

_ADAPTER_KEY_MARKERS = ("lora_", "ia3_", ".modules_to_save.")


def empty_target_model(model_config: PretrainedConfig, *, task_type: str | None, bare: bool, num_labels: int | None):
    model_config = copy.deepcopy(model_config)
    if num_labels is not None and task_type in LABELLED:
        model_config.num_labels = num_labels
    auto_class = model_class(None) if bare else model_class(task_type, default=TASKS["CAUSAL_LM"].model_class)
    with torch.device("meta"):
        return auto_class.from_config(model_config)


def verify_adapter_folder(folder: Path, model_config: PretrainedConfig, *, bare: bool, written: dict[str, torch.Tensor] | None = None) -> None:
    """Load ``folder`` with peft onto the target; raise VerificationError unless every adapter key loads.

    ``written``: the tensors just saved into ``folder``. Then the file's header is checked against
    them (names, shapes, dtypes: a few KB read) and peft loads them from memory, instead of reading
    the whole file back: the proof that the folder loads, without a second pass over its bytes."""
    config = PeftConfig.from_pretrained(str(folder))
    tensors = load_file(folder / WEIGHTS_NAME) if written is None else _matching_header(folder / WEIGHTS_NAME, written)
    num_labels = head_labels(tensors, config.modules_to_save)
    model = empty_target_model(model_config, task_type=config.task_type, bare=bare, num_labels=num_labels)
    try:
        peft_model = get_peft_model(model, config, low_cpu_mem_usage=True)
        result = set_peft_model_state_dict(peft_model, tensors, low_cpu_mem_usage=True)
    except (RuntimeError, ValueError, KeyError) as err:
        raise VerificationError(
            f"peft could not load the converted adapter onto {model_config.model_type}: {err}",
            "This is a bug in adapter-convert's mapping for this pair; please report it with the --dry-run plan.",
        ) from None
    missing = [k for k in result.missing_keys if any(m in k for m in _ADAPTER_KEY_MARKERS)]
    if missing or result.unexpected_keys:
        raise VerificationError(
            f"peft loaded the converted adapter with {len(missing)} missing and {len(result.unexpected_keys)} "
            f"unexpected keys (first: {(missing or result.unexpected_keys)[0]!r}).",
            "Nothing was written. Please report this with the --dry-run plan.",
        )


def _matching_header(path: Path, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as handle:
        on_disk = {name: (handle.get_slice(name).get_dtype(), tuple(handle.get_slice(name).get_shape())) for name in handle.keys()}
    in_memory = {name: (_SAFETENSORS_DTYPES.get(t.dtype, str(t.dtype)), tuple(t.shape)) for name, t in tensors.items()}
    if on_disk != in_memory:
        differ = sorted(set(on_disk.items()) ^ set(in_memory.items()))
        raise VerificationError(f"The written {path.name} does not hold the converted tensors (first difference: {differ[0]!r}).",
                                "Nothing was written. Check the disk, then run again.")
    return tensors


_SAFETENSORS_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
                       torch.int64: "I64", torch.int32: "I32", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL"}
