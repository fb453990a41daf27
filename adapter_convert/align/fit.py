"""One capture point's fit with a method of ``alignment_methods.METHODS``."""

from __future__ import annotations

import importlib

import torch

from ..alignment_methods import METHODS
from . import correlation, lstsq
from .stats import PairStats

FITTERS = {name: importlib.import_module(f".{name}", __package__) for name in METHODS}  # the module of each method


def fit_point(stats: PairStats, kind: str, method: str, *, ridge: float) -> dict:
    """One capture point's fit with ``method``: ``map`` (a dense selection, the head's dense
    matrix, or a factored ``lstsq.Regression`` that folds without forming its matrix), ``score``
    and ``score_name``, and for inputs the activation evidence: ``identity_r2`` (a copy) and
    ``linear_r2`` (the best linear map). ``kind``: "in" (student -> teacher, a module input),
    "head" (the same, for the last hidden state) or "out" (teacher -> student, a module output).
    Releases what it can of ``stats`` as it goes; the caller drops the rest."""
    assigned = correlation.assign(stats)  # every method starts from (or shrinks toward) the paper's assignment
    if kind == "out":
        return FITTERS[method].fit_map(stats, kind, assigned, ridge=ridge)
    identity = lstsq.identity_r2(stats)  # before any fit releases the Grams (it reads their diagonals only)
    result = {"identity_r2": None if identity is None else round(identity, 4)}
    result |= FITTERS[method].fit_map(stats, kind, assigned, ridge=ridge)
    if "linear_r2" not in result:  # the evidence the method did not already compute
        result["linear_r2"] = lstsq.Regression(stats, x="s", ridge=lstsq.DEFAULT_RIDGE, prior=assigned[:2], release=True).r_squared()
    if kind == "head" and not isinstance(result["map"], torch.Tensor):
        result["map"] = result["map"].matrix()
    return result
