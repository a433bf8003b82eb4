"""The lecture's last tips in the report: bagging, dropout as an ensemble, and tuning on a
small set. Each needs more than a table of runs: an evaluation after training
(scripts/eval.py on the trained runs: ensembles, sampled dropout masks) or a comparison of
rankings. The deep-vs-wide section is an ordinary one (dltips.report).

Each `analyse_*` returns the section's table, plots and measured sentences from the runs;
those that evaluate run scripts/eval.py once as a Hydra multirun into the section's eval
dir (kept when complete, so a rerun of the report does not evaluate again).
"""

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure
from scipy import stats

from dltips.plots import settings_groups, short_label
from dltips.report import (
    ALPHA,
    ROOT,
    Verdict,
    _seconds_per_epoch,
    compare,
    counted,
    finished_runs,
    mean_std,
)

EVAL = ROOT / "scripts" / "eval.py"
BAGGING_ENSEMBLE = 4  # members of each of the disjoint ensembles that give error bars
MC_SAMPLES = (1, 2, 5, 10, 20, 50, 100)


def run_eval(sweep: list[str], jobs: int, out_dir: Path) -> list[dict]:
    """eval.json of each of the `jobs` jobs of one `scripts/eval.py -m <sweep>` into
    `out_dir` (in Hydra's order: the first key slowest), or what an earlier complete sweep
    there wrote."""
    results = [out_dir / str(i) / "eval.json" for i in range(jobs)]
    if not all(p.is_file() for p in results):
        shutil.rmtree(out_dir, ignore_errors=True)  # evaluations are cheap: all again
        command = [sys.executable, str(EVAL), "-m", *sweep, f"hydra.sweep.dir={out_dir}"]
        print(f"[report] eval: {jobs} evaluations into {out_dir}", flush=True)
        subprocess.run(command, check=True)
    return [json.loads(p.read_text()) for p in results]


def _settings(runs: pd.DataFrame, keys: list[str]) -> list[tuple[dict, pd.DataFrame]]:
    """settings_groups of the `keys` the runs have, in the order of their values."""
    groups = settings_groups(runs, [k for k in keys if k in runs])
    return sorted(groups, key=lambda setting_runs: tuple(setting_runs[0].values()))


def _label(setting: dict) -> str:
    return " ".join(short_label(k, v) for k, v in setting.items()) or "all"


def _on(setting: dict, *keys: str) -> tuple[bool, ...]:
    """Whether each key is on in a setting: true, or a number other than 0."""
    return tuple(
        str(setting.get(k, "0")).lower() not in ("0", "0.0", "false", "none") for k in keys
    )


def _by_seed(group: pd.DataFrame) -> pd.DataFrame:
    return group.assign(_seed=pd.to_numeric(group["seed"])).sort_values("_seed")


# --- bagging --------------------------------------------------------------------------------

BAGGING_KEYS = ["data.bootstrap", "model.dropout"]


def bagging_jobs(runs: pd.DataFrame) -> list[tuple[str, str, list[str]]]:
    """(setting, what, member run dirs) of each ensemble to evaluate: per setting, all its
    completed runs in seed order, then disjoint ensembles of BAGGING_ENSEMBLE of them."""
    jobs = []
    for setting, group in _settings(counted(runs), BAGGING_KEYS):
        paths = list(_by_seed(group)["path"])
        jobs.append((_label(setting), "all", paths))
        for i in range(0, len(paths) - BAGGING_ENSEMBLE + 1, BAGGING_ENSEMBLE):
            jobs.append(
                (
                    _label(setting),
                    f"disjoint {i // BAGGING_ENSEMBLE}",
                    paths[i : i + BAGGING_ENSEMBLE],
                )
            )
    return jobs


