"""K same-shaped networks trained as stacked tensors, and one torch optimizer for them.

How a batched group (dltips.group) trains, and why:

- **Stacked leaves.** Each linear layer of the K members is one (K, out, in) weight and
  one (K, out) bias tensor, the tensors autograd differentiates; a layer's forward for all
  members is one `torch.baddbmm`. Nothing is stacked or split per step.
- **Members are views.** Each member keeps its `build_mlp` network, whose nn.Linear
  parameters become views of its row of the stacked tensors (requires_grad off). Its
  `state_dict` is a single run's (a checkpoint that `trainer.resume` and a plain network
  load), and `load_state_dict` (resume, restoring the best weights) writes into the stack.
- **torch's own optimizer.** `MemberOptimizer` is the configured torch optimizer over
  row blocks of the stacked tensors: train_group puts runs with equal settings (lr, betas,
  weight decay, ...) side by side, and each block of them is one param group over
  `leaf[a:b]` (a seed sweep: one group over whole leaves). So every optimizer in
  conf/optim keeps torch's exact update and fused kernels, with per-member
  hyperparameters, and there is no hand-written copy of seven update rules with (K, 1, 1)
  hyperparameter tensors (torch's optimizers take one scalar per setting and param
  group). Few large tensors matter: on 2 CPU cores torch's fused Adam steps 8 members of
  784-500-500-10 about 6x faster as 6 stacked tensors than as 48 per-member ones. A
  frozen member (stopped early, diverged) is split out of its block: neither its weights
  nor its optimizer state change any more (with lr 0, Adam's moments would).
- **A single run** keeps its plain network and parameters (no stack) and the same
  `MemberOptimizer` with its one param group, so it trains bit-identically to before and
  CUDA graphs (dltips.step.GraphedEpoch) capture it as they did. A group's epoch is one
  graph too; a frozen member's rows leave the param groups, so the epoch is captured anew.
"""

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from dltips.models import linear_layers


class StackedMLP:
    """The linear layers of K same-shaped `build_mlp` networks as stacked leaves; each
    network's layers become views of its row (its other modules stay as they are)."""

    def __init__(self, models: list[nn.Module]) -> None:
        linears = [linear_layers(m) for m in models]
        self.weights = [
            torch.stack([ls[i].weight.detach() for ls in linears]).requires_grad_()
            for i in range(len(linears[0]))
        ]  # (K, out, in)
        self.biases = [
            torch.stack([ls[i].bias.detach() for ls in linears]).requires_grad_()
            for i in range(len(linears[0]))
        ]  # (K, out)
        self.leaves = [t for pair in zip(self.weights, self.biases) for t in pair]
        for i in range(len(self.weights)):
            weights, biases = self.weights[i].detach(), self.biases[i].detach()
            for k, layers in enumerate(linears):
                layers[i].weight = nn.Parameter(weights[k], requires_grad=False)
                layers[i].bias = nn.Parameter(biases[k], requires_grad=False)
        # each member's parameters in model.parameters() order (its optimizer state's order)
        self.member_params = [list(m.parameters()) for m in models]
        if len(self.member_params[0]) != len(self.leaves):
            raise ValueError("A batched group's networks may have parameters in linear layers only")
        # the hidden activations, shared by the members (one activation class per group)
        self.activations = [m for m in models[0] if not isinstance(m, nn.Linear | nn.Dropout)]

    def forward(
        self,
        x: torch.Tensor,
        dropout: list[float] | None = None,
        generators: list[torch.Generator] | None = None,
    ) -> torch.Tensor:
        """(K, B, classes) logits for (K, B, features) inputs; dropout masks come from each
        member's own generator when `generators` is given (training)."""
        h = x
        for i, (weight, bias) in enumerate(zip(self.weights, self.biases)):
            h = StackedLinear.apply(h, weight, bias)
            if i < len(self.activations):
                h = self.activations[i](h)
                if generators is not None and dropout and any(dropout):
                    h = h * _dropout_masks(h, dropout, generators)
        return h

    def zero_grad(self) -> None:
        for leaf in self.leaves:
            leaf.grad = None


