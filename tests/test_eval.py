"""scripts/eval.py and scripts/predict.py on real trained runs, through the real CLI."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from conftest import FASHION_DIR, ROOT, file_digests, make_cfg, run_script
from dltips.data import load_dataset, read_cached
from dltips.train import train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A real two-epoch run on the bundled digits (unit normalization)."""
    run = tmp_path_factory.mktemp("eval") / "run"
    train(make_cfg("trainer.max_epochs=2"), run)
    return run


@pytest.fixture(scope="module")
def standard_run(tmp_path_factory) -> Path:
    """A real two-epoch run with data.normalize=standard (the training split's mean, std)."""
    run = tmp_path_factory.mktemp("eval_standard") / "run"
    train(make_cfg("trainer.max_epochs=2", "data.normalize=standard"), run)
    return run


def metrics_of(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def eval_results(folder: Path) -> dict:
    (path,) = folder.glob("outputs/eval/*/*/eval.json")  # outputs/eval/DATE/TIME
    return json.loads(path.read_text())


def assert_clean_error(result, message: str) -> None:
    """`error: <message>` on stderr, a non-zero exit and no traceback."""
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert result.stderr.startswith("error: "), output
    assert message in result.stderr, output
    assert "Traceback" not in output


# --- eval.py --------------------------------------------------------------------------


def test_eval_of_a_run_dir_reports_the_runs_own_test_metrics(run_dir, tmp_path):
    before = file_digests(run_dir)
    result = run_script("eval.py", f"ckpt={run_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    metrics, ev = metrics_of(run_dir), eval_results(tmp_path)

    # the run's reported weights (best.pt) on the same split: train()'s own numbers
    assert ev["split"] == "test"
    assert ev["checkpoint"] == str((run_dir / "checkpoints" / "best.pt").resolve())
    assert ev["epoch"] == metrics["best_epoch"]
    assert ev["test/acc"] == metrics["test/acc"]
    assert ev["test/loss"] == pytest.approx(metrics["test/loss"], rel=1e-6)
    assert ev["data_overrides"] == [] and ev["data"]["name"] == "mnist_5k"

    # rows are the true classes: they add up to the number of test images of each class
    y_test = load_dataset(make_cfg().data, seed=0).y_test
    confusion = torch.tensor(ev["confusion_matrix"])
    assert confusion.sum(dim=1).tolist() == torch.bincount(y_test, minlength=10).tolist()
    assert confusion.diag().sum().item() / len(y_test) == ev["test/acc"]
    per_class = (confusion.diag() / confusion.sum(dim=1)).tolist()
    assert ev["per_class_acc"] == pytest.approx(per_class)

    out = result.stdout
    assert f"test/acc {ev['test/acc']:.4f}" in out and "per-class acc" in out
    assert f"9: {ev['per_class_acc'][9]:.3f}" in out
    with Image.open(next(tmp_path.glob("outputs/eval/*/*/confusion_matrix.png"))) as png:
        assert png.format == "PNG" and min(png.size) > 300
        assert len(png.convert("L").getcolors(maxcolors=100_000)) > 10  # drawn, not blank
    assert file_digests(run_dir) == before  # nothing written into the run


def test_eval_of_a_checkpoint_file_on_the_validation_split(run_dir, tmp_path):
    best = run_dir / "checkpoints" / "best.pt"
    result = run_script("eval.py", f"ckpt={best}", "split=val", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    ev = eval_results(tmp_path)
    assert ev["split"] == "val" and ev["num_images"] == 500
    assert ev["val/acc"] == metrics_of(run_dir)["val/acc"]
    assert "val/acc" in result.stdout


def test_a_run_without_restore_best_is_evaluated_with_its_last_weights(tmp_path):
    # min_delta=1: val/acc can never gain 1, so best.pt stays at epoch 1 while training goes on
    run = tmp_path / "run"
    train(
        make_cfg(
            "trainer.max_epochs=2",
            "trainer.early_stopping.monitor=val/acc",
            "trainer.early_stopping.min_delta=1",
            "trainer.early_stopping.restore_best=false",
        ),
        run,
    )
    assert torch.load(run / "checkpoints" / "best.pt", weights_only=True)["epoch"] == 1
    result = run_script("eval.py", f"ckpt={run}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    ev = eval_results(tmp_path)
    assert ev["epoch"] == 2 and ev["checkpoint"].endswith("last.pt")
    assert ev["test/acc"] == metrics_of(run)["test/acc"]  # the weights the run reported


def test_noise_sweep_evaluates_one_model_at_several_noise_levels(run_dir, tmp_path):
    result = run_script(
        "eval.py", "-m", f"ckpt={run_dir}", "data.test_noise_std=0,0.5,2", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    (sweep_dir,) = tmp_path.glob("outputs/eval/multirun/*/*")
    jobs = [json.loads((sweep_dir / str(n) / "eval.json").read_text()) for n in range(3)]
    assert [j["data"]["test_noise_std"] for j in jobs] == [0, 0.5, 2]
    assert [j["data_overrides"] for j in jobs] == [
        [f"data.test_noise_std={s}"] for s in ("0", "0.5", "2")
    ]
    acc = [j["test/acc"] for j in jobs]
    assert acc[0] == metrics_of(run_dir)["test/acc"]
    assert acc[2] < acc[0] - 0.1  # std-2 noise on [0, 1] pixels buries the digits
    assert not list(run_dir.rglob("eval.json"))


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_eval_on_another_data_set_keeps_the_checkpoints_normalization(standard_run, tmp_path):
    result = run_script("eval.py", f"ckpt={standard_run}", "data=fashion_mnist", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    ev = eval_results(tmp_path)
    assert ev["data"]["name"] == "fashion_mnist" and ev["num_images"] == 10_000
    assert ev["data"]["normalize"] == "standard"  # fashion_mnist.yaml says unit
    assert ev["data_overrides"] == ["data=fashion_mnist"]
    assert ev["test/acc"] < metrics_of(standard_run)["test/acc"] - 0.3  # digits model, clothes


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ckpt=no/such/run"], "ckpt=no/such/run: no such run directory or checkpoint file"),
        (["ckpt=README.md"], "README.md is not a PyTorch checkpoint: it is a text file"),
        (["ckpt=other.pt"], "other.pt is not a dltips checkpoint: it has no 'epoch'"),
        (["ckpt=empty"], "no checkpoints/best.pt or checkpoints/last.pt"),
        ([], "ckpt is not set"),
        (["ckpt=RUN", "split=holdout"], "split='holdout': must be test, val or train"),
        (["ckpt=RUN", "data.test_noise_std=-1"], "data.test_noise_std=-1: must be a number >= 0"),
        (["ckpt=RUN", "hydra.run.dir=RUN"], "holds a training run"),
    ],
)
def test_eval_errors_are_clear_and_write_nothing(run_dir, tmp_path, args, message):
    shutil.copy(ROOT / "README.md", tmp_path)
    torch.save({"model": {}}, tmp_path / "other.pt")
    (tmp_path / "empty").mkdir()
    before = file_digests(run_dir)
    result = run_script("eval.py", *(a.replace("RUN", str(run_dir)) for a in args), cwd=tmp_path)
    assert_clean_error(result, message)
    assert "trainer.resume" not in result.stderr  # the advice is about ckpt=
    assert not (tmp_path / "outputs").exists()
    assert file_digests(run_dir) == before


# --- predict.py -----------------------------------------------------------------------


def expected_predictions(run: Path, indices: slice) -> tuple[list[int], list[float]]:
    """The run's best.pt on its own test images, normalized by data.py: (classes, probs)."""
    ckpt = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    cfg = OmegaConf.create(ckpt["config"])
    data = load_dataset(cfg.data, seed=cfg.seed)
    model = instantiate(cfg.model, in_features=data.in_features, num_classes=data.num_classes)
    model.load_state_dict(ckpt["model"])
    with torch.no_grad():
        probs = model.eval()(data.x_test[indices]).softmax(dim=1)
    best, classes = probs.max(dim=1)
    return classes.tolist(), best.tolist()


def predictions(stdout: str) -> dict[str, tuple[int, float]]:
    """{image: (class, probability)} of predict.py's table."""
    header, *rows = stdout.strip().splitlines()
    assert header.split() == ["image", "class", "probability"]
    return {name: (int(cls), float(p)) for name, cls, p in (row.split() for row in rows)}


def test_predict_classifies_npy_and_png_images_as_the_model_does(run_dir, tmp_path):
    every_100th = slice(None, None, 100)  # one image of each class: the test set is by class
    images = read_cached(make_cfg().data)["x_test"][every_100th].reshape(-1, 28, 28).numpy()
    classes, probs = expected_predictions(run_dir, every_100th)
    np.save(tmp_path / "digits.npy", images)
    (tmp_path / "pngs").mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / "pngs" / f"d{i}.png")
    Image.fromarray(images[3]).convert("RGB").save(tmp_path / "pngs" / "rgb3.png")
    big = Image.fromarray(images[5]).resize((56, 56), Image.Resampling.NEAREST)
    big.save(tmp_path / "pngs" / "big5.png")
    before = file_digests(tmp_path)

    result = run_script("predict.py", f"ckpt={run_dir}", "images=digits.npy", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    got = predictions(result.stdout)
    assert list(got) == [str(i) for i in range(10)]
    assert [c for c, _ in got.values()] == classes
    assert [p for _, p in got.values()] == pytest.approx(probs, abs=6e-5)  # printed to 4 places

    result = run_script("predict.py", f"ckpt={run_dir}", "images=pngs", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    got = predictions(result.stdout)
    assert sorted(got) == sorted([f"d{i}.png" for i in range(10)] + ["rgb3.png", "big5.png"])
    assert [got[f"d{i}.png"][0] for i in range(10)] == classes
    assert got["rgb3.png"] == got["d3.png"]  # RGB of gray pixels: the same image
    assert got["big5.png"][0] == classes[5]
    assert "2 of 12 images were not 28x28 grayscale" in result.stderr
    assert file_digests(tmp_path) == before  # predict writes nothing


def test_predict_standardizes_with_the_training_mean_and_std(standard_run, tmp_path):
    indices = slice(50, 1000, 95)
    images = read_cached(make_cfg().data)["x_test"][indices].numpy()  # (N, 784)
    np.save(tmp_path / "digits.npy", images)
    result = run_script("predict.py", f"ckpt={standard_run}", "images=digits.npy", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    classes, probs = expected_predictions(standard_run, indices)
    got = predictions(result.stdout)
    assert [c for c, _ in got.values()] == classes
    assert [p for _, p in got.values()] == pytest.approx(probs, abs=6e-5)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["images=nope"], "images=nope: no such file or folder"),
        (["images=empty"], "images=empty: the folder holds no .png files"),
        (["images=small.npy"], "its array has shape (3, 27, 27); it must be (N, 28, 28)"),
        (["images=float.npy"], "its array is float32; it must be uint8"),
        (["images=README.md"], "not a folder, a .png or an .npy file"),
        (["images=broken/x.png"], "cannot read broken/x.png as a PNG image"),
        ([], "images is not set"),
    ],
)
def test_predict_errors_are_clear(run_dir, tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "x.png").write_text("not a png")
    shutil.copy(ROOT / "README.md", tmp_path)
    np.save(tmp_path / "small.npy", np.zeros((3, 27, 27), dtype=np.uint8))
    np.save(tmp_path / "float.npy", np.zeros((3, 28, 28), dtype=np.float32))
    before = file_digests(tmp_path)
    result = run_script("predict.py", f"ckpt={run_dir}", *args, cwd=tmp_path)
    assert_clean_error(result, message)
    assert file_digests(tmp_path) == before


@pytest.mark.parametrize(
    ("ckpt", "message"),
    [
        ("no/such/run", "ckpt=no/such/run: no such run directory or checkpoint file"),
        ("README.md", "README.md is not a PyTorch checkpoint"),
    ],
)
def test_predict_refuses_what_is_not_a_checkpoint(tmp_path, ckpt, message):
    shutil.copy(ROOT / "README.md", tmp_path)
    np.save(tmp_path / "x.npy", np.zeros((2, 28, 28), dtype=np.uint8))
    result = run_script("predict.py", f"ckpt={ckpt}", "images=x.npy", cwd=tmp_path)
    assert_clean_error(result, message)
    assert "trainer.resume" not in result.stderr
