"""A fresh start: the target's own new adapter with the source's kind, rank and scaling on the
mapped modules, initialised as peft initialises one (LoRA: Kaiming-uniform A, zero B, so the
start is the target base itself; DoRA: magnitudes the target weight's row norms; IA3: ones).

Between unrelated bases the folded maps carry the adapter's update into directions the target
reads differently (docs/benchmarks.md section 7), so output-space distillation starts better from
nothing: it reads no source tensor and needs no calibration pass. Pure tensor math on shapes and,
for DoRA, the target's weights."""

from __future__ import annotations

import math

import torch

from ..transform import AdapterModule, Ia3Module, LoraModule


def weight_out_in(module: torch.nn.Module) -> torch.Tensor:
    """The module's weight as (out, in): a Linear's own, a Conv1D's (gpt2) transposed."""
    weight = module.weight
    return weight if isinstance(module, torch.nn.Linear) or hasattr(module, "in_features") else weight.T


def fresh_module(like: AdapterModule, target: torch.nn.Module, *, generator: torch.Generator) -> AdapterModule:
    """A new adapter module for ``target`` of the same kind, rank and scaling as ``like``."""
    weight = weight_out_in(target)
    out_features, in_features = weight.shape
    if isinstance(like, Ia3Module):
        shape = (1, in_features) if like.scales_inputs else (out_features, 1)
        return Ia3Module(torch.ones(shape, dtype=like.vector.dtype))
    A = torch.empty(like.rank, in_features, dtype=torch.float32)
    bound = 1 / math.sqrt(in_features)  # kaiming_uniform_(a=sqrt(5)), peft's default for lora_A
    A.uniform_(-bound, bound, generator=generator)
    B = torch.zeros(out_features, like.rank, dtype=like.B.dtype)
    magnitude = None
    if like.magnitude is not None:  # DoRA: with B = 0 the adapted weight is W, its row norms the magnitude
        magnitude = weight.detach().float().norm(dim=1).to("cpu", like.magnitude.dtype)
    return LoraModule(A.to(like.A.dtype), B, like.scaling, magnitude)
