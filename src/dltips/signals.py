"""Stop cleanly on Ctrl-C or a cluster's SIGTERM: the loop polls a flag between steps."""

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
    """Turn SIGINT and SIGTERM into a StopRequest for the duration of the block.

    The first signal only sets the flag; a second one gets the previous handler (a second
    Ctrl-C raises KeyboardInterrupt at once). Outside the main thread signals cannot be
    caught, so the block runs without handlers.
    """
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

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
