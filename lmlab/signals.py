"""Stop signals during training: they wait for a step boundary, where a checkpoint is saved."""
from __future__ import annotations

import signal
import threading

from lmlab.errors import Preempted


class StopSignals:
    """SIGTERM, SIGINT, SIGUSR1 (what `#SBATCH --signal=USR1@120` sends before a kill) and SIGUSR2
    (what submitit asks SLURM for) only set `received`, so the loop can checkpoint at the next step
    boundary; a second signal then acts as it normally would. When the stop leaves as Preempted and
    the signal had a Python handler before (submitit's, which requeues the job), the signal is
    handed on to it once the checkpoint is on disk."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)

    def __enter__(self):
        self.received: str | None = None
        # Handlers can only be installed from the main thread; elsewhere signals keep their meaning.
        main = threading.current_thread() is threading.main_thread()
        self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS} if main else {}
        self._handed_on = None
        return self

    def _handle(self, signum, frame) -> None:
        self.received = signal.Signals(signum).name
        self._handed_on = self._previous.get(signum)
        self._restore()

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def __exit__(self, exc_type, *exc) -> None:
        self._restore()
        # Python's own SIGINT handler would only turn the stop into a KeyboardInterrupt.
        if exc_type is Preempted and callable(self._handed_on) and self._handed_on is not signal.default_int_handler:
            signal.raise_signal(signal.Signals[self.received])
