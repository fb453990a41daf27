"""Ridge-regularised least squares through the origin, shrunk toward the correlation assignment:

    M = argmin ||X_t - X_s M^T||^2 + lambda ||(M - P) D^(1/2)||^2
      = (S_ts + lambda P D) (S_ss + lambda D)^-1

with ``P`` the paper's correlation assignment (a selection) and ``D = diag(S_ss)`` (the ridge of
standardized features, so a few huge-magnitude dimensions do not set the shrinkage of all others).
Residual streams occupy a lower-dimensional subspace, so plain least squares leaves many
directions undetermined, and shrinking those to zero generalizes badly once an adapter moves
activations off the calibration data; shrinking toward the assignment keeps them meaningful.
Where the data determine the map, least squares wins. No intercept: a LoRA has no bias.

``Regression`` factors ``G = S_ss + lambda D`` once (Cholesky, float64, in place) and never forms
``M`` unless asked: folding needs only ``A M`` (r x d_s) and ``M B``, and the R^2 report reads
``M`` a block of rows at a time. So a fit costs one d x d float64 matrix beyond the statistics.
"""

from __future__ import annotations

import torch

from .stats import F64, PairStats

DEFAULT_RIDGE = 1e-2
BLOCK = 512  # rows of M (columns of S_xy) at a time
JITTER = (1e-10, 1e-8, 1e-6, 1e-4)  # added (relative) only when the factorization fails, e.g. --ridge 0


class Regression:
    """``y ~ M x`` with M (d_y, d_x), x the side (``"s"`` or ``"t"``) whose Gram the stats keep.

    ``prior``: (x dims, y dims) of the correlation assignment. ``release``: drop the statistics'
    Gram of x once factored (its diagonal stays), so the factor replaces it in memory."""

    def __init__(self, stats: PairStats, *, x: str, ridge: float, prior: tuple[torch.Tensor, torch.Tensor], release: bool = False):
        self.stats, self.x, self.y = stats, x, ("t" if x == "s" else "s")
        self.d_x, self.d_y = stats.dims[self.x], stats.dims[self.y]
        device = stats.device
        diagonal = stats.diagonal(self.x)
        # dead (constant ~0) dimensions: a floor keeps them solvable and pinned to the prior
        floor = diagonal.clamp_min(1e-6 * diagonal.mean().clamp_min(1e-30))
        self.weights = ridge * floor
        px, py = (p.to(device) for p in prior)
        self.x_of_y = torch.full((self.d_y,), -1, dtype=torch.long, device=device)
        self.x_of_y[py] = px
        self.pairs = (px, py)
        self.factor = None
        for jitter in (0.0, *JITTER):
            gram = stats.gram(self.x)
            gram.diagonal().add_(self.weights + jitter * floor)
            if cholesky_in_place(gram):
                self.factor, self.jitter = gram, jitter
                break
            del gram
        if self.factor is None:
            raise torch.linalg.LinAlgError("the regularised Gram matrix is not positive definite; raise --ridge")
        self.weights = self.weights + self.jitter * floor
        if release:
            stats.release_gram(self.x)

    def _solve(self, rhs: torch.Tensor) -> torch.Tensor:
        return torch.cholesky_solve(rhs, self.factor)

    def _blocks(self):
        for start in range(0, self.d_y, BLOCK):
            yield slice(start, min(start + BLOCK, self.d_y))

    def _rhs(self, block: slice) -> torch.Tensor:
        """S_xy[:, block] + W P^T[:, block], (d_x, b)."""
        rhs = self.stats.cross_block(self.x, block)
        xs = self.x_of_y[block]
        cols = torch.nonzero(xs >= 0).flatten()
        rhs[xs[cols], cols] += self.weights[xs[cols]]
        return rhs

    def rows(self, block: slice) -> tuple[torch.Tensor, torch.Tensor]:
        """M[block] (b, d_x), and the right-hand side it solved."""
        rhs = self._rhs(block)
        return self._solve(rhs).T, rhs

    def matrix(self) -> torch.Tensor:
        out = torch.empty(self.d_y, self.d_x, dtype=F64, device=self.factor.device)
        for block in self._blocks():
            out[block] = self.rows(block)[0]
        return out

    def left(self, X: torch.Tensor) -> torch.Tensor:
        """``X M`` for X (r, d_y): how A (r x d_in_t) reads the student's inputs. On the CPU, float64."""
        X = X.to(self.factor.device, F64)
        acc = torch.zeros(self.d_x, X.shape[0], dtype=F64, device=X.device)
        for block in self._blocks():
            acc.addmm_(self.stats.cross_block(self.x, block), X[:, block].T)
        px, py = self.pairs
        acc[px] += self.weights[px, None] * X[:, py].T
        return self._solve(acc).T.cpu()

    def right(self, Y: torch.Tensor) -> torch.Tensor:
        """``M Y`` for Y (d_x, r): how B (d_out_t x r) writes in the student's outputs."""
        Z = self._solve(Y.to(self.factor.device, F64))
        out = torch.empty(self.d_y, Y.shape[1], dtype=F64, device=Z.device)
        for block in self._blocks():
            out[block] = self.stats.cross_block(self.x, block).T @ Z
        px, py = self.pairs
        out[py] += self.weights[px, None] * Z[px]
        return out.cpu()

    def r_squared(self) -> float:
        """Mean over y dimensions of the share of variance ``M x`` explains (constant ones left out)."""
        diag_yy = self.stats.diagonal(self.y)
        residual = torch.empty(self.d_y, dtype=F64, device=diag_yy.device)
        for block in self._blocks():
            m, rhs = self.rows(block)
            # ||y - M x||^2 = S_yy - 2 M S_xy + M S_xx M^T, with S_xx = G - W and G M^T = rhs
            res = diag_yy[block] - (m * rhs.T).sum(1) - (m * m * self.weights).sum(1)
            xs = self.x_of_y[block]
            has = xs >= 0
            res[has] += 2 * self.weights[xs[has]] * m[has, xs[has]]
            residual[block] = res
        return explained(residual, diag_yy, self.stats.sum(self.y), self.stats.n)


