"""Fully connected networks."""

from collections.abc import Callable, Sequence

import torch
from torch import nn


class Maxout(nn.Module):
    """Maxout activation: each unit is the max over `pieces` consecutive inputs."""

    def __init__(self, pieces: int = 2) -> None:
        super().__init__()
        self.pieces = pieces

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (-1, self.pieces)).amax(-1)

    def extra_repr(self) -> str:
        return f"pieces={self.pieces}"


def build_mlp(
    in_features: int,
    num_classes: int,
    depth: int,
    width: int | Sequence[int],
    activation: Callable[[], nn.Module],
    dropout: float = 0.0,
    init: str = "default",
    pieces: int = 1,
) -> nn.Sequential:
    """Linear -> activation (-> dropout) per hidden layer, then a linear output layer (logits).

    `activation` is called once per layer (a class or partial). With maxout, each hidden
    linear layer has `width * pieces` outputs that the activation reduces to `width`.
    """
    widths = [width] * depth if isinstance(width, int) else list(width)
    layers: list[nn.Module] = []
    prev = in_features
    for w in widths:
        layers += [nn.Linear(prev, w * pieces), activation()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        prev = w
    layers.append(nn.Linear(prev, num_classes))
    model = nn.Sequential(*layers)

    if init != "default":
        for layer in linear_layers(model):
            if init == "xavier":
                nn.init.xavier_uniform_(layer.weight)
            else:  # kaiming (validated before we get here)
                nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            nn.init.zeros_(layer.bias)
    return model


def linear_layers(model: nn.Module) -> list[nn.Linear]:
    """The model's linear layers, input side first (the last one is the output layer)."""
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def layer_names(model: nn.Module) -> list[str]:
    """Names for the linear layers in logs: hidden1, hidden2, ..., output."""
    n = len(linear_layers(model))
    return [f"hidden{i + 1}" for i in range(n - 1)] + ["output"]
