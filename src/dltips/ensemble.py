"""Combining several sets of softmax probabilities: ensembles of runs and MC dropout samples.

Every function takes log-probabilities, (S, N, classes) for S members (or dropout samples)
on the same N images. The ensemble's prediction is the mean of the members' probabilities,
kept as its log (log_mean_exp) so that the loss is the NLL of the averaged probabilities.
"""

import torch
from matplotlib.figure import Figure
from torch import nn

from dltips.step import evaluate

SUBSET_DRAWS = 20  # random member orders behind the spread of the ensemble plot


def log_mean_exp(log_probs: torch.Tensor) -> torch.Tensor:
    """log(mean over dim 0 of exp(log_probs)): the log of the averaged probabilities.

    Shifted by the maximum, so that S identical inputs give back exactly that input (each
    term exp(0) = 1, their mean 1, its log 0): MC dropout without dropout equals the plain
    evaluation bit for bit.
    """
    top = log_probs.amax(dim=0)
    return top + (log_probs - top).exp().mean(dim=0).log()


def nll_and_accuracy(log_probs: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(NLL, accuracy) of (N, classes) log-probabilities, summed chunk by chunk as the
    training loop's `evaluate` sums its loss (so one member gives its cross-entropy)."""
    return evaluate(nn.Identity(), log_probs, y, nn.NLLLoss(), bf16=False)


def vote(log_probs: torch.Tensor) -> torch.Tensor:
    """(N,) majority vote of S members' predicted classes; a tie goes to the lowest class
    (torch.argmax returns the first maximum)."""
    predicted = log_probs.argmax(dim=2).T  # (N, S)
    counts = torch.zeros(predicted.shape[0], log_probs.shape[2], dtype=torch.long)
    counts = counts.to(predicted.device).scatter_add_(1, predicted, torch.ones_like(predicted))
    return counts.argmax(dim=1)


def first_sizes(members: int) -> list[int]:
    """1, 2, 4, ... below `members`, then `members`: the sizes eval.json reports."""
    sizes = [1 << i for i in range(members.bit_length()) if 1 << i < members]
    return [*sizes, members]


def subset_accuracies(
    log_probs: torch.Tensor, y: torch.Tensor, seed: int, draws: int = SUBSET_DRAWS
) -> dict[str, list]:
    """Accuracy of the mean probabilities of k random members, for k = 1 .. S: the mean, min
    and max over `draws` random orders of the members (drawn with a torch.Generator seeded
    with `seed`), the first k of each order being a random subset of k."""
    probs = log_probs.exp()
    generator = torch.Generator().manual_seed(seed)
    accs = []
    for _ in range(draws):
        order = torch.randperm(len(probs), generator=generator).to(probs.device)
        predicted = probs[order].cumsum(dim=0).argmax(dim=2)  # (S, N): the first k summed
        accs.append((predicted == y).sum(dim=1))
    accs = torch.stack(accs).double() / len(y)  # (draws, S): each as evaluate() divides
    return {
        "draws": draws,
        "members": list(range(1, len(probs) + 1)),
        "mean": accs.mean(dim=0).tolist(),
        "min": accs.amin(dim=0).tolist(),
        "max": accs.amax(dim=0).tolist(),
    }


def plot_ensemble(
    subsets: dict[str, list],
    first: list[tuple[int, float]],
    member_mean: float,
    split: str,
    title: str,
) -> Figure:
    """Accuracy against the number of members: random subsets (mean, min-max band), the
    first k members in member order, and the single members' mean as a reference line."""
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.subplots()
    k = subsets["members"]
    band = f"min-max over {subsets['draws']} random subsets"
    ax.fill_between(k, subsets["min"], subsets["max"], color="tab:blue", alpha=0.2, label=band)
    ax.plot(k, subsets["mean"], "o-", color="tab:blue", label="mean over random subsets")
    ax.plot(*zip(*first), "s--", color="tab:orange", label="the first k members (run order)")
    ax.axhline(member_mean, color="gray", linestyle=":", label="single members' mean")
    ax.set_xlabel("members in the ensemble (k)")
    ax.set_ylabel(f"{split}/acc of the mean probabilities")
    ax.set_xticks(k if len(k) <= 20 else first_sizes(len(k)))
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    return fig
