"""Deterministic simulation of osqueue in virtual time (trio).

``simulate(SimConfig(seed=...))`` runs clients against a ``SimulatedObjectStore`` with
injected faults and returns the history; ``check_run`` checks it. Names are imported on
first use, so ``import osqueue.sim`` works without trio installed.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "FaultConfig": "osqueue.sim.faults",
    "FaultKind": "osqueue.sim.faults",
    "Latency": "osqueue.sim.faults",
    "HistoryRecorder": "osqueue.sim.recorder",
    "SimConfig": "osqueue.sim.runner",
    "SimRun": "osqueue.sim.runner",
    "check_run": "osqueue.sim.runner",
    "simulate": "osqueue.sim.runner",
    "SimulatedObjectStore": "osqueue.sim.store",
    "WorkloadConfig": "osqueue.sim.workload",
}

__all__ = [
    "FaultConfig",
    "FaultKind",
    "HistoryRecorder",
    "Latency",
    "SimConfig",
    "SimRun",
    "SimulatedObjectStore",
    "WorkloadConfig",
    "check_run",
    "simulate",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'osqueue.sim' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
