"""Fold alignment maps into an adapter: pure tensor math, the rank never changes.

LoRA: ``A' = A P_in`` (r x d_in_s), ``B' = P_out B`` (d_out_s x r). A selection map (the
correlation method) makes this plain column and row picking; DoRA magnitudes and IA3 output
vectors follow the picked rows. A task head reading the last hidden state: ``W' = W P_hidden``.

A map is a dense matrix, or a factored least-squares fit (``lstsq.Regression``) that computes
``A M`` and ``M B`` without ever forming ``M``. The input and output sides fold separately
(``fold_input``, ``fold_output``), so each can be folded as soon as its statistics are fitted.
"""

from __future__ import annotations

import torch

from ..errors import UnsupportedError
from ..transform import AdapterModule, Ia3Module, LoraModule


def is_selection(matrix) -> bool:
    if not isinstance(matrix, torch.Tensor):
        return False
    return bool(((matrix == 0) | (matrix == 1)).all() and (matrix.sum(0) <= 1).all() and (matrix.sum(1) <= 1).all())


def _left(X: torch.Tensor, p) -> torch.Tensor:
    return X.double() @ p.to(X.device) if isinstance(p, torch.Tensor) else p.left(X)


def _right(p, Y: torch.Tensor) -> torch.Tensor:
    return p.to(Y.device) @ Y.double() if isinstance(p, torch.Tensor) else p.right(Y)


def fold_input(module: AdapterModule, p_in) -> AdapterModule:
    """``p_in`` (d_in_t x d_in_s): student input -> teacher input."""
    if isinstance(module, LoraModule):
        return LoraModule(_left(module.A, p_in).to(module.A.dtype), module.B, module.scaling, module.magnitude)
    if isinstance(module, Ia3Module):
        if not module.scales_inputs:
            return module
        if not is_selection(p_in):
            raise UnsupportedError("IA3 vectors can only follow a selection of dimensions.", "Use --align correlation for IA3 adapters.")
        # unselected student dimensions keep scale 1 (no change); (1, d_in_t) -> (1, d_in_s)
        vector = module.vector.double()
        return Ia3Module((vector @ p_in + (1 - p_in.sum(0, keepdim=True))).to(module.vector.dtype))
    raise TypeError(type(module))


def fold_output(module: AdapterModule, p_out) -> AdapterModule:
    """``p_out`` (d_out_s x d_out_t): teacher output -> student output."""
    if isinstance(module, LoraModule):
        B = _right(p_out, module.B).to(module.B.dtype)
        magnitude = None
        if module.magnitude is not None:
            if not is_selection(p_out):
                raise UnsupportedError(
                    "DoRA magnitudes can only follow a selection of output dimensions.", "Use --align correlation for DoRA adapters."
                )
            magnitude = (p_out @ module.magnitude.double()).to(module.magnitude.dtype)
        return LoraModule(module.A, B, module.scaling, magnitude)
    if isinstance(module, Ia3Module):
        if module.scales_inputs:
            return module
        if not is_selection(p_out):
            raise UnsupportedError("IA3 vectors can only follow a selection of dimensions.", "Use --align correlation for IA3 adapters.")
        vector = module.vector.double()  # (d_out_t, 1) -> (d_out_s, 1)
        return Ia3Module((p_out @ vector + (1 - p_out.sum(1, keepdim=True))).to(module.vector.dtype))
    raise TypeError(type(module))


def fold_module(module: AdapterModule, p_in, p_out) -> AdapterModule:
    """``p_in`` (d_in_t x d_in_s): student input -> teacher input; ``p_out`` (d_out_s x d_out_t)."""
    if isinstance(module, Ia3Module) and not (is_selection(p_in) and is_selection(p_out)):
        raise UnsupportedError("IA3 vectors can only follow a selection of dimensions.", "Use --align correlation for IA3 adapters.")
    return fold_output(fold_input(module, p_in), p_out)


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
