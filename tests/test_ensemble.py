"""scripts/eval.py on ensembles of real trained runs and with MC dropout, through the real CLI
(in this process: run_cli)."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image
from test_eval import assert_clean_error, eval_results, metrics_of

from conftest import TINY_CLI, make_cfg, run_cli
from dltips.data import load_dataset
from dltips.ensemble import first_sizes, log_mean_exp, vote
from dltips.evaluation import build_model, mc_dropout_log_probs
from dltips.train import train

# one short epoch on 1,000 images: a model that has learned something, in about a second
SHORT = ["model.width=32", "trainer.max_epochs=1", "data.train_size=1000"]
# what eval.json of one checkpoint held before ensembles and MC dropout, in this order
SINGLE_KEYS = [
    "split",
    "test/loss",
    "test/acc",
    "per_class_acc",
    "confusion_matrix",
    "num_images",
    "checkpoint",
    "epoch",
    "run_status",
    "warning",
    "data_overrides",
    "data",
    "device",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """A folder of two real runs, seeds 0 and 1, with dropout 0.2: `runs/0`, `runs/1`."""
    root = tmp_path_factory.mktemp("ensemble") / "runs"
    for seed in (0, 1):
        train(make_cfg(*SHORT, "model.dropout=0.2", f"seed={seed}"), root / str(seed))
    return root


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory) -> Path:
    """A real run without dropout."""
    run = tmp_path_factory.mktemp("no_dropout") / "run"
    train(make_cfg(*SHORT), run)
    return run


def member_probabilities(run: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(softmax probabilities, labels) of a run's reported weights on its test images,
    computed here from the checkpoint, the model config and data.py, not by eval.py."""
    ckpt = torch.load(run / metrics_of(run)["checkpoint"], weights_only=True)
    cfg = OmegaConf.create(ckpt["config"])
    data = load_dataset(cfg.data, seed=cfg.seed)
    model = instantiate(cfg.model, in_features=data.in_features, num_classes=data.num_classes)
    model.load_state_dict(ckpt["model"])
    with torch.no_grad():
        return model.eval()(data.x_test).softmax(dim=1), data.y_test


def is_png(path: Path) -> bool:
    with Image.open(path) as png:
        return png.format == "PNG" and len(png.convert("L").getcolors(maxcolors=100_000)) > 10


# --- ensembles ---------------------------------------------------------------------------


