"""The training step and the sums of an epoch, with no host sync, for one model or many.

`TrainStep.__call__` runs forward, loss, backward, per-layer gradient norms, clipping and
the optimizer step for one batch, and adds the batch's loss, correct predictions and
gradient norms to tensors on the device. Nothing in it waits for the GPU: a NaN or
infinite loss is found when `TrainStep.read` looks at the epoch's per-step losses, the one
CPU-GPU sync point of an epoch. `epoch_batches` draws the shuffled batch indices on the
device, so a batch is one gather there, with no index tensor sent from the CPU.

A step trains K same-shaped members at once (a batched sweep, see dltips.group) on their
stacked weights (dltips.stacked.StackedMLP: each layer one batched matrix multiply, the
per-member L1 penalty, gradient norms and clipping computed on the stacked tensors). With
K = 1 it trains the plain model and its own parameters, exactly as a single run always did.
"""

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from inspect import signature

import torch
from torch import nn

from dltips.losses import l1_penalty
from dltips.models import linear_layers
from dltips.signals import StopRequest
from dltips.stacked import MemberOptimizer, StackedMLP, member_losses


def epoch_batches(
    size: int, batch_size: int, generators: torch.Generator | list[torch.Generator]
) -> Iterator[torch.Tensor]:
    """Index tensors of one epoch's shuffled batches, on the generator's device (the last
    one is smaller when batch_size does not divide size). With a list of K generators,
    each member shuffles on its own: (K, batch) index tensors."""
    return iter(shuffled(size, generators).split(batch_size, dim=-1))


def shuffled(size: int, generators: torch.Generator | list[torch.Generator]) -> torch.Tensor:
    """A permutation of range(size) from one generator, or (K, size) from K of them."""
    if isinstance(generators, torch.Generator):
        return torch.randperm(size, generator=generators, device=generators.device)
    return torch.stack([torch.randperm(size, generator=g, device=g.device) for g in generators])


def batch_sizes(size: int, batch_size: int) -> list[int]:
    """The size of each batch of an epoch: full ones, then the remainder."""
    full, rest = divmod(size, batch_size)
    return [batch_size] * full + [rest] * (rest > 0)


@dataclass
class EpochSums:
    """What an epoch's steps added up for one member, read from the device in one go."""

    loss: float  # mean training loss over the samples of the steps that ran
    correct: int  # correctly classified training samples
    grad_norms: list[float]  # mean gradient norm of each linear layer's weight
    first_bad_step: int | None  # 1-based step whose loss was first NaN or infinite
    bad_loss: float | None  # that loss


