"""Fold alignment maps into an adapter: pure tensor math, the rank never changes.

LoRA: ``A' = A P_in`` (r x d_in_s), ``B' = P_out B`` (d_out_s x r). A selection map (the
correlation method) makes this plain column and row picking; DoRA magnitudes and IA3 output
vectors follow the picked rows. A task head reading the last hidden state: ``W' = W P_hidden``.
"""

from __future__ import annotations

import torch

from ..errors import UnsupportedError
from ..transform import AdapterModule, Ia3Module, LoraModule


def is_selection(matrix: torch.Tensor) -> bool:
    return bool(((matrix == 0) | (matrix == 1)).all() and (matrix.sum(0) <= 1).all() and (matrix.sum(1) <= 1).all())


def fold_module(module: AdapterModule, p_in: torch.Tensor, p_out: torch.Tensor) -> AdapterModule:
    """``p_in`` (d_in_t x d_in_s): student input -> teacher input; ``p_out`` (d_out_s x d_out_t)."""
    if isinstance(module, LoraModule):
        dtype = module.A.dtype
        A = (module.A.double() @ p_in).to(dtype)
        B = (p_out @ module.B.double()).to(dtype)
        magnitude = None
        if module.magnitude is not None:
            if not is_selection(p_out):
                raise UnsupportedError(
                    "DoRA magnitudes can only follow a selection of output dimensions.", "Use --align correlation for DoRA adapters."
                )
            magnitude = (p_out @ module.magnitude.double()).to(module.magnitude.dtype)
        return LoraModule(A, B, module.scaling, magnitude)
    if isinstance(module, Ia3Module):
        if not (is_selection(p_in) and is_selection(p_out)):
            raise UnsupportedError("IA3 vectors can only follow a selection of dimensions.", "Use --align correlation for IA3 adapters.")
        vector = module.vector.double()
        # unselected student dimensions keep scale 1 (no change)
        if module.scales_inputs:  # (1, d_in_t) -> (1, d_in_s)
            return Ia3Module((vector @ p_in + (1 - p_in.sum(0, keepdim=True))).to(module.vector.dtype))
        # (d_out_t, 1) -> (d_out_s, 1)
        return Ia3Module((p_out @ vector + (1 - p_out.sum(1, keepdim=True))).to(module.vector.dtype))
    raise TypeError(type(module))


def fold_head(params: dict[str, torch.Tensor], p_hidden: torch.Tensor) -> dict[str, torch.Tensor]:
    """A linear head ``logits = W h + b`` read through ``h_t ~ P h_s``: ``W' = W P``; b unchanged."""
    if set(params) - {"weight", "bias"}:
        raise UnsupportedError(
            f"Only a single linear task head can follow an alignment; this one has {sorted(params)}.",
            "Convert onto a target of the same hidden size, or retrain the head on the target.",
        )
    out = dict(params)
    weight = params["weight"]
    out["weight"] = (weight.double() @ p_hidden).to(weight.dtype)
    return out
