"""The tips, measured: run the lecture and tips presets as sweeps and write docs/RESULTS.md."""

import platform
import re
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from dltips.plots import plot_against, plot_curves  # noqa: E402
from dltips.runs import (  # noqa: E402
    DONE,
    collect_runs,
    markdown_table,
    read_metrics,
    split_settings,
)

ROOT = Path(__file__).resolve().parents[2]
# docs/RESULTS.md and its hand-written notes are about this run, the full report (make report)
DOCS_PAGE = ROOT / "docs" / "RESULTS.md"
FULL_REPORT = "python scripts/report.py --data fashion_mnist"
FULL_REPORT_DATA = "fashion_mnist"

# the lecture demo's published (Keras, MNIST, first 10,000 training images) accuracies
LECTURE_PUBLISHED = {
    0: ("sigmoid, mse", 0.113, 0.114),
    1: ("cross-entropy", 0.873, 0.858),
    2: ("batch 10000", 0.113, 0.114),
    3: ("13 sigmoid layers", 0.113, 0.114),
    4: ("ReLU", 0.998, 0.956),
    5: ("no normalization", 0.107, 0.103),
    6: ("Adam", 0.999, 0.963),
    7: ("noisy test", 1.000, 0.475),
    8: ("3 layers, dropout 0.7", 0.991, 0.612),
}


@dataclass
class Section:
    """One tip: the presets it runs as one multirun, and what to show of it."""

    name: str
    title: str
    about: str
    overrides: list[str]
    plot_keys: list[str] = field(default_factory=list)  # final metrics against these keys
    grad_norms: bool = False  # per-layer gradient norms of the first epoch


SECTIONS = {
    s.name: s
    for s in [
        Section(
            "lecture",
            "The lecture's demo, step by step",
            "Each step changes one thing from the one before (conf/experiment/lecture/).",
            ["experiment=" + ",".join(f"lecture/step{i}" for i in range(9))],
        ),
        Section(
            "depth",
            "Depth and the activation function",
            "1 to 10 hidden layers of 128 units, SGD lr 0.1; sigmoid, ReLU and maxout.",
            ["experiment=tips/depth"],
            plot_keys=["model.depth"],
            grad_norms=True,
        ),
        Section(
            "optimizers",
            "Optimizers",
            "2 x 128 ReLU units, batch 100, 5 epochs; each optimizer with its usual lr.",
            ["experiment=tips/optimizers"],
            plot_keys=["optim"],
        ),
        Section(
            "batch_size",
            "Batch size",
            "2 x 128 ReLU units, Adam, 5 epochs: accuracy and seconds per epoch.",
            ["experiment=tips/batch_size"],
            plot_keys=["data.batch_size"],
        ),
        Section(
            "loss",
            "Mean squared error vs cross-entropy",
            "3 x 128 units, SGD lr 0.1, 10 epochs.",
            ["experiment=tips/loss"],
            plot_keys=["loss"],
        ),
        Section(
            "normalize",
            "Input normalization",
            "3 x 128 ReLU units, SGD lr 0.1, 10 epochs.",
            ["experiment=tips/normalize"],
            plot_keys=["data.normalize"],
        ),
        Section(
            "early_stopping",
            "Early stopping",
            "2 x 512 ReLU units, Adam, 2,000 training images, up to 50 epochs.",
            ["experiment=tips/early_stopping", "hydra/launcher=batched"],
        ),
        Section(
            "weight_decay",
            "L2 regularization (weight decay)",
            "2 x 512 ReLU units, SGD with momentum, 2,000 training images, 30 epochs.",
            ["experiment=tips/weight_decay", "hydra/launcher=batched"],
            plot_keys=["optim.weight_decay"],
        ),
        Section(
            "l1",
            "L1 regularization",
            "2 x 512 ReLU units, SGD with momentum, 2,000 training images, 30 epochs.",
            ["experiment=tips/l1", "hydra/launcher=batched"],
            plot_keys=["loss.l1"],
        ),
        Section(
            "dropout",
            "Dropout, on clean and noisy test inputs",
            "3 x 512 ReLU units, Adam, 20 epochs; test noise std 0 or 1.",
            ["experiment=tips/dropout", "hydra/launcher=batched"],
            plot_keys=["model.dropout"],
        ),
    ]
}


def default_runs_dir(data: str | None, sets: list[str]) -> Path:
    """outputs/report/<data>, plus the --set overrides in the name: sweeps made with other
    settings never resume into the full report's, nor get reported as them."""
    name = "-".join([data or "mnist", *sets])
    return Path("outputs/report") / re.sub(r"[^A-Za-z0-9_.-]+", "-", name)


def report_page(sections: list[str], data: str | None, sets: list[str], runs_dir: Path) -> Path:
    """Where a report's page goes unless --out says: docs/RESULTS.md for the full report
    (every section, --data fashion_mnist, no --set, the default runs dir), else RESULTS.md
    in the runs dir, so a quick look never replaces the documented results."""
    full = (
        set(sections) == set(SECTIONS)
        and data == FULL_REPORT_DATA
        and not sets
        and runs_dir.resolve() == default_runs_dir(data, sets).resolve()
    )
    return DOCS_PAGE if full else runs_dir / "RESULTS.md"


def images_dir(page: Path) -> Path:
    """The page's own folder of PNGs, named after it: docs/RESULTS.md -> docs/results/."""
    return page.parent / page.stem.lower()


def run_section(section: Section, sweep_dir: Path, extra: list[str]) -> None:
    """Run a section's presets as one Hydra multirun into `sweep_dir` (finished jobs kept)."""
    resume = [f"sweep.resume={sweep_dir}"] if sweep_dir.is_dir() else []
    command = [
        sys.executable,
        str(ROOT / "scripts" / "train.py"),
        "-m",
        *section.overrides,
        *extra,
        f"hydra.sweep.dir={sweep_dir}",
        *resume,
    ]
    print(f"[report] {section.name}: {' '.join(command[1:])}", flush=True)
    subprocess.run(command, check=True)


