"""Losses that torch.nn does not have, the L1 penalty, and a check of the configured loss."""

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from dltips.config import presets
from dltips.errors import ConfigError
from dltips.models import linear_layers


class SoftmaxMSELoss(nn.Module):
    """Mean squared error between softmax(logits) and the one-hot target (Keras' 'mse')."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probs = logits.softmax(dim=-1)
        one_hot = F.one_hot(target, num_classes=logits.shape[-1]).to(probs.dtype)
        return F.mse_loss(probs, one_hot)


def l1_penalty(model: nn.Module) -> torch.Tensor:
    """Sum of absolute values of every linear layer's weights (biases are not penalized)."""
    return sum(layer.weight.abs().sum() for layer in linear_layers(model))


def check_criterion(criterion: nn.Module, logits: torch.Tensor, targets: torch.Tensor) -> None:
    """Raise ConfigError unless `criterion(logits, targets)` gives one number.

    Call it with the model's logits (N, classes) for a few training images and their int64
    class indices, so that a loss built for other targets (L1Loss, BCELoss, ...) fails
    before any output is written instead of at the first training step.
    """
    cls = type(criterion)  # named as a _target_ would name it: torch.nn.L1Loss
    name = f"{cls.__module__}.{cls.__qualname__}"
    if getattr(nn, cls.__name__, None) is cls:
        name = f"torch.nn.{cls.__name__}"
    use = (
        f"Use a preset, loss=<{presets('loss')}>, or a _target_ that takes class indices "
        f"(torch.nn.CrossEntropyLoss, torch.nn.MultiMarginLoss)."
    )
    try:
        # a probe: torch's broadcasting warnings would only repeat what the error says
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loss = criterion(logits, targets)
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ConfigError(
            f"loss.criterion._target_={name} cannot compare the model's "
            f"(N, {logits.shape[-1]}) logits with class-index labels "
            f"({type(err).__name__}: {reason}). {use}"
        ) from err
    if not (isinstance(loss, torch.Tensor) and loss.ndim == 0 and loss.is_floating_point()):
        got = (
            f"shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else type(loss).__name__
        )
        raise ConfigError(
            f"loss.criterion._target_={name} returns {got}, not a single number: drop its "
            f"reduction (the default is the mean over the batch). {use}"
        )
