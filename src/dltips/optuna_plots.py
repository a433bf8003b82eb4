"""PNG plots of an Optuna search (hparams_search=optuna): the optimization history and the
importance of each searched parameter.

python scripts/plot.py outputs/multirun/2026-11-25/11-17-18   # adds optuna_*.png to the rest
"""

import math
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from dltips.pruning import load_study


def plot_history(study: Any) -> Figure:
    """Each trial's value against its number, and the best value so far: complete trials as
    dots, pruned ones as crosses at the value of their last epoch."""
    from optuna.trial import TrialState

    fig = Figure(figsize=(8, 5))
    ax = fig.subplots()
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    pruned = [t for t in trials if t.state == TrialState.PRUNED and t.value is not None]
    ax.plot([t.number for t in complete], [t.value for t in complete], "o", label="complete")
    if pruned:
        ax.plot(
            [t.number for t in pruned], [t.value for t in pruned], "x", color="gray", label="pruned"
        )
    better = max if study.direction.name == "MAXIMIZE" else min
    best, steps = math.nan, []
    for t in sorted(complete, key=lambda t: t.number):
        best = t.value if math.isnan(best) else better(best, t.value)
        steps.append((t.number, best))
    if steps:
        ax.step(*zip(*steps), where="post", color="C3", label="best so far")
    ax.set_xlabel("trial")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(study.user_attrs.get("objective", "objective value"))
    ax.set_title(f"Optimization history of study {study.study_name}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    fig.tight_layout()
    return fig


def plot_importances(study: Any) -> Figure | None:
    """Each parameter's importance (Optuna's fANOVA, seeded) as horizontal bars; None with
    fewer than two complete trials, or when no searched parameter varied."""
    import optuna

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < 2:
        return None
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    importances = optuna.importance.get_param_importances(study, evaluator=evaluator)
    if not importances:
        return None
    names = list(importances)[::-1]  # the most important on top
    fig = Figure(figsize=(7, 1.2 + 0.5 * len(names)))
    ax = fig.subplots()
    ax.barh(names, [importances[n] for n in names])
    for i, name in enumerate(names):
        ax.text(importances[name], i, f" {importances[name]:.2f}", va="center")
    ax.set_xlim(0, 1.1)
    objective = study.user_attrs.get("objective", "the objective")
    ax.set_xlabel(f"importance for {objective} ({len(complete)} complete trials, fANOVA)")
    ax.set_title(f"Parameter importances, study {study.study_name}")
    fig.tight_layout()
    return fig


def plot_search(sweep_dir: Path, out_dir: Path | None = None) -> list[Path]:
    """optuna_history.png and optuna_importances.png for the study in <sweep_dir>/optuna.db;
    nothing when the folder holds no study."""
    sweep_dir = Path(sweep_dir)
    study = load_study(f"sqlite:///{(sweep_dir / 'optuna.db').resolve()}")
    if study is None:
        return []
    out_dir = Path(out_dir or sweep_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fig in (
        ("optuna_history.png", plot_history(study)),
        ("optuna_importances.png", plot_importances(study)),
    ):
        if fig is not None:
            fig.savefig(out_dir / name, dpi=120)
            written.append(out_dir / name)
    return written
