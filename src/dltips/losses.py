"""Losses that torch.nn does not have, and the L1 penalty."""

import torch
import torch.nn.functional as F
from torch import nn

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