class TrainStep:
    """One optimizer step per call for K members; the sums stay on the device until `read`.

    K = 1: `models[0]` trains with its own parameters and `optimizer` is a torch optimizer.
    K > 1: `stack` holds the members' stacked weights, which the forward and backward pass
    use, and `optimizer` is a dltips.stacked.MemberOptimizer over them.
    """

    def __init__(
        self,
        models: list[nn.Module],
        optimizer: torch.optim.Optimizer | MemberOptimizer,
        criteria: list[nn.Module],
        steps_per_epoch: int,
        l1: list[float] | None = None,
        grad_clip: list[float | None] | None = None,
        bf16: bool = False,
        dropout: list[float] | None = None,
        generators: list[torch.Generator] | None = None,
        stack: StackedMLP | None = None,
    ) -> None:
        self.models, self.optimizer, self.criteria = models, optimizer, criteria
        k = len(models)
        if k > 1 and stack is None:
            raise ValueError("K > 1 members train on their stacked weights: pass `stack`")
        self.stack = stack
        self.l1 = l1 or [0.0] * k
        self.grad_clip = grad_clip or [None] * k
        self.dropout, self.generators = dropout or [0.0] * k, generators
        self.bf16 = bf16
        self.any_dropout = any(self.dropout)
        if stack is None:
            self.params = list(models[0].parameters())
            self.weights = [layer.weight for layer in linear_layers(models[0])]
            device, layers = self.params[0].device, len(self.weights)
        else:
            device, layers = stack.weights[0].device, len(stack.weights)
            # per-member L1 and clipping as (K,) tensors; no clipping is an infinite bound
            self.l1_of = torch.tensor(self.l1, device=device) if any(self.l1) else None
            bounds = [c if c else float("inf") for c in self.grad_clip]
            self.clip_of = torch.tensor(bounds, device=device) if any(self.grad_clip) else None
        self.device_type = device.type
        # one slot per step and member: the loss sum and the divergence check come from it
        self.losses = torch.zeros(steps_per_epoch, k, device=device)
        self.correct = torch.zeros(k, device=device, dtype=torch.long)
        self.grad_norm_sum = torch.zeros(k, layers, device=device)

    def reset(self) -> None:
        """Zero the sums before an epoch."""
        self.losses.zero_()
        self.correct.zero_()
        self.grad_norm_sum.zero_()

    def __call__(self, x: torch.Tensor, y: torch.Tensor, index: int) -> None:
        """Train on one batch, the `index`-th step of the epoch (0-based): x (B, features)
        and y (B,) for one member, (K, B, features) and (K, B) for K."""
        # autocast's cast cache must be off while a CUDA graph is captured
        with torch.autocast(
            self.device_type, dtype=torch.bfloat16, enabled=self.bf16, cache_enabled=False
        ):
            if self.stack is None:
                logits = self.models[0](x)
                loss = self.criteria[0](logits, y)
            else:
                training = self.models[0].training and self.any_dropout
                generators = self.generators if training else None
                logits = self.stack.forward(x, self.dropout, generators)
                loss = member_losses(self.criteria, logits, y)
        if self.stack is None:
            self._backward_one(loss)
        else:
            self._backward_stacked(loss)
        self.optimizer.step()
        self.losses[index] = loss.detach()
        self.correct += (logits.argmax(dim=-1) == y).sum(dim=-1)

    def _backward_one(self, loss: torch.Tensor) -> None:
        """Gradients, their per-layer norms and clipping for a single model."""
        objective = loss
        if self.l1[0]:
            objective = objective + self.l1[0] * l1_penalty(self.models[0])
        self.optimizer.zero_grad(set_to_none=True)
        objective.backward()
        # per-layer gradient norms show vanishing gradients in deep sigmoid networks
        norms = torch.stack(torch._foreach_norm([w.grad for w in self.weights]))
        self.grad_norm_sum += norms.view_as(self.grad_norm_sum)
        if self.grad_clip[0]:
            nn.utils.clip_grad_norm_(self.params, self.grad_clip[0])  # no sync: on device

    def _backward_stacked(self, loss: torch.Tensor) -> None:
        """The same for K members on the stacked weights: the objective is the sum of the
        members' losses, so each member's gradient comes from its own loss only."""
        stack = self.stack
        objective = loss.sum()
        if self.l1_of is not None:  # each member's L1 on its weights (not biases)
            for w in stack.weights:
                objective = objective + (w.abs().sum((1, 2)) * self.l1_of).sum()
        stack.zero_grad()
        objective.backward()
        grads = [leaf.grad for leaf in stack.leaves]  # weight, bias, weight, ...
        clip = self.clip_of is not None
        norms = [
            torch.linalg.vector_norm(g, dim=tuple(range(1, g.dim())))
            for g in (grads if clip else grads[::2])
        ]
        self.grad_norm_sum += torch.stack(norms[::2] if clip else norms, dim=1)  # (K, layers)
        if clip:  # clip_grad_norm_ per member: one norm over all of its gradients
            total = torch.linalg.vector_norm(torch.stack(norms, dim=1), dim=1)
            scale = (self.clip_of / (total + 1e-6)).clamp(max=1.0)
            for g in grads:
                g.mul_(scale.view(-1, *[1] * (g.dim() - 1)))

    def read(self, sizes: list[int]) -> list[EpochSums]:
        """Each member's sums over the first len(sizes) steps (batches of those sizes), in
        one sync."""
        steps = len(sizes)
        losses = self.losses[:steps]
        finite = torch.isfinite(losses)
        weights = torch.tensor(sizes, dtype=losses.dtype, device=losses.device).unsqueeze(1)
        # argmin of `finite` is the first False; all True gives 0, told apart by `all_finite`
        packed = torch.cat(
            [
                (losses.nan_to_num(0.0, 0.0, 0.0) * weights).sum(0).unsqueeze(1),
                self.correct.unsqueeze(1).to(losses.dtype),
                finite.all(0).unsqueeze(1).to(losses.dtype),
                finite.to(torch.uint8).argmin(0).unsqueeze(1).to(losses.dtype),
                self.grad_norm_sum / steps,
            ],
            dim=1,
        ).tolist()  # the CPU waits for the GPU here, once per epoch
        sums = []
        for k, (loss_sum, correct, all_finite, first_bad, *grad_norms) in enumerate(packed):
            bad = None if all_finite else int(first_bad)
            sums.append(
                EpochSums(
                    loss=loss_sum / sum(sizes),
                    correct=round(correct),
                    grad_norms=grad_norms,
                    first_bad_step=None if bad is None else bad + 1,
                    bad_loss=None if bad is None else float(self.losses[bad, k]),
                )
            )
        return sums


