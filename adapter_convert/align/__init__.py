"""Hidden-space alignment between a source (teacher) and a target (student) model.

Every method turns the streaming statistics of paired activations into two maps per adapted
module, which ``fold`` applies to the adapter without changing its rank:

* ``P_in`` (d_in_teacher x d_in_student): student input -> teacher input, so ``A' = A P_in``;
* ``P_out`` (d_out_student x d_out_teacher): teacher output -> student output, so ``B' = P_out B``.

Then ``s B' A' x_s = P_out (s B A) (P_in x_s)``: the teacher's adapter, read and written through
the alignment. Adding a method is adding one module with ``NAME``, ``HELP`` and
``fit_map(stats, kind, assigned, *, ridge)`` and listing it in ``METHODS``: ``--align``'s choices,
its help and the plan's validation all read this registry.
"""

from __future__ import annotations

import torch

from . import correlation, lstsq
from .stats import PairStats

METHODS = {method.NAME: method for method in (correlation, lstsq)}


def fit_point(stats: PairStats, kind: str, method: str, *, ridge: float) -> dict:
    """One capture point's fit with ``method``: ``map`` (a dense selection, the head's dense
    matrix, or a factored ``lstsq.Regression`` that folds without forming its matrix), ``score``
    and ``score_name``, and for inputs the activation evidence: ``identity_r2`` (a copy) and
    ``linear_r2`` (the best linear map). ``kind``: "in" (student -> teacher, a module input),
    "head" (the same, for the last hidden state) or "out" (teacher -> student, a module output).
    Releases what it can of ``stats`` as it goes; the caller drops the rest."""
    assigned = correlation.assign(stats)  # every method starts from (or shrinks toward) the paper's assignment
    if kind == "out":
        return METHODS[method].fit_map(stats, kind, assigned, ridge=ridge)
    identity = lstsq.identity_r2(stats)  # before any fit releases the Grams (it reads their diagonals only)
    result = {"identity_r2": None if identity is None else round(identity, 4)}
    result |= METHODS[method].fit_map(stats, kind, assigned, ridge=ridge)
    if "linear_r2" not in result:  # the evidence the method did not already compute
        result["linear_r2"] = lstsq.Regression(stats, x="s", ridge=lstsq.DEFAULT_RIDGE, prior=assigned[:2], release=True).r_squared()
    if kind == "head" and not isinstance(result["map"], torch.Tensor):
        result["map"] = result["map"].matrix()
    return result