def analyse_bagging(runs: pd.DataFrame, out_dir: Path, images: Path):
    """Per setting (bootstrap, dropout): single members, disjoint ensembles of 4, the
    ensemble of all and its vote; the accuracy against the number of members."""
    jobs = bagging_jobs(runs)
    ensembles = ",".join(f"[{','.join(paths)}]" for _, _, paths in jobs)
    results = run_eval([f"ckpt={ensembles}"], len(jobs), out_dir)
    rows, disjoint, singles, curves, gains = [], {}, {}, {}, {}
    for (label, what, _), result in zip(jobs, results):
        if what == "all":
            members = [m["test/acc"] for m in result["members"]]
            singles[label], curves[label] = members, result["subsets"]
            rows.append(
                {
                    "setting": label,
                    "members": len(members),
                    "single network": mean_std(pd.Series(members)),
                    "best single": f"{max(members):.3f}",
                    f"ensembles of {BAGGING_ENSEMBLE}": "",
                    f"ensemble of {len(members)}": f"{result['test/acc']:.3f}",
                    "its vote": f"{result['test/vote_acc']:.3f}",
                    f"test/loss of {len(members)}": f"{result['test/loss']:.3f}",
                }
            )
        else:
            disjoint.setdefault(label, []).append(result["test/acc"])
            own = [m["test/acc"] for m in result["members"]]  # the ensemble's own members
            gains.setdefault(label, []).append(result["test/acc"] - sum(own) / len(own))
    for row in rows:
        row[f"ensembles of {BAGGING_ENSEMBLE}"] = mean_std(
            pd.Series(disjoint.get(row["setting"], []))
        )
    measured = []
    for label, values in disjoint.items():
        # each ensemble against the mean of its own members: paired, so the two are not
        # compared as if independent samples (they are the same networks)
        test = stats.ttest_1samp(gains[label], 0.0) if len(gains[label]) > 1 else None
        p = float(test.pvalue) if test is not None else math.nan
        gain = sum(gains[label]) / len(gains[label])
        verdict = (
            f"{'higher' if gain > 0 else 'lower'} (by {gain:+.3f} on average, paired t-test, "
            f"{_p(p)})"
            if p < ALPHA
            else f"no difference detected at {len(values)} ensembles ({_p(p)})"
        )
        measured.append(
            f"{label}: {len(values)} disjoint ensembles of {BAGGING_ENSEMBLE} "
            f"({mean_std(pd.Series(values))}) against the mean of each one's own "
            f"{BAGGING_ENSEMBLE} networks: {verdict}"
        )
    on = {_label(s): _on(s, *BAGGING_KEYS) for s, _ in _settings(counted(runs), BAGGING_KEYS)}
    bagged = next((label for label, o in on.items() if o == (True, False)), None)
    dropout = next((label for label, o in on.items() if o == (False, True)), None)
    if bagged in disjoint and dropout:
        v = compare(disjoint[bagged], singles[dropout])
        measured.append(
            f"bagging (ensembles of {BAGGING_ENSEMBLE} bootstrap networks, no dropout) against one "
            f"network with {dropout.split()[-1]}: {_verdict(v)}"
        )
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for i, (label, sub) in enumerate(curves.items()):
        color = f"C{i}"
        ax.fill_between(sub["members"], sub["min"], sub["max"], color=color, alpha=0.15)
        ax.plot(sub["members"], sub["mean"], "o-", color=color, markersize=3, label=label)
    ax.set_xlabel("networks in the ensemble (mean of their probabilities)")
    ax.set_ylabel("test/acc")
    ax.set_xscale("log", base=2)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    ax.set_title(
        "Bagging: ensembles of k networks (line: mean, band: min-max over random draws of k)"
    )
    path = images / "bagging_members.png"
    fig.savefig(path, dpi=110)
    return pd.DataFrame(rows), [path], measured


# --- dropout as an ensemble -----------------------------------------------------------------


def analyse_dropout_ensemble(runs: pd.DataFrame, out_dir: Path, images: Path):
    """The weight-scaling rule against the average of N sampled masks, per activation."""
    usable = _by_seed(counted(runs))
    paths = list(usable["path"])
    models = list(usable["model"]) if "model" in usable else ["model"] * len(paths)
    sweep = [f"ckpt={','.join(paths)}", f"mc_samples={','.join(map(str, MC_SAMPLES))}"]
    results = run_eval(sweep, len(paths) * len(MC_SAMPLES), out_dir)
    jobs = [(model, n) for model in models for n in MC_SAMPLES]  # Hydra's order: ckpt slowest
    frame = pd.DataFrame(
        {
            "model": model,
            "N": n,
            "scaled": r["test/acc"],
            "mc": r["mc_dropout/test/acc"],
            "per_class": max(abs(d) for d in r["per_class"]["difference"] if d is not None),
        }
        for (model, n), r in zip(jobs, results)
    )
    rows, measured = [], []
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for i, (model, group) in enumerate(frame.groupby("model", sort=False)):
        scaled = list(group[group["N"] == MC_SAMPLES[0]]["scaled"])
        row = {
            "model": model,
            "seeds": len(scaled),
            "weight scaling (1 - p)": mean_std(pd.Series(scaled)),
        }
        for n, at_n in group.groupby("N"):
            row[f"{n} mask{'s' * (n > 1)}"] = mean_std(at_n["mc"])
        spread = group.groupby("N")["mc"].agg(["mean", "min", "max"])
        top = group[group["N"] == MC_SAMPLES[-1]]
        row[f"largest per-class difference at {MC_SAMPLES[-1]}"] = f"{top['per_class'].max():.3f}"
        rows.append(row)
        for n in (MC_SAMPLES[0], MC_SAMPLES[-1]):
            v = compare(list(group[group["N"] == n]["mc"]), scaled)
            measured.append(
                f"{model}: the average of {n} mask{'s' * (n > 1)} against weight scaling: "
                f"{_verdict(v)}"
            )
        color = f"C{i}"
        ax.fill_between(spread.index, spread["min"], spread["max"], color=color, alpha=0.15)
        ax.plot(
            spread.index, spread["mean"], "o-", color=color, label=f"{model}: average of N masks"
        )
        ax.axhline(
            sum(scaled) / len(scaled), color=color, linestyle="--", label=f"{model}: weight scaling"
        )
    ax.set_xscale("log")
    ax.set_xlabel("N sampled dropout masks (log scale)")
    ax.set_ylabel("test/acc")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    ax.set_title("Dropout as an ensemble: N sampled sub-networks against the weight-scaled one")
    path = images / "dropout_ensemble_masks.png"
    fig.savefig(path, dpi=110)
    return pd.DataFrame(rows), [path], measured


