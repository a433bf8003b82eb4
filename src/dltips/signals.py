"""Stop cleanly on Ctrl-C, a cluster's SIGTERM or submitit's SIGUSR2: the loop polls a
flag between steps."""

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class StopRequest:
    """Set by the signal handler; `signum` is None until a stop signal arrives."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""


@contextmanager
def catch_stop_signals() -> Iterator[StopRequest]:
    """Turn SIGINT, SIGTERM and SIGUSR2 into a StopRequest for the duration of the block.

    SIGUSR2 is what SLURM sends a submitit job before its time limit or on preemption:
    submitit's own handler would checkpoint and exit from wherever the step is, so the
    loop stops first, with every run's last epoch written, and the caller hands the signal
    on (hydra_plugins/dltips_batched_launcher/batched_submitit_launcher.py).
    The first signal only sets the flag and puts the previous handlers back: a second one
    gets them (a second Ctrl-C raises KeyboardInterrupt at once). Outside the main thread
    signals cannot be caught, so the block runs without handlers.
    """
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    stops = [signal.SIGINT, signal.SIGTERM]
    if hasattr(signal, "SIGUSR2"):  # POSIX's; Windows has none
        stops.append(signal.SIGUSR2)
    previous = {s: signal.getsignal(s) for s in stops}

    def handler(signum, frame):
        stop.signum = signum
        for s, h in previous.items():
            signal.signal(s, h)

    for s in previous:
        signal.signal(s, handler)
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