def run_epoch(
    step: TrainStep,
    x: torch.Tensor,
    y: torch.Tensor,
    batches: Iterable[torch.Tensor],
    stop: StopRequest | None = None,
    on_step: Callable[[], None] | None = None,
) -> list[int]:
    """Call `step` on each batch of x, y (index tensors; x (K, N, features) and (K, B)
    batches for K members); the sizes of the batches trained.

    Stops after the current step when `stop` is set (the caller drops the partial epoch).
    `on_step` is called after each step (a progress bar); it must not read the device.
    """
    sizes = []
    # index_select is 2-3x faster than x[batch] on CPUs, where the gather is a tenth of a step
    if x.dim() == 3:  # K members, each its own data and shuffle: (K, B) gathers
        k, n = y.shape
        flat_x, flat_y = x.reshape(k * n, -1), y.reshape(k * n)
        offsets = torch.arange(0, k * n, n, device=x.device).unsqueeze(1)  # each row's start
    for index, batch in enumerate(batches):
        if x.dim() == 2:
            step(x.index_select(0, batch), y.index_select(0, batch), index)
        else:
            rows = (batch + offsets).flatten()
            step(
                flat_x.index_select(0, rows).view(k, -1, x.shape[-1]),
                flat_y.index_select(0, rows).view(k, -1),
                index,
            )
        sizes.append(batch.shape[-1])
        if on_step is not None:
            on_step()
        if stop is not None and stop.signum:
            break
    return sizes


def captures_graphs(device: torch.device, setting: str | bool) -> bool:
    """Whether trainer.cuda_graphs=`setting` replays epochs as CUDA graphs on `device`:
    auto and true do on CUDA (the CPU tests patch this to run GraphedEpoch's eager twin)."""
    return device.type == "cuda" and setting in ("auto", True)


def supports_capture(optimizer_class: type) -> bool:
    """Whether a torch optimizer can step inside a CUDA graph: it takes `capturable`
    (its step counter then lives on the GPU), or it keeps no step counter (SGD)."""
    return (
        optimizer_class is torch.optim.SGD or "capturable" in signature(optimizer_class).parameters
    )