class StackedLinear(torch.autograd.Function):
    """K linear layers at once: (K, B, in) inputs, (K, out, in) weights, (K, out) biases.

    The forward is `torch.baddbmm`, as autograd would run it. The backward is written out
    so that the weight gradient is computed as (K, out, in), the leaf's own layout:
    baddbmm's own backward makes it as the transpose of a (K, in, out) product, which
    autograd then copies into the leaf's layout on every step (measured on 2 CPU cores:
    about a sixth of a batched 784-128-128-10 step). Under autocast the product runs in
    the lower precision and each gradient is returned in its tensor's own dtype.
    """

    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(h, weight)
        ctx.bias_dtype = bias.dtype
        return torch.baddbmm(bias.unsqueeze(1), h, weight.transpose(1, 2))

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        h, weight = ctx.saved_tensors
        grad_h = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_h = torch.bmm(grad, weight.to(grad.dtype)).to(h.dtype)
        if ctx.needs_input_grad[1]:
            grad_w = torch.bmm(grad.transpose(1, 2), h.to(grad.dtype)).to(weight.dtype)
        if ctx.needs_input_grad[2]:
            grad_b = grad.sum(1).to(ctx.bias_dtype)
        return grad_h, grad_w, grad_b


def _dropout_masks(
    h: torch.Tensor, dropout: list[float], generators: list[torch.Generator]
) -> torch.Tensor:
    """(K, B, W) inverted-dropout masks: 0 or 1 / (1 - p) per member, ones where p = 0."""
    masks = []
    for p, g in zip(dropout, generators):
        if p > 0:
            keep = torch.rand(h.shape[1:], generator=g, device=h.device) >= p
            masks.append(keep.to(h.dtype) / (1 - p))
        else:
            masks.append(torch.ones(h.shape[1:], device=h.device, dtype=h.dtype))
    return torch.stack(masks)


