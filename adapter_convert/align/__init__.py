"""Hidden-space alignment between a source (teacher) and a target (student) model.

Every method turns the streaming statistics of paired activations into two maps per adapted
module, which ``fold`` applies to the adapter without changing its rank:

* ``P_in`` (d_in_teacher x d_in_student): student input -> teacher input, so ``A' = A P_in``;
* ``P_out`` (d_out_student x d_out_teacher): teacher output -> student output, so ``B' = P_out B``.

Then ``s B' A' x_s = P_out (s B A) (P_in x_s)``: the teacher's adapter, read and written through
the alignment. Adding a method is adding a module with a ``fit(stats, ...) -> Fit`` function and
an entry in ``METHODS``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import UsageError
from .stats import PairStats


@dataclass
class Fit:
    """A map from student space to teacher space, ``x_t ~ M x_s`` with M (d_t x d_s), and how well it explains."""

    matrix: torch.Tensor
    score: float  # correlation of the assignment, or R^2 of the projection
    score_name: str


def _methods() -> dict[str, Callable[..., Fit]]:
    from . import correlation, lstsq

    return {"correlation": correlation.fit, "lstsq": lstsq.fit}


METHOD_NAMES = ("auto", "none", "correlation", "lstsq", "distill")


def student_to_teacher(method: str, stats: PairStats, **options) -> Fit:
    """``x_t ~ M x_s``, M (d_t x d_s): for module inputs (P_in) and the head's input."""
    methods = _methods()
    if method not in methods:
        raise UsageError(f"Unknown alignment method {method!r}.", f"Use one of {', '.join(METHOD_NAMES)}.")
    return methods[method](stats, **options)


def teacher_to_student(method: str, stats: PairStats, **options) -> Fit:
    """``y_s ~ M y_t``, M (d_s x d_t): for module outputs (P_out)."""
    if method == "correlation":  # a selection: its transpose selects the other way
        fit = student_to_teacher(method, stats, **options)
        return Fit(fit.matrix.T.contiguous(), fit.score, fit.score_name)
    return student_to_teacher(method, transposed(stats), **options)


def transposed(stats: PairStats) -> PairStats:
    """The same statistics with the roles of student and teacher swapped."""
    return stats.transposed()