def cholesky_in_place(a: torch.Tensor, block: int = 1024) -> bool:
    """Overwrite the symmetric positive definite ``a`` with its lower Cholesky factor (upper part
    zeroed), block by block: beside ``a`` only a (d x block) panel is allocated (torch's own
    factorization allocates a second d x d matrix). False if ``a`` is not positive definite."""
    d = a.shape[0]
    for k in range(0, d, block):
        e = min(k + block, d)
        factor, info = torch.linalg.cholesky_ex(a[k:e, k:e])
        if int(info) != 0:
            return False
        a[k:e, k:e] = factor
        a[k:e, e:] = 0
        if e < d:
            panel = a[e:, k:e]
            panel.copy_(torch.linalg.solve_triangular(factor.T, panel, upper=True, left=False))  # panel L^-T
            a[e:, e:].addmm_(panel, panel.T, alpha=-1)  # the trailing Schur complement, in place
    return True


def explained(residual: torch.Tensor, diag_yy: torch.Tensor, sum_y: torch.Tensor, n: int) -> float:
    total = diag_yy - sum_y**2 / n
    live = total > 1e-9 * total.max().clamp_min(1e-30)
    return float((1 - residual[live] / total[live]).mean())


NAME = "lstsq"


def fit_map(stats: PairStats, kind: str, assigned, *, ridge: float = DEFAULT_RIDGE) -> dict:
    """The factored regression: teacher -> student for an output, student -> teacher otherwise."""
    student, teacher, _ = assigned
    if kind == "out":
        solved = Regression(stats, x="t", ridge=ridge, prior=(teacher, student), release=True)
        return {"map": solved, "score": solved.r_squared(), "score_name": "R^2"}
    same = ridge == DEFAULT_RIDGE  # then this fit is also the evidence fit, and may free the Gram
    solved = Regression(stats, x="s", ridge=ridge, prior=(student, teacher), release=same)
    result = {"map": solved, "score": solved.r_squared(), "score_name": "R^2"}
    return result | ({"linear_r2": result["score"]} if same else {})


def r_squared(stats: PairStats, matrix: torch.Tensor) -> float:
    """Mean over teacher dimensions of the share of variance ``M x_s`` explains, from the
    statistics alone; constant dimensions (no variance to explain) are left out."""
    # per dimension i: ||X_t[:, i] - X_s M_i^T||^2 = S_tt[i,i] - 2 M_i S_st[:, i] + M_i S_ss M_i^T
    residual = stats.diagonal("t") - 2 * (matrix * stats.st.T).sum(1) + ((matrix @ stats.ss) * matrix).sum(1)
    return explained(residual, stats.diagonal("t"), stats.sum_t, stats.n)


def identity_r2(stats: PairStats) -> float | None:
    """R^2 of ``x_t ~ x_s`` (same index), from diagonals only; None across widths."""
    if stats.dims["s"] != stats.dims["t"]:
        return None
    residual = stats.diagonal("t") - 2 * stats.cross_diagonal() + stats.diagonal("s")
    return explained(residual, stats.diagonal("t"), stats.sum_t, stats.n)