def member_losses(criteria: list[nn.Module], logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(K,) losses of K members' (K, B, classes) logits against (K, B) labels: one call
    for the usual cross-entropy, else one call of each member's criterion."""
    first = criteria[0]
    plain = (
        type(first) is nn.CrossEntropyLoss
        and first.weight is None
        and first.reduction == "mean"
        and first.label_smoothing == 0.0
        and all(type(c) is nn.CrossEntropyLoss and c.weight is None for c in criteria)
    )
    if plain:  # ignore_index never matches a class index: every sample counts
        k, b = y.shape
        per_sample = nn.functional.cross_entropy(
            logits.flatten(0, 1), y.flatten(), reduction="none"
        )
        return per_sample.view(k, b).mean(1)
    return torch.stack([c(logits[k], y[k]) for k, c in enumerate(criteria)])


class MemberOptimizer:
    """One torch optimizer for K members, each member with its own settings.

    A single run: one param group over its own parameters. A stack: one param group per
    block of consecutive members with equal settings, over that block's rows of the
    stacked tensors (`leaf[a:b]`): torch's update on a few large tensors, which its fused
    kernels do several times faster than on K small ones. `member_state(k)` and `load`
    read and write member k's part as the state_dict of a single run's optimizer;
    `freeze(k)` splits member k out of its block, so nothing of it changes any more.
    """

    def __init__(
        self,
        build: Callable[[list[dict[str, Any]]], torch.optim.Optimizer],
        params: list[list[torch.Tensor]],
        settings: list[dict[str, Any]],
        stack: StackedMLP | None = None,
    ) -> None:
        """`build(param_groups)` makes the configured torch optimizer; `params[k]` and
        `settings[k]` are member k's parameters and hyperparameters (lr, betas, ...)."""
        self.build, self.params, self.stack = build, params, stack
        # one build, a param group per member, as each run alone would build it: torch
        # checks every member's settings and fills in its defaults (building once matters:
        # each call of a Hydra partial costs about 15 ms of its target checks)
        self.torch = build([{"params": p, **s} for p, s in zip(params, settings)])
        self.settings = [
            {k: v for k, v in group.items() if k != "params"} for group in self.torch.param_groups
        ]  # each member's, with torch's defaults
        self.frozen: dict[int, dict[str, Any]] = {}  # member: its state when it froze
        self._group([{} for _ in params])

    def _group(self, states: list[dict[torch.Tensor, dict[str, Any]]]) -> None:
        """The param groups that step, with each member's state (`states[k]`: member k's
        parameter: its state, as its own optimizer keeps it; {} for a fresh one)."""
        if self.stack is None:
            self._set_groups([], [(self.params[0], states[0])])
            return
        blocks: list[tuple[int, int]] = []
        for k, s in enumerate(self.settings):
            if blocks and self.settings[blocks[-1][0]] == s:
                blocks[-1] = (blocks[-1][0], k + 1)
            else:
                blocks.append((k, k + 1))
        groups = []
        for a, b in blocks:
            block = []
            for j in range(len(self.stack.leaves)):
                member = [states[k].get(self.params[k][j]) for k in range(a, b)]
                block.append(_stacked_state(member) if member[0] else None)
            groups.append(block)
        self._set_groups(blocks, groups)

    def _set_groups(self, blocks: list[tuple[int, int]], states: list) -> None:
        """Step these blocks of rows (a stack) or this one model (`states`: [(params,
        state)]), with each block's state (one per leaf, None where there is none yet)."""
        self.torch.param_groups.clear()
        self.torch.state.clear()
        self.blocks = blocks
        if self.stack is None:
            ((params, state),) = states
            self.torch.add_param_group({"params": params, **self.settings[0]})
            self.torch.state.update(state)
            return
        for (a, b), block_states in zip(blocks, states):
            rows = [leaf.detach()[a:b] for leaf in self.stack.leaves]
            self.torch.add_param_group({"params": rows, **self.settings[a]})
            for row, state in zip(rows, block_states):
                if state:
                    self.torch.state[row] = state

    def load(self, saved: list[dict[str, Any] | None]) -> None:
        """Load each member's optimizer state from its checkpoint (None: keep it fresh), as
        a single run's optimizer.load_state_dict does (its saved settings included). A
        state that does not fit raises torch's error, with `member` set to the member it
        belongs to."""
        states: list[dict[torch.Tensor, dict[str, Any]]] = []
        for k, state in enumerate(saved):
            if state is None:
                states.append({})
                continue
            alone = self.build([{"params": self.params[k], **self.settings[k]}])
            try:
                alone.load_state_dict(state)
            except (RuntimeError, ValueError, KeyError) as err:
                err.member = k
                raise
            self.settings[k] = {
                key: value for key, value in alone.param_groups[0].items() if key != "params"
            }
            states.append(alone.state)
        self._group(states)

    def step(self) -> None:
        """One update of every member that is not frozen (a stack: each block's rows of
        the stacked gradients are its gradients)."""
        if self.stack is not None:
            for (a, b), group in zip(self.blocks, self.torch.param_groups):
                for row, leaf in zip(group["params"], self.stack.leaves):
                    row.grad = leaf.grad[a:b]
        self.torch.step()

    def member_state(self, k: int) -> dict[str, Any]:
        """Member k's optimizer state as a single run's `optimizer.state_dict()`."""
        if k in self.frozen:
            return self.frozen[k]
        if self.stack is None:
            params = self.params[0]
            state = {i: self.torch.state[p] for i, p in enumerate(params) if p in self.torch.state}
        else:
            (a, _), group = next(
                (block, g)
                for block, g in zip(self.blocks, self.torch.param_groups)
                if block[0] <= k < block[1]
            )
            state = {
                j: _member_row(self.torch.state[row], row, k - a)
                for j, row in enumerate(group["params"])
                if row in self.torch.state
            }
        return {
            "state": state,
            "param_groups": [{**self.settings[k], "params": list(range(len(self.params[k])))}],
        }

    def freeze(self, k: int) -> None:
        """No further updates to member k, of its weights or its optimizer state."""
        self.frozen[k] = self.member_state(k)
        if self.stack is None:
            self.torch.param_groups.clear()
            return
        blocks, states = [], []
        for (a, b), group in zip(self.blocks, self.torch.param_groups):
            old = [self.torch.state.get(row) for row in group["params"]]
            parts = [(a, k), (k + 1, b)] if a <= k < b else [(a, b)]
            for c, d in parts:
                if c < d:  # the block's other members keep their state (views of it)
                    blocks.append((c, d))
                    states.append(
                        [s and _rows(s, row, c - a, d - a) for s, row in zip(old, group["params"])]
                    )
        self._set_groups(blocks, states)


def _stacked_state(member: list[dict[str, Any]]) -> dict[str, Any]:
    """One state for a block from its members' own: per-element tensors stacked, the
    rest (the step count, equal in a group) taken from the first member."""
    first = member[0]
    return {
        key: torch.stack([m[key] for m in member])
        if torch.is_tensor(value) and value.dim() > 0
        else value
        for key, value in first.items()
    }


def _rows(state: dict[str, Any], row: torch.Tensor, start: int, stop: int) -> dict[str, Any]:
    """The part of a block's state for its rows start:stop (own step counts)."""
    return {
        key: value[start:stop]
        if torch.is_tensor(value) and value.shape == row.shape
        else (value.clone() if torch.is_tensor(value) else value)
        for key, value in state.items()
    }


def _member_row(state: dict[str, Any], row: torch.Tensor, i: int) -> dict[str, Any]:
    """Member i of a block's state, as a single run's optimizer keeps it."""
    return {
        key: value[i].clone()
        if torch.is_tensor(value) and value.shape == row.shape
        else (value.clone() if torch.is_tensor(value) else value)
        for key, value in state.items()
    }