def test_an_ensemble_is_the_mean_of_its_members_probabilities(runs, tmp_path):
    result = run_cli("eval.py", f"ckpt={runs}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    ev = eval_results(tmp_path)

    (p0, y), (p1, _) = member_probabilities(runs / "0"), member_probabilities(runs / "1")
    mean = (p0.double() + p1.double()) / 2
    assert ev["test/acc"] == (mean.argmax(dim=1) == y).sum().item() / len(y)
    nll = -mean.log()[torch.arange(len(y)), y].mean().item()
    assert ev["test/loss"] == pytest.approx(nll, rel=1e-6)
    # not the members' mean loss (their mean is better than that: Jensen), nor one member's
    member_losses = [metrics_of(runs / k)["test/loss"] for k in "01"]
    assert ev["test/loss"] < sum(member_losses) / 2 - 1e-3
    # two votes: where they differ, the lower class wins the tie
    a, b = p0.argmax(dim=1), p1.argmax(dim=1)
    assert (a != b).any()
    assert ev["test/vote_acc"] == (torch.minimum(a, b) == y).sum().item() / len(y)

    assert [m["run"] for m in ev["members"]] == [str((runs / k).resolve()) for k in "01"]
    for m, k in zip(ev["members"], "01"):
        assert m["test/acc"] == metrics_of(runs / k)["test/acc"]  # each member's own numbers
        assert m["checkpoint"].endswith("best.pt") and m["run_status"] == "completed"
    assert ev["left_out"] == [] and ev["num_images"] == 1000 and ev["seed"] == 0
    assert [f["members"] for f in ev["first_members"]] == [1, 2]
    assert ev["first_members"][0]["test/acc"] == ev["members"][0]["test/acc"]
    assert ev["first_members"][1]["test/acc"] == ev["test/acc"]
    subsets = ev["subsets"]
    assert subsets["members"] == [1, 2] and subsets["draws"] == 20
    assert subsets["min"][1] == subsets["max"][1] == ev["test/acc"]  # all members: one subset
    single = sorted(m["test/acc"] for m in ev["members"])
    assert single[0] <= subsets["min"][0] <= subsets["max"][0] <= single[1]
    assert torch.tensor(ev["confusion_matrix"]).diag().sum().item() / 1000 == ev["test/acc"]
    assert "test/vote_acc" in result.stdout and "first k members:  1: " in result.stdout
    assert is_png(next(tmp_path.glob("outputs/eval/*/*/ensemble.png")))
    assert is_png(next(tmp_path.glob("outputs/eval/*/*/confusion_matrix.png")))


@pytest.mark.slow
def test_a_list_of_runs_is_the_same_ensemble_in_run_order(runs, tmp_path):
    (tmp_path / "a").mkdir()
    result = run_cli("eval.py", f"ckpt={runs}", cwd=tmp_path / "a")
    assert result.returncode == 0, result.stderr
    (tmp_path / "b").mkdir()
    result = run_cli("eval.py", f"ckpt=[{runs / '1'},{runs / '0'}]", cwd=tmp_path / "b")
    assert result.returncode == 0, result.stderr
    of_dir, of_list = eval_results(tmp_path / "a"), eval_results(tmp_path / "b")
    assert of_list == of_dir  # sorted: run 0 is the first member either way


@pytest.mark.slow
def test_m_with_several_ckpts_still_evaluates_each_on_its_own(runs, tmp_path):
    result = run_cli("eval.py", "-m", f"ckpt={runs / '0'},{runs / '1'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (sweep_dir,) = tmp_path.glob("outputs/eval/multirun/*/*")
    jobs = [json.loads((sweep_dir / n / "eval.json").read_text()) for n in "01"]
    assert [list(job) for job in jobs] == [SINGLE_KEYS, SINGLE_KEYS]  # no ensemble keys
    assert [job["test/acc"] for job in jobs] == [metrics_of(runs / k)["test/acc"] for k in "01"]
    assert not list(sweep_dir.rglob("ensemble.png"))


def test_a_folder_of_runs_leaves_out_the_ones_that_did_not_complete(runs, tmp_path):
    folder = tmp_path / "runs"
    shutil.copytree(runs, folder)
    metrics = metrics_of(folder / "1")
    (folder / "1" / "metrics.json").write_text(json.dumps({**metrics, "status": "diverged"}))
    result = run_cli("eval.py", "ckpt=runs", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    ev = eval_results(tmp_path)
    assert [m["run"] for m in ev["members"]] == [str((folder / "0").resolve())]
    assert ev["left_out"] == [{"run": str((folder / "1").resolve()), "status": "diverged"}]
    assert ev["test/acc"] == metrics_of(folder / "0")["test/acc"]  # one member: its own
    assert "Left out of runs (did not complete): 1 diverged" in result.stdout

    shutil.rmtree(tmp_path / "outputs")
    metrics = metrics_of(folder / "0")
    (folder / "0" / "metrics.json").write_text(json.dumps({**metrics, "status": "pruned"}))
    result = run_cli("eval.py", "ckpt=runs", cwd=tmp_path)
    assert_clean_error(result, "ckpt=runs: none of its 2 runs completed (1 diverged, 1 pruned)")
    assert not (tmp_path / "outputs").exists()


def test_members_of_another_data_set_are_refused_and_nothing_is_written(runs, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(runs / "1", other)
    best = other / "checkpoints" / "best.pt"
    ckpt = torch.load(best, weights_only=True)
    ckpt["config"]["data"] = OmegaConf.to_container(make_cfg("data=mnist").data)
    torch.save(ckpt, best)  # a run trained on MNIST, as far as its checkpoint says
    result = run_cli("eval.py", f"ckpt=[{runs / '0'},other]", cwd=tmp_path)
    assert_clean_error(
        result,
        f"ckpt: the runs of an ensemble must share the data set and the number of classes: "
        f"{runs / '0'} has mnist_5k (10 classes), other has mnist (10 classes).",
    )
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ckpt=RUNS", "split=val"], "hold out different val images (another seed"),
        (["ckpt=RUNS", "mc_samples=2"], "mc_samples=2 evaluates one run, not an ensemble of 2"),
        (["ckpt=[]"], "ckpt=[]: name the runs of the ensemble"),
        (["ckpt=[RUNS/0,no/such/run]"], "ckpt=no/such/run: no such run directory"),
        (["ckpt=RUNS/0", "mc_samples=-1"], "mc_samples=-1: must be an integer >= 0"),
        (["ckpt=RUNS/0", "seed=x"], "seed=x: must be an integer"),
    ],
)
def test_ensemble_and_mc_errors_are_clear_and_write_nothing(runs, tmp_path, args, message):
    result = run_cli("eval.py", *(a.replace("RUNS", str(runs)) for a in args), cwd=tmp_path)
    assert_clean_error(result, message)
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_the_sweep_dir_of_a_seed_sweep_is_an_ensemble(tmp_path):
    result = run_cli("train.py", "-m", "seed=0,1", *TINY_CLI, "data.train_size=1000", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (sweep_dir,) = tmp_path.glob("outputs/multirun/*/*")
    result = run_cli("eval.py", f"ckpt={sweep_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    ev = eval_results(tmp_path)
    assert [m["run"] for m in ev["members"]] == [str((sweep_dir / k).resolve()) for k in "01"]
    assert [m["test/acc"] for m in ev["members"]] == [
        metrics_of(sweep_dir / k)["test/acc"] for k in "01"
    ]
    assert 0 < ev["test/acc"] <= 1 and ev["left_out"] == []


def test_log_mean_exp_and_the_vote():
    logp = torch.randn(3, 50, 10).log_softmax(dim=2)
    assert torch.equal(log_mean_exp(logp[:1].expand(4, -1, -1)), logp[0])  # bit for bit
    assert torch.allclose(log_mean_exp(logp), logp.exp().mean(dim=0).log(), atol=1e-6)
    one_hot = torch.eye(4).log()  # class c certain: a member's vote for c
    votes = one_hot[torch.tensor([[3, 2], [1, 0], [1, 1]])]  # (3 members, 2 images, 4)
    assert vote(votes).tolist() == [1, 0]  # votes 3,1,1: 1; votes 2,0,1: a tie, the lowest
    assert first_sizes(1) == [1] and first_sizes(4) == [1, 2, 4] and first_sizes(6) == [1, 2, 4, 6]


# --- MC dropout ------------------------------------------------------------------------


def test_mc_dropout_without_dropout_equals_the_plain_evaluation(plain_run, tmp_path):
    result = run_cli("eval.py", f"ckpt={plain_run}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    plain = eval_results(tmp_path)
    assert list(plain) == SINGLE_KEYS  # without mc_samples: what eval.json always held
    shutil.rmtree(tmp_path / "outputs")

    result = run_cli("eval.py", f"ckpt={plain_run}", "mc_samples=3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    ev = eval_results(tmp_path)
    assert {k: ev[k] for k in SINGLE_KEYS if k != "device"} == {
        k: plain[k] for k in SINGLE_KEYS if k != "device"
    }
    assert ev["mc_samples"] == 3 and ev["seed"] == 0
    assert ev["mc_dropout/test/acc"] == ev["test/acc"]  # exactly
    assert ev["mc_dropout/test/loss"] == ev["test/loss"]  # exactly
    per_class = ev["per_class"]
    assert per_class["mc_dropout"] == per_class["weight_scaled"] == ev["per_class_acc"]
    assert per_class["difference"] == [0.0] * 10
    assert "The model has no dropout layers" in result.stdout


def test_mc_dropout_with_dropout_writes_probabilities(runs, tmp_path):
    result = run_cli("eval.py", f"ckpt={runs / '0'}", "mc_samples=4", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    ev = eval_results(tmp_path)
    assert 0 <= ev["mc_dropout/test/acc"] <= 1 and ev["mc_dropout/test/loss"] > 0
    assert ev["test/acc"] == metrics_of(runs / "0")["test/acc"]  # the plain numbers stay
    per_class = ev["per_class"]
    assert all(0 <= a <= 1 for a in per_class["mc_dropout"] + per_class["weight_scaled"])
    assert per_class["difference"] == [
        m - w for m, w in zip(per_class["mc_dropout"], per_class["weight_scaled"])
    ]
    assert "mc_dropout/test/acc" in result.stdout


def test_mc_dropout_samples_are_seeded_and_leave_the_rng_alone(runs):
    ckpt = torch.load(runs / "0" / "checkpoints" / "best.pt", weights_only=True)
    cfg = OmegaConf.create(ckpt["config"])
    model = build_model(cfg, ckpt["model"], 784, 10, Path("best.pt"))
    x = load_dataset(cfg.data, seed=0).x_test[:200]
    rng = torch.get_rng_state()
    first = mc_dropout_log_probs(model, x, 4, False, seed=0)
    assert torch.equal(torch.get_rng_state(), rng)  # the process's RNG as it was
    assert torch.equal(mc_dropout_log_probs(model, x, 4, False, seed=0), first)
    assert not torch.equal(mc_dropout_log_probs(model, x, 4, False, seed=1), first)
    with torch.no_grad():
        plain = model.eval()(x).log_softmax(dim=1)
    assert not torch.allclose(first, plain)  # dropout was on: not the eval-mode output
    assert torch.allclose(first.exp().sum(dim=1), torch.ones(200))  # probabilities
    assert not model.training and not any(m.training for m in model.modules())
