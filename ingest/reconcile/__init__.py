"""Reconciliation: what the service's REST state shows that the archive lacks.

:mod:`.client` reads the service's endpoints (paging, 429 and Retry-After),
:mod:`.archive` what the archive knows, :mod:`.compare` the pure comparison
into findings, and :mod:`.run` wires them and records the run.
"""

from __future__ import annotations

from .client import ReconcileError, ServiceAuthError, ServiceUnavailable
from .compare import Finding
from .run import ReconcileResult, ReconcileSettings, run_reconcile

__all__ = [
    "Finding",
    "ReconcileError",
    "ReconcileResult",
    "ReconcileSettings",
    "ServiceAuthError",
    "ServiceUnavailable",
    "run_reconcile",
]
