"""Validation-based early stopping, with the best epoch remembered."""

import math
from typing import Any


def metric_mode(monitor: str, mode: str | None = None) -> str:
    """'max' for an accuracy, 'min' for a loss; an explicit `mode` wins when it says the same.

    A `mode` that contradicts the metric (max for a loss) raises ValueError: it would keep
    the worst epoch. Unknown metrics need an explicit mode.
    """
    implied = "max" if monitor.endswith("/acc") else "min" if monitor.endswith("/loss") else None
    if mode is None:
        if implied is None:
            raise ValueError(f"cannot tell whether {monitor!r} improves up or down: give mode")
        return implied
    if implied is not None and mode != implied:
        why = "an accuracy improves upward" if implied == "max" else "a loss improves downward"
        raise ValueError(f"mode={mode!r} contradicts {monitor!r}: {why} ({implied})")
    return mode


class EarlyStopping:
    """Tracks the best value of one metric; says when `patience` epochs brought no gain."""

    def __init__(
        self,
        monitor: str = "val/loss",
        mode: str | None = None,
        patience: int | None = 5,
        min_delta: float = 0.0,
        restore_best: bool = True,
    ) -> None:
        self.monitor = monitor
        self.mode = mode = metric_mode(monitor, mode)
        self.patience = patience
        self.min_delta = min_delta
        self.restore_best = restore_best
        self.best = math.inf if mode == "min" else -math.inf
        self.best_epoch = 0
        self.bad_epochs = 0

    def update(self, metrics: dict[str, float], epoch: int) -> bool:
        """Record an epoch's metrics; True when the monitored value improved."""
        value = metrics[self.monitor]
        gain = self.best - value if self.mode == "min" else value - self.best
        if gain > self.min_delta or self.best_epoch == 0:
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.bad_epochs >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state["best"]
        self.best_epoch = state["best_epoch"]
        self.bad_epochs = state["bad_epochs"]