def device_options(
    optimizer_class: type, device: torch.device, fused: bool | None, graphed: bool
) -> dict[str, object]:
    """Arguments that fit the configured optimizer to the device: `capturable` to step
    inside a CUDA graph, and no `fused` where torch has no fused kernel there (Adagrad's
    runs on the CPU only; on CUDA torch then takes its multi-tensor path)."""
    options: dict[str, object] = {}
    # on the CPU (GraphedEpoch's eager twin) torch's optimizers refuse `capturable`
    if graphed and device.type == "cuda" and optimizer_class is not torch.optim.SGD:
        options["capturable"] = True
    if fused and device.type == "cuda" and optimizer_class is torch.optim.Adagrad:
        options["fused"] = None
    return options


class Rewind:
    """Weights, optimizer and RNG state saved now and put back later, in place.

    CUDA graph capture needs a few eager warm-up steps first (optimizer state is created
    at the first step); rewinding makes them leave no trace, so a graphed run trains the
    same as an eager one. Tensors keep their addresses: optimizer state that the warm-up
    created is zeroed, which is the state each torch optimizer starts from. `generators`
    are a group's per-member dropout generators (the default ones are always rewound).
    """

    def __init__(
        self,
        tensors: list[torch.Tensor],
        optimizer: torch.optim.Optimizer,
        generators: list[torch.Generator] | None = None,
    ) -> None:
        self.tensors, self.optimizer = tensors, optimizer
        self.saved = [t.detach().clone() for t in tensors]
        self.state = {
            id(t): t.detach().clone() for t in _state_tensors(optimizer)
        }  # by identity: tensors that exist now get their values back
        self.generators = generators or []
        self.generator_states = [g.get_state() for g in self.generators]
        self.cpu_rng = torch.get_rng_state()
        self.cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None

    def __call__(self) -> None:
        with torch.no_grad():
            for t, saved in zip(self.tensors, self.saved):
                t.copy_(saved)
            for t in _state_tensors(self.optimizer):
                saved = self.state.get(id(t))
                if saved is not None:
                    t.copy_(saved)
                else:  # created by the warm-up: zeros are where torch's optimizers start
                    t.zero_()
        for g, state in zip(self.generators, self.generator_states):
            g.set_state(state)
        torch.set_rng_state(self.cpu_rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state_all(self.cuda_rng)


def _state_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)]


class GraphedEpoch:
    """A whole epoch of `run_epoch` captured as one CUDA graph, replayed every epoch: one
    run's, or a batched group's (all K members in one graph).

    Each replay trains on a fresh permutation (K of them in a group) written into a static
    buffer first; the batches are slices of it, gathered inside the graph, the ragged last
    one included. Dropout draws fresh masks on every replay: a single run's from the
    default CUDA generator, a group's from each member's own generator, registered with
    the graph (`CUDAGraph.register_generator_state`). Either way a replay advances each
    generator as the eager epoch would, so the masks are the eager ones, and a generator's
    state after an epoch (what a checkpoint saves) is where a resumed run continues.

    A graph bakes in the optimizer's param groups. When a member of a group stops early
    or diverges, MemberOptimizer.freeze takes its rows out of them, and train_group calls
    `capture()` again: the new graph steps the remaining members only, so the frozen
    member's weights and optimizer state stay exactly as reported.

    A small MLP on a GPU is bound by kernel launches: one replay launches the epoch's
    thousands of kernels at once. `eager=True` is the graph's eager twin, for the CPU
    tests: the same warm-up, rewind and static buffers, with run_epoch called directly on
    every call instead of a replay.
    """

    def __init__(
        self,
        step: TrainStep,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        generator: torch.Generator | list[torch.Generator],
        warmup_steps: int = 3,
        eager: bool = False,
    ) -> None:
        self.step, self.x, self.y, self.generator = step, x, y, generator
        self.warmup_steps, self.eager = warmup_steps, eager
        # (N,) for one run, (K, N) for K members: each shuffles on its own
        self.perm = torch.arange(y.shape[-1], device=y.device).expand(y.shape).contiguous()
        self.batches = list(self.perm.split(batch_size, dim=-1))
        self.sizes = [b.shape[-1] for b in self.batches]
        self.graph: torch.cuda.CUDAGraph | None = None
        self.captures = 0  # how often the epoch was (re)captured
        self.capture()

    def capture(self) -> None:
        """Capture the epoch as the step trains now: first, and again whenever a group's
        membership changed (a frozen member's rows left the optimizer's param groups)."""
        step = self.step
        self.graph = None  # the old graph goes first: its memory, its generators' registration
        for model in step.models:
            model.train()  # the graph replays the mode it was captured in: dropout on
        if step.stack is None:
            rewind = Rewind(list(step.models[0].state_dict().values()), step.optimizer)
        else:
            rewind = Rewind(step.stack.leaves, step.optimizer.torch, step.generators)
        warmup = self.batches[: self.warmup_steps]
        if self.eager:
            run_epoch(step, self.x, self.y, warmup)
        else:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up on a side stream, as torch.cuda.graph wants
                run_epoch(step, self.x, self.y, warmup)
            torch.cuda.current_stream().wait_stream(side)
        rewind()
        self.captures += 1
        if self.eager:
            return
        self.graph = torch.cuda.CUDAGraph()
        if step.stack is not None and step.any_dropout:
            # each member's dropout generator: the graph reads its seed and offset at every
            # replay and advances it by the epoch's draws (the default generator always is)
            for g in step.generators:
                self.graph.register_generator_state(g)
        with torch.cuda.graph(self.graph):
            step.reset()
            run_epoch(step, self.x, self.y, self.batches)

    def __call__(self) -> list[int]:
        """Train one epoch on a new shuffle; the batch sizes, as run_epoch returns them."""
        self.perm.copy_(shuffled(self.y.shape[-1], self.generator))
        if self.graph is None:  # the eager twin
            self.step.reset()
            run_epoch(self.step, self.x, self.y, self.batches)
        else:
            self.graph.replay()
        return self.sizes


