"""scripts/eval.py and scripts/predict.py on real trained runs, through the real CLI (in this
process: run_cli)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from conftest import FASHION_DIR, ROOT, file_digests, make_cfg, run_cli
from dltips.data import load_dataset, read_cached
from dltips.run_state import Job
from dltips.train import train, train_group


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


@pytest.fixture(scope="module")
def early_best_run(tmp_path_factory) -> Path:
    """A real two-epoch run whose reported weights (best.pt, epoch 1) are not last.pt's:
    min_delta=1 on val/acc, which never gains 1, keeps epoch 1 the best."""
    run = tmp_path_factory.mktemp("eval_early_best") / "run"
    train(
        make_cfg(
            "trainer.max_epochs=2",
            "trainer.early_stopping.monitor=val/acc",
            "trainer.early_stopping.min_delta=1",
        ),
        run,
    )
    return run


def run_in_process(*args: str, cwd: Path) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of run_cli(*args)."""
    result = run_cli(*args, cwd=cwd)
    return result.returncode, result.stdout, result.stderr


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
    result = run_cli("eval.py", f"ckpt={run_dir}", cwd=tmp_path)
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
    result = run_cli("eval.py", f"ckpt={best}", "split=val", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    ev = eval_results(tmp_path)
    assert ev["split"] == "val" and ev["num_images"] == 500
    assert ev["val/acc"] == metrics_of(run_dir)["val/acc"]
    assert "val/acc" in result.stdout


@pytest.mark.slow
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
    result = run_cli("eval.py", f"ckpt={run}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    ev = eval_results(tmp_path)
    assert ev["epoch"] == 2 and ev["checkpoint"].endswith("last.pt")
    assert ev["test/acc"] == metrics_of(run)["test/acc"]  # the weights the run reported


@pytest.mark.slow
def test_eval_uses_the_checkpoint_that_metrics_json_names(early_best_run, tmp_path):
    metrics = metrics_of(early_best_run)
    assert metrics["checkpoint"] == "checkpoints/best.pt"  # epoch 1; last.pt is epoch 2
    status, out, err = run_in_process("eval.py", f"ckpt={early_best_run}", cwd=tmp_path)
    assert status == 0, err
    ev = eval_results(tmp_path)
    assert ev["checkpoint"] == str((early_best_run / metrics["checkpoint"]).resolve())
    assert ev["epoch"] == 1 and ev["test/acc"] == metrics["test/acc"]
    assert ev["run_status"] == "completed" and ev["warning"] is None
    assert "best.pt (epoch 1)" in out and "WARNING" not in out

    # another checkpoint of the run, named explicitly: used, and said not to be the reported one
    shutil.rmtree(tmp_path / "outputs")
    last = early_best_run / "checkpoints" / "last.pt"
    status, out, err = run_in_process("eval.py", f"ckpt={last}", cwd=tmp_path)
    assert status == 0, err
    ev = eval_results(tmp_path)
    assert ev["epoch"] == 2 and "reports the weights of checkpoints/best.pt" in ev["warning"]
    assert f"[WARNING] - {ev['warning']}" in out


@pytest.mark.slow
def test_a_batched_run_names_its_checkpoint_too(tmp_path):
    jobs = [
        Job(make_cfg("trainer.max_epochs=2", "seed=0"), tmp_path / "0"),
        Job(
            make_cfg("trainer.max_epochs=2", "seed=1", "trainer.early_stopping.restore_best=false"),
            tmp_path / "1",
        ),
    ]
    results = train_group(jobs)
    assert [m["checkpoint"] for m in results] == ["checkpoints/best.pt", "checkpoints/last.pt"]
    assert [metrics_of(tmp_path / k)["checkpoint"] for k in "01"] == [
        "checkpoints/best.pt",
        "checkpoints/last.pt",
    ]
    (tmp_path / "cwd").mkdir()
    status, _, err = run_in_process("eval.py", f"ckpt={tmp_path / '1'}", cwd=tmp_path / "cwd")
    assert status == 0, err
    ev = eval_results(tmp_path / "cwd")
    assert ev["checkpoint"].endswith("1/checkpoints/last.pt")
    assert ev["test/acc"] == results[1]["test/acc"]


@pytest.mark.parametrize("script", ["eval.py", "predict.py"])
def test_a_missing_reported_checkpoint_is_an_error_never_another_file(
    early_best_run, tmp_path, script
):
    run = tmp_path / "run"
    shutil.copytree(early_best_run, run)
    (run / "checkpoints" / "best.pt").unlink()  # last.pt (epoch 2) is still there
    np.save(tmp_path / "x.npy", np.zeros((2, 28, 28), dtype=np.uint8))
    before = file_digests(tmp_path)
    images = ["images=x.npy"] if script == "predict.py" else []
    status, out, err = run_in_process(script, "ckpt=run", *images, cwd=tmp_path)
    assert status == 1, out + err
    assert err.startswith("error: ckpt=run: its metrics.json reports the weights of ")
    assert "checkpoints/best.pt, which is missing" in err
    assert f"name it: ckpt={Path('run', 'checkpoints', 'last.pt')}" in err
    assert "Traceback" not in err and "class" not in out  # no predictions, no evaluation
    assert file_digests(tmp_path) == before  # no outputs/eval/ dir, nothing else written


def test_a_run_written_before_metrics_json_named_its_checkpoint(early_best_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(early_best_run, run)
    metrics = metrics_of(run)
    del metrics["checkpoint"]  # as the previous version wrote it
    (run / "metrics.json").write_text(json.dumps(metrics))
    status, _, err = run_in_process("eval.py", "ckpt=run", cwd=tmp_path)
    assert status == 0, err
    ev = eval_results(tmp_path)  # what that version reported: restore_best, best.pt
    assert ev["checkpoint"].endswith("best.pt") and ev["epoch"] == 1
    assert ev["test/acc"] == metrics["test/acc"]

    shutil.rmtree(tmp_path / "outputs")
    (run / "checkpoints" / "best.pt").unlink()  # still never last.pt in its place
    status, _, err = run_in_process("eval.py", "ckpt=run", cwd=tmp_path)
    assert status == 1 and "checkpoints/best.pt, which is missing" in err, err
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_a_diverged_runs_weights_are_named_as_such(tmp_path):
    run = tmp_path / "run"
    metrics = train(
        make_cfg("optim=sgd", "optim.lr=1e6", "data.normalize=none", "trainer.max_epochs=3"),
        run,
    )
    assert metrics["status"] == "diverged" and metrics["epochs_trained"] == 0
    assert metrics["checkpoint"] == "checkpoints/last.pt"  # epoch 0: no epoch was best
    expected = (
        f"run {run} diverged at epoch 1 (its loss became NaN or infinite): these are its "
        f"weights from epoch 0 (its initial weights: no epoch finished)."
    )
    (tmp_path / "cwd").mkdir()
    status, out, err = run_in_process("eval.py", f"ckpt={run}", cwd=tmp_path / "cwd")
    assert status == 0, err
    assert f"[WARNING] - {expected}" in out
    ev = eval_results(tmp_path / "cwd")
    assert ev["run_status"] == "diverged" and ev["warning"] == expected
    assert ev["epoch"] == 0 and ev["test/acc"] == metrics["test/acc"]

    np.save(tmp_path / "x.npy", np.zeros((2, 28, 28), dtype=np.uint8))
    status, out, err = run_in_process(
        "predict.py", f"ckpt={run}", f"images={tmp_path / 'x.npy'}", cwd=tmp_path
    )
    assert status == 0, err
    assert expected in err and out.startswith("image")  # stdout keeps only the table


@pytest.mark.parametrize("script", ["eval.py", "predict.py"])
@pytest.mark.slow
def test_help_is_the_scripts_own(tmp_path, script):
    status, out, _ = run_in_process(script, "--help", cwd=tmp_path)
    assert status == 0
    assert out.startswith(f"dltips {script.removesuffix('.py')}: ")
    assert "ckpt=<run dir | .pt file>" in out and "--hydra-help" in out
    assert "groups ==" not in out and "optim:" not in out  # not the training groups
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_noise_sweep_evaluates_one_model_at_several_noise_levels(run_dir, tmp_path):
    result = run_cli(
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
@pytest.mark.slow
def test_eval_on_another_data_set_keeps_the_checkpoints_normalization(standard_run, tmp_path):
    result = run_cli("eval.py", f"ckpt={standard_run}", "data=fashion_mnist", cwd=tmp_path)
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
        (["ckpt=empty"], "ckpt=empty: no metrics.json or checkpoints/ in this directory"),
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
    result = run_cli("eval.py", *(a.replace("RUN", str(run_dir)) for a in args), cwd=tmp_path)
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

    result = run_cli("predict.py", f"ckpt={run_dir}", "images=digits.npy", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    got = predictions(result.stdout)
    assert list(got) == [str(i) for i in range(10)]
    assert [c for c, _ in got.values()] == classes
    assert [p for _, p in got.values()] == pytest.approx(probs, abs=6e-5)  # printed to 4 places

    result = run_cli("predict.py", f"ckpt={run_dir}", "images=pngs", cwd=tmp_path)
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
    result = run_cli("predict.py", f"ckpt={standard_run}", "images=digits.npy", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    classes, probs = expected_predictions(standard_run, indices)
    got = predictions(result.stdout)
    assert [c for c, _ in got.values()] == classes
    assert [p for _, p in got.values()] == pytest.approx(probs, abs=6e-5)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["images=nope"], "images=nope: no such file or folder"),
        (["images=empty"], "images=empty: the folder holds no .png or .jpg files"),
        (["images=small.npy"], "its array has shape (3, 27, 27); it must be (N, 28, 28)"),
        (["images=float.npy"], "its float32 values lie in 0.0..2.0; float pixels must be 0..1"),
        (["images=int.npy"], "its int64 values lie in -1..255; integer pixels must be 0..255"),
        (["images=README.md"], "not a folder, an image or an .npy file"),
        (["images=broken/x.png"], "cannot read broken/x.png as an image"),
        ([], "images is not set"),
    ],
)
def test_predict_errors_are_clear(run_dir, tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "x.png").write_text("not a png")
    shutil.copy(ROOT / "README.md", tmp_path)
    np.save(tmp_path / "small.npy", np.zeros((3, 27, 27), dtype=np.uint8))
    np.save(tmp_path / "float.npy", np.linspace(0, 2, 3 * 784, dtype=np.float32).reshape(3, 784))
    np.save(tmp_path / "int.npy", np.arange(-1, 783).reshape(1, 28, 28) % 257 - 1)
    before = file_digests(tmp_path)
    result = run_cli("predict.py", f"ckpt={run_dir}", *args, cwd=tmp_path)
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
    result = run_cli("predict.py", f"ckpt={ckpt}", "images=x.npy", cwd=tmp_path)
    assert_clean_error(result, message)
    assert "trainer.resume" not in result.stderr


def test_predict_takes_jpg_one_image_and_any_pixel_type_alike(run_dir, tmp_path):
    every_100th = slice(None, None, 100)  # one image of each class
    images = read_cached(make_cfg().data)["x_test"][every_100th].reshape(-1, 28, 28).numpy()
    np.save(tmp_path / "float.npy", images.astype(np.float32) / 255)  # as ToTensor gives them
    np.save(tmp_path / "int64.npy", images.astype(np.int64))
    np.save(tmp_path / "one.npy", images[3])  # a single (28, 28) image
    (tmp_path / "jpgs").mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / "jpgs" / f"d{i}.jpg", quality=95)

    def predicted(images: str) -> list[int]:
        status, out, err = run_in_process(
            "predict.py", f"ckpt={run_dir}", f"images={images}", cwd=tmp_path
        )
        assert status == 0 and err == "", err  # no warning: 28x28 grayscale, no conversion
        return [c for c, _ in predictions(out).values()]

    classes, _ = expected_predictions(run_dir, every_100th)
    assert predicted("float.npy") == classes
    assert predicted("int64.npy") == classes
    assert predicted("one.npy") == [classes[3]]
    assert predicted("jpgs") == classes  # lossy, but the same digits
