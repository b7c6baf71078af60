"""SIGTERM as a request to checkpoint and stop (a SLURM time limit or ``scancel`` warns before
it kills)."""

from __future__ import annotations

import signal


class SignalFlag:
    """Remembers a SIGTERM so the loop finishes the step, checkpoints and stops. Under torchrun
    the processes may see it at different steps, or only some of them: the loop decides on every
    process together (:func:`dppo.train.distributed.agree`)."""

    def __init__(self):
        self.raised = False
        self._previous = None

    def __enter__(self):
        self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        self.raised = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