def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    criterion: nn.Module,
    bf16: bool,
    chunk: int = 10_000,
) -> tuple[float, float]:
    """(mean loss, accuracy) of `model` in eval mode over all of x, y."""
    model.eval()
    return _loss_and_accuracy(model, criterion, x, y, bf16, chunk)[0]


def evaluate_stacked(
    stack: StackedMLP,
    x: torch.Tensor,
    y: torch.Tensor,
    criteria: list[nn.Module],
    bf16: bool,
    chunk: int = 40_000,
) -> list[tuple[float, float]]:
    """Each member's (mean loss, accuracy) over (K, N, features) inputs x and (K, N)
    labels y: what `evaluate` gives for each member's model, in one pass and one sync."""
    rows = max(1, chunk // len(y))  # about `chunk` samples of all members at a time
    losses = partial(member_losses, criteria)
    return _loss_and_accuracy(stack.forward, losses, x, y, bf16, rows)


@torch.no_grad()
def _loss_and_accuracy(forward, loss_of, x, y, bf16: bool, rows: int) -> list[tuple[float, float]]:
    """(mean loss, accuracy) over all of x, y, `rows` samples at a time, read in one sync:
    of one model (x (N, features), y (N,)) or of each of K members (x (K, N, features),
    y (K, N)). `loss_of(logits, y)` is the mean loss of a chunk (per member: (K,))."""
    n = y.shape[-1]
    loss_sum = torch.zeros(y.shape[:-1], device=x.device)
    correct = torch.zeros(y.shape[:-1], device=x.device, dtype=torch.long)
    for i in range(0, n, rows):
        xb, yb = x[..., i : i + rows, :], y[..., i : i + rows]
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = forward(xb)
            loss_sum += loss_of(logits, yb).float() * yb.shape[-1]
        correct += (logits.argmax(dim=-1) == yb).sum(dim=-1)
    packed = torch.stack([loss_sum / n, correct.to(loss_sum.dtype)], dim=-1)
    return [(loss, right / n) for loss, right in packed.view(-1, 2).tolist()]  # the sync
