"""The fitted alignment methods ``--align`` offers: name -> help, one table.

Each name is also the module under ``align/`` that fits it (``NAME`` and ``fit_map``; ``align/fit.py``
loads it when a fit runs). A plain table, free of torch and scipy, so the CLI's help and the plan
read it without loading them. Adding a method is adding its module and one line here.
"""

from __future__ import annotations

METHODS: dict[str, str] = {
    "correlation": "the paper's Prune & Align: each target dimension takes the source dimension it correlates with best",
    "lstsq": "ridge least-squares maps shrunk toward the correlation assignment (dense, same rank)",
}
