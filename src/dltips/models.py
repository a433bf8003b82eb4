"""Fully connected networks."""

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

TUNED_FROM = 100_000  # from this budget on, model.params tunes the last hidden layer's width


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
    params: int | None = None,
) -> nn.Sequential:
    """Linear -> activation (-> dropout) per hidden layer, then a linear output layer (logits).

    `activation` is called once per layer (a class or partial). With maxout, each hidden
    linear layer has `width * pieces` outputs that the activation reduces to `width`.
    `params` (a budget of parameters) replaces `width` with widths_for_params'.
    """
    if params is not None:
        widths = widths_for_params(params, in_features, num_classes, depth, pieces)
    else:
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


def count_params(widths: Sequence[int], in_features: int, num_classes: int, pieces: int = 1) -> int:
    """Weights and biases of build_mlp's network with these hidden widths."""
    sizes = [in_features, *widths]
    hidden = sum((a * pieces + pieces) * b for a, b in zip(sizes, widths))  # (a + 1) * b * pieces
    return hidden + (sizes[-1] + 1) * num_classes


def widths_for_params(
    params: int, in_features: int, num_classes: int, depth: int, pieces: int = 1
) -> list[int]:
    """Hidden widths for a network of `depth` layers with about `params` parameters.

    Every layer gets the uniform width w whose count is nearest `params`; from 100,000
    parameters on, the last hidden layer's width is then tuned to the nearest count (one unit
    of it moves the count by about w * pieces + num_classes, a fraction of a percent, where a
    unit of every width moves it by up to ~3% at depth 10), so the network is within 1% of the
    budget at depths 1 to 10 for every activation. Below that, the nearest uniform width.
    """

    def count(widths: list[int]) -> int:
        return count_params(widths, in_features, num_classes, pieces)

    # count(w) = a w^2 + b w + c for a uniform width w: solve, then compare its neighbours
    a = (depth - 1) * pieces
    b = (in_features + 1) * pieces + (depth - 1) * pieces + num_classes
    c = num_classes - params
    root = -c / b if a == 0 else (-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)
    candidates = {max(1, math.floor(root)), max(1, math.ceil(root))}
    w = min(candidates, key=lambda w: (abs(count([w] * depth) - params), w))
    widths = [w] * depth
    if params >= TUNED_FROM and depth > 1:
        rest = count(widths[:-1] + [0])  # the count without the last layer's units
        per_unit = (w + 1) * pieces + num_classes  # one unit of the last hidden layer
        exact = (params - rest) / per_unit
        last = {max(1, math.floor(exact)), max(1, math.ceil(exact))}
        widths[-1] = min(last, key=lambda v: (abs(count(widths[:-1] + [v]) - params), v))
    return widths


def linear_layers(model: nn.Module) -> list[nn.Linear]:
    """The model's linear layers, input side first (the last one is the output layer)."""
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def layer_names(model: nn.Module) -> list[str]:
    """Names for the linear layers in logs: hidden1, hidden2, ..., output."""
    n = len(linear_layers(model))
    return [f"hidden{i + 1}" for i in range(n - 1)] + ["output"]
