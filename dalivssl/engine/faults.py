"""The fault-injection hook for kill/resume tests: the one place production code obeys a test.

``DALIVSSL_KILL_AT_STEP=N`` makes the training loop (:func:`dalivssl.engine.fit.fit`) SIGKILL its
own process right after optimiser step N (after any checkpoint of that step), as ``kill -9`` or a
preempted node would. Tests use it to prove that a run killed at any moment and resumed with
``--resume`` reaches the same weights. Unset, as everywhere outside tests, it does nothing.
"""
from __future__ import annotations

import os

KILL_ENV = "DALIVSSL_KILL_AT_STEP"

__all__ = ["KILL_ENV", "kill_step", "after_step"]


def kill_step() -> int:
    """The step after which the process kills itself (0: never); read once per run."""
    return int(os.environ.get(KILL_ENV, "0") or 0)


def after_step(step: int, kill_at: int) -> None:
    """Called by the loop after each optimiser step: SIGKILL at ``kill_at``."""
    if kill_at and step == kill_at:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