def section_table(section: Section, runs: pd.DataFrame) -> pd.DataFrame:
    """The settings that differ, then train / val / test accuracy, epochs and seconds."""
    varying, _ = split_settings(runs.drop(columns="path"))
    table = runs[["run", *varying, "status", "train/acc", "val/acc", "test/acc", "epochs"]].copy()
    table["s/epoch"] = [
        (read_metrics(Path(r)) or {}).get("seconds_per_epoch") for r in runs["path"]
    ]
    if section.name == "lecture":
        steps = [int(str(e).rsplit("step", 1)[-1]) for e in runs["experiment"]]
        table.insert(1, "step", steps)
        table["change"] = [LECTURE_PUBLISHED[s][0] for s in steps]
        table["published train/acc"] = [LECTURE_PUBLISHED[s][1] for s in steps]
        table["published test/acc"] = [LECTURE_PUBLISHED[s][2] for s in steps]
        table = table.drop(columns=["experiment"]).sort_values("step")
    return table.drop(columns=["run"])


def plot_grad_norms(runs: pd.DataFrame, out: Path) -> Path:
    """Mean gradient norm of each layer in the first epoch, for the deepest network of each
    activation: vanishing gradients show as a steep slope towards the input."""
    deepest = runs[runs["model.depth"].astype(int) == runs["model.depth"].astype(int).max()]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for _, row in deepest.iterrows():
        first = ((read_metrics(Path(row["path"])) or {}).get("history") or [{}])[0]
        names = [k for k in first if k.startswith("grad_norm/")]
        ax.plot(
            range(1, len(names) + 1), [first[k] for k in names], marker="o", label=str(row["model"])
        )
        ax.set_xticks(
            range(1, len(names) + 1),
            [n.split("/")[1] for n in names],
            rotation=45,
            fontsize="small",
        )
    ax.set_yscale("log")
    ax.set_ylabel("mean gradient norm, epoch 1")
    ax.set_title(f"Gradient norm per layer, {int(deepest['model.depth'].iloc[0])} hidden layers")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def write_report(
    sections: list[Section], runs_dir: Path, out: Path, command: str, notes_dir: Path | None = None
) -> Path:
    """The page `out`, a table and plots per section, from the runs on disk.

    The PNGs go into the page's own folder (images_dir), so no other page's are replaced.
    Raises FileNotFoundError, and writes nothing, when no section has a finished run.
    """
    finished = {}
    for section in sections:
        sweep_dir = runs_dir / section.name
        runs = collect_runs(sweep_dir) if sweep_dir.is_dir() else pd.DataFrame()
        finished[section.name] = runs[runs["status"].isin(DONE)] if not runs.empty else runs
    if all(runs.empty for runs in finished.values()):
        where = runs_dir if runs_dir.is_dir() else f"{runs_dir}, which does not exist"
        names = ", ".join(s.name for s in sections)
        raise FileNotFoundError(f"No finished runs of {names} in {where}")
    out.parent.mkdir(parents=True, exist_ok=True)
    images = images_dir(out)
    images.mkdir(exist_ok=True)
    parts = []
    for section in sections:
        sweep_dir = runs_dir / section.name
        runs = finished[section.name]
        parts += [f"## {section.title}", "", section.about, ""]
        if runs.empty:
            parts += ["No finished runs.", ""]
            continue
        runs = runs.assign(path=[str(sweep_dir / r) for r in runs["run"]])
        data_name = _data_name(sweep_dir)
        parts += [f"Data: `{data_name}`. Sweep: `{' '.join(section.overrides)}`.", ""]
        parts += [markdown_table(section_table(section, runs), digits=3), ""]
        varying, _ = split_settings(runs.drop(columns="path"))
        figures = [plot_curves(sweep_dir, runs, varying, images / f"{section.name}_curves.png")]
        for key in (k for k in section.plot_keys if k in runs):  # a key the sweep has
            others = [k for k in varying if k not in (key, "seed")]
            figures.append(plot_against(runs, key, others, images / f"{section.name}_{key}.png"))
        if section.grad_norms:
            figures.append(plot_grad_norms(runs, images / f"{section.name}_grad_norms.png"))
        parts += [f"![{f.stem}]({images.name}/{f.name})" for f in figures] + [""]
        note = (notes_dir or out.parent / "notes") / f"{section.name}.md"
        if note.is_file():
            parts += ["**What we saw.** " + note.read_text().strip(), ""]
    header = [
        "# The tips, measured",
        "",
        f"Generated by `{command}` on {date.today():%Y-%m-%d}, on {_machine()}.",
        "Every number below comes from that run; rerunning the command resumes it (finished",
        "jobs are kept) and rewrites this page. Accuracies are fractions of 1, `train/acc` is",
        "measured after training over the whole training split (eval mode), `s/epoch` is the",
        "mean time of one epoch's training pass.",
        "",
    ]
    out.write_text("\n".join(header + parts))
    return out


def _data_name(sweep_dir: Path) -> str:
    configs = sorted(sweep_dir.glob("*/.hydra/config.yaml"))
    if not configs:
        return "?"
    cfg = OmegaConf.load(configs[0])
    size = cfg.data.train_size
    return f"{cfg.data.name}" + (f", train_size={size}" if size else "")


def _machine() -> str:
    device = (
        torch.cuda.get_device_name(0)
        if torch.cuda.is_available()
        else f"CPU ({torch.get_num_threads()} threads)"
    )
    return f"{platform.machine()} {device}, torch {torch.__version__}"