# --- tuning on a small set ------------------------------------------------------------------

SMALL_KEYS = ["optim", "optim.lr"]


def analyse_small_data(runs: pd.DataFrame, out_dir: Path, images: Path):
    """Each subset draw's and seed's ranking of the settings against the full set's
    (Spearman), per subset size, with the time each size took."""
    full = finished_runs(out_dir.with_name(out_dir.name.replace("_eval", "_full")))
    key = lambda g: " ".join(short_label(k, g[k]) for k in SMALL_KEYS if k in g)  # noqa: E731
    full = counted(full).assign(setting=lambda f: f.apply(key, axis=1))
    reference = full.groupby("setting")["test/acc"].mean()
    best_full = reference.idxmax()
    small = counted(runs).assign(setting=lambda f: f.apply(key, axis=1))
    rows, points, measured = [], [], []
    total = len(pd.to_numeric(full["seed"]).unique())
    for size, at_size in [*small.groupby(pd.to_numeric(small["data.train_size"])), ("full", full)]:
        rhos, picks = [], []
        draws = (
            at_size.groupby(["data.subset_seed", "seed"])
            if size != "full"
            else at_size.groupby("seed")
        )
        for _, ranking in draws:
            acc = ranking.set_index("setting")["test/acc"]
            rho = stats.spearmanr(acc.sort_index(), reference[acc.sort_index().index]).statistic
            rhos.append(rho)
            picks.append(acc.idxmax())
            if size != "full":
                points.append((int(size), rho))
        frame = pd.DataFrame(draws.size().reset_index()).assign(rho=rhos)
        seconds = sum(  # a batched run's share of its group's time
            _seconds_per_epoch(Path(path)) * epochs
            for path, epochs in zip(at_size["path"], at_size["epochs"])
        )
        regret = [reference[best_full] - reference[p] for p in picks]
        row = {
            "train images": "all (each seed against the seeds' mean)"
            if size == "full"
            else f"{int(size):,}",
            "rankings": len(rhos),
            "Spearman ρ with the full set": mean_std(pd.Series(rhos)),
        }
        if size != "full":
            row["spread over seeds"] = (
                f"{frame.groupby('data.subset_seed')['rho'].std().mean():.3f}"
            )
            row["spread over draws"] = f"{frame.groupby('seed')['rho'].std().mean():.3f}"
        row["picks the full set's best"] = f"{sum(p == best_full for p in picks)} of {len(picks)}"
        row["full-set test/acc lost by its pick"] = mean_std(pd.Series(regret))
        row["training minutes (its runs' epochs)"] = f"{seconds / 60:.1f}"
        rows.append(row)
        if size != "full":
            measured.append(
                f"{int(size):,} images: ρ = {mean_std(pd.Series(rhos))} over {len(rhos)} rankings; "
                f"its best setting is the full set's best ({best_full}) in "
                f"{sum(p == best_full for p in picks)} of {len(picks)}, and costs "
                f"{mean_std(pd.Series(regret))} of full-set test/acc"
            )
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.add_subplot()
    sizes = sorted({s for s, _ in points})
    ax.plot(
        [s for s, _ in points],
        [r for _, r in points],
        "o",
        alpha=0.4,
        label="one subset draw and seed",
    )
    ax.plot(
        sizes,
        [pd.Series([r for s, r in points if s == x]).mean() for x in sizes],
        "-",
        label="mean",
    )
    ax.set_xscale("log")
    ax.set_xticks(sizes, [f"{s:,}" for s in sizes])
    ax.minorticks_off()  # the log axis' own ticks would overlap the sizes
    ax.set_xlabel("training images of the small set (log scale)")
    ax.set_ylabel("Spearman ρ with the full set's ranking")
    ax.set_ylim(min(r for _, r in points) - 0.05 if points else 0, 1.01)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    ax.set_title(f"Does the small set rank {len(reference)} settings as the full set does?")
    path = images / "small_data_rank.png"
    fig.savefig(path, dpi=110)
    measured.insert(
        0,
        f"the full set's best setting: {best_full} (test/acc {reference[best_full]:.3f}, "
        f"mean of {total} seeds)",
    )
    return pd.DataFrame(rows), [path], measured


def _verdict(v: Verdict) -> str:
    """'higher (difference +0.012, p = 0.004)', or 'no difference detected at 3 and 16
    values (p = 0.4)': compare()'s verdict on mean(a) - mean(b)."""
    if not v.different:
        return f"no difference detected at {v.n[0]} and {v.n[1]} values ({_p(v.p)})"
    side = "higher" if v.difference > 0 else "lower"
    return f"{side} (difference {v.difference:+.3f}, {_p(v.p)})"


def _p(p: float) -> str:
    return "no test" if p != p else "p < 0.001" if p < 0.001 else f"p = {p:.3f}"
