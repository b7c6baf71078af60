"""Test hook: faults the environment asks a training process to inject into itself (a signal at
the end of a step, or a NaN loss), so tests kill or poison real jobs at a known step."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

from dppo.train.distributed import world

NONFINITE_FAULT = "NONFINITE"  # DPPO_FAULT_SIGNAL's value that makes a loss NaN instead of signalling


def _fault(run: str) -> tuple[int, str] | None:
    """(step, signal name) of the fault the environment asks of this process in ``run``, or None."""
    if os.environ.get("DPPO_FAULT_RUN") != run:
        return None
    rank = os.environ.get("DPPO_FAULT_RANK")
    if rank is not None and int(rank) != world()[0]:
        return None
    return int(os.environ["DPPO_FAULT_AT_STEP"]), os.environ.get("DPPO_FAULT_SIGNAL", "SIGKILL")


def injected_fault(run: str) -> Callable[[int], None]:
    """At the end of optimizer step ``DPPO_FAULT_AT_STEP`` this process sends itself
    ``DPPO_FAULT_SIGNAL`` (SIGKILL by default), as a preemption or a time limit would, when
    ``DPPO_FAULT_RUN`` names this run (and ``DPPO_FAULT_RANK``, when set, this process's rank);
    SIGSTOP freezes it for an external kill. ``NONFINITE``: see :func:`injected_nonfinite`."""
    fault = _fault(run)
    if fault is None or fault[1] == NONFINITE_FAULT:
        return lambda step: None
    at, sig = fault[0], getattr(signal, fault[1])
    return lambda step: os.kill(os.getpid(), sig) if step == at else None


def injected_nonfinite(run: str) -> Callable[[int], bool]:
    """With ``DPPO_FAULT_SIGNAL=NONFINITE`` (and the other variables of :func:`injected_fault`),
    whether this process's first micro batch of optimizer step ``step`` (1-based) gets a NaN loss."""
    fault = _fault(run)
    if fault is None or fault[1] != NONFINITE_FAULT:
        return lambda step: False
    return lambda step: step == fault[0]
