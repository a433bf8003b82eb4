"""Data sets: the bundled digits, torchvision's loaders on real IDX files, clear errors."""

import gzip
import os
import struct
import subprocess
from pathlib import Path

import pytest
import torch
import torchvision
from omegaconf import OmegaConf

from conftest import FASHION_DIR, make_cfg
from dltips.data import load_dataset, read_cached, split_train_val, stratified_holdout
from dltips.errors import CheckpointError, DataError
from dltips.resume import check_same_run
from dltips.run_state import Job
from dltips.train import train, train_group


def write_idx(path: Path, tensor: torch.Tensor) -> None:
    """Write a uint8 tensor as an IDX file (the MNIST format: magic, sizes, bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">I", 0x0800 + tensor.dim()) + struct.pack(
        f">{tensor.dim()}I", *tensor.shape
    )
    path.write_bytes(header + tensor.to(torch.uint8).numpy().tobytes())


@pytest.fixture(scope="module")
def digits():
    """The real mnist_5k digits, as uint8 (N, 784) images and labels."""
    return read_cached(make_cfg().data)


def test_mnist_5k_sizes_and_stratified_splits():
    data = load_dataset(make_cfg().data, seed=0)
    assert (len(data.y_train), len(data.y_val), len(data.y_test)) == (3500, 500, 1000)
    assert data.in_features == 784 and data.num_classes == 10
    assert torch.bincount(data.y_val).tolist() == [50] * 10
    assert torch.bincount(data.y_test).tolist() == [100] * 10
    assert data.x_train.min() >= 0 and data.x_train.max() <= 1  # normalize=unit


def test_validation_split_follows_the_seed_and_test_split_does_not():
    a, b = (load_dataset(make_cfg().data, seed=s) for s in (0, 1))
    assert torch.equal(a.x_test, b.x_test)
    assert not torch.equal(a.x_val, b.x_val)
    assert torch.equal(a.x_val, load_dataset(make_cfg().data, seed=0).x_val)


def assert_stratified(y_subset: torch.Tensor, y_all: torch.Tensor) -> None:
    """Each class of the subset within 1 image of its share of the whole split."""
    share = y_all.bincount().double() / len(y_all)
    counts = y_subset.bincount(minlength=len(share)).double()
    assert (counts - share * len(y_subset)).abs().max() <= 1, counts.tolist()


def assert_subsets_follow_subset_seed(cfg_of, sizes, y_all) -> None:
    """data.train_size: stratified, the same for every seed, another for another subset_seed,
    never overlapping the validation images."""
    for size in sizes:
        a, b = (load_dataset(cfg_of(f"data.train_size={size}").data, seed=s) for s in (0, 1))
        assert len(a.y_train) == size
        assert_stratified(a.y_train, y_all)
        assert torch.equal(a.x_train, b.x_train)  # sweeping seed varies training, not data
        assert not torch.equal(a.x_val, b.x_val)
        other = load_dataset(cfg_of(f"data.train_size={size}", "data.subset_seed=1").data, 0)
        assert_stratified(other.y_train, y_all)
        assert not torch.equal(other.x_train, a.x_train)


@pytest.mark.parametrize("size", [10, 200, 1000, 3500])
def test_train_and_val_indices_never_overlap(size, digits):
    y = digits["y_train"]
    train, val = split_train_val(y, size, 500, subset_seed=0, seed=3)
    assert len(train) == size and len(val) == 500
    assert not set(train.tolist()) & set(val.tolist())
    assert_stratified(y[val], y)


@pytest.mark.slow
def test_train_size_on_the_class_sorted_bundled_digits_takes_every_class(digits):
    # mnist_5k is stored sorted by class: "the first N" would be one or a few classes
    assert_subsets_follow_subset_seed(make_cfg, [10, 200, 1000, 3000], digits["y_train"])


def test_subset_seed_null_keeps_the_first_images_left_after_validation(digits):
    full = load_dataset(make_cfg().data, seed=0)
    first = load_dataset(make_cfg("data.train_size=1000", "data.subset_seed=null").data, 0)
    assert torch.equal(first.x_train, full.x_train[:1000])  # dltips 0.1's rule, on request


def test_a_small_stratified_subset_learns_every_class(tmp_path):
    cfg = make_cfg("model.width=32", "data.train_size=200", "trainer.max_epochs=10")
    metrics = train(cfg, tmp_path / "run")
    assert metrics["test/acc"] > 0.5  # the first 200 digits (all zeros) gave 0.133


def test_normalization_modes():
    raw = load_dataset(make_cfg("data.normalize=none").data, seed=0)
    assert raw.x_train.max() == 255
    std = load_dataset(make_cfg("data.normalize=standard").data, seed=0)
    assert abs(std.x_train.mean()) < 1e-4 and abs(std.x_train.std() - 1) < 1e-4
    assert abs(std.x_test.mean()) < 0.1  # same transform, from the training statistics


def test_test_noise_changes_only_the_test_inputs():
    clean = load_dataset(make_cfg().data, seed=0)
    noisy = load_dataset(make_cfg("data.test_noise_std=1.0").data, seed=0)
    assert torch.equal(clean.x_train, noisy.x_train) and torch.equal(clean.x_val, noisy.x_val)
    assert abs((noisy.x_test - clean.x_test).std() - 1) < 0.01


@pytest.mark.slow
def test_decoded_tensors_are_cached_under_the_data_root(data_root, digits):
    cache = data_root / "cache" / "mnist_5k.pt"
    assert cache.is_file()
    cache.write_bytes(b"not a torch file")  # a broken cache is rebuilt, not fatal
    assert torch.equal(read_cached(make_cfg().data)["x_train"], digits["x_train"])
    assert torch.load(cache, weights_only=True)["x_train"].shape == (4000, 784)


def test_the_runs_of_a_process_read_the_cache_once_until_it_changes(data_root, monkeypatch):
    reads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: reads.append(a[0]) or real_load(*a, **k))
    cfg = make_cfg().data
    first, second = load_dataset(cfg, seed=0), load_dataset(cfg, seed=1)
    assert len(reads) <= 1  # none when an earlier test of this process read it already
    assert not torch.equal(first.x_val, second.x_val)  # each run still splits by its seed
    cache = data_root / "cache" / "mnist_5k.pt"
    raw = real_load(cache, weights_only=True)
    torch.save({**raw, "y_test": raw["y_test"].flip(0)}, cache)  # a new cache is read again
    try:
        assert torch.equal(read_cached(cfg)["y_test"], raw["y_test"].flip(0))
        assert reads[-1] == cache
    finally:  # the other tests share this data root
        torch.save(raw, cache)


def test_stratified_holdout_keeps_class_shares():
    y = torch.tensor([0] * 90 + [1] * 10)
    keep, held = stratified_holdout(y, 10, torch.Generator().manual_seed(0))
    assert torch.bincount(y[held]).tolist() == [9, 1]
    assert sorted(keep.tolist() + held.tolist()) == list(range(100))


def write_small_mnist(raw: Path, digits) -> None:
    write_idx(raw / "train-images-idx3-ubyte", digits["x_train"][:600].view(-1, 28, 28))
    write_idx(raw / "train-labels-idx1-ubyte", digits["y_train"][:600])
    write_idx(raw / "t10k-images-idx3-ubyte", digits["x_test"][:200].view(-1, 28, 28))
    write_idx(raw / "t10k-labels-idx1-ubyte", digits["y_test"][:200])


def test_torchvision_mnist_subsets_are_stratified(tmp_path, digits):
    raw = tmp_path / "MNIST" / "raw"
    write_idx(raw / "train-images-idx3-ubyte", digits["x_train"][::4].view(-1, 28, 28))
    write_idx(raw / "train-labels-idx1-ubyte", digits["y_train"][::4])  # sorted by class
    write_idx(raw / "t10k-images-idx3-ubyte", digits["x_test"][:200].view(-1, 28, 28))
    write_idx(raw / "t10k-labels-idx1-ubyte", digits["y_test"][:200])

    def cfg_of(*overrides):
        return make_cfg(
            "data=mnist",
            f"data.root={tmp_path}",
            "data.download=false",
            "data.val_size=100",
            *overrides,
        )

    assert_subsets_follow_subset_seed(cfg_of, [10, 95, 500], digits["y_train"][::4])


def test_torchvision_mnist_reads_real_idx_files(tmp_path, digits):
    write_small_mnist(tmp_path / "MNIST" / "raw", digits)
    cfg = make_cfg(
        "data=mnist", f"data.root={tmp_path}", "data.download=false", "data.val_size=100"
    )
    data = load_dataset(cfg.data, seed=0)
    assert (len(data.y_train), len(data.y_val), len(data.y_test)) == (500, 100, 200)
    assert torch.equal(data.x_test * 255, digits["x_test"][:200].float())
    assert (tmp_path / "cache" / "mnist.pt").is_file()


def test_missing_files_say_where_and_what_to_do(tmp_path):
    cfg = make_cfg("data=mnist", f"data.root={tmp_path}", "data.download=false")
    with pytest.raises(DataError) as err:
        load_dataset(cfg.data, seed=0)
    message = str(err.value)
    assert str(tmp_path / "MNIST" / "raw") in message
    assert "train-images-idx3-ubyte" in message and "data=mnist_5k" in message


def test_failed_download_is_explained(tmp_path, monkeypatch):
    # a port nobody listens on: the same failure as a machine without network, at once
    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", ["http://127.0.0.1:9/"])
    cfg = make_cfg("data=mnist", f"data.root={tmp_path}", "data.download=true")
    with pytest.raises(DataError, match="download failed") as err:
        load_dataset(cfg.data, seed=0)
    cause = str(err.value).splitlines()[-1]  # the cause in full, not the first line's "...:"
    assert cause.startswith("  (RuntimeError: Error downloading") and not cause.endswith(":)")
    assert "127.0.0.1:9" in cause


def test_missing_fashion_mnist_names_the_debian_package(tmp_path):
    cfg = make_cfg(
        "data=fashion_mnist",
        f"data.root={tmp_path}",
        "data.download=false",
        f"data.source.system_dir={tmp_path / 'not-installed' / 'fashion-mnist'}",
    )
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_dataset(cfg.data, seed=0)


def test_truncated_idx_file_is_named(tmp_path, digits):
    raw = tmp_path / "MNIST" / "raw"
    write_small_mnist(raw, digits)
    images = raw / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:5000])
    cfg = make_cfg("data=mnist", f"data.root={tmp_path}", "data.download=false")
    with pytest.raises(DataError, match="train-images-idx3-ubyte is not a valid IDX file"):
        load_dataset(cfg.data, seed=0)


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="apt-get install dataset-fashion-mnist")
@pytest.mark.slow
def test_fashion_mnist_from_debian_package_without_download(tmp_path):
    cfg = make_cfg("data=fashion_mnist", f"data.root={tmp_path}", "data.download=false")
    data = load_dataset(cfg.data, seed=0)
    assert (len(data.y_train), len(data.y_val), len(data.y_test)) == (55000, 5000, 10000)
    with gzip.open(FASHION_DIR / "t10k-labels-idx1-ubyte.gz") as f:
        labels = torch.frombuffer(bytearray(f.read()[8:]), dtype=torch.uint8)
    assert torch.equal(data.y_test, labels.long())

    def cfg_of(*overrides):
        return make_cfg("data=fashion_mnist", f"data.root={tmp_path}", *overrides)

    y_all = read_cached(cfg_of().data)["y_train"]
    assert_subsets_follow_subset_seed(cfg_of, [100, 2000, 10000], y_all)


@pytest.mark.slow
def test_read_only_data_dir_trains_without_the_cache(tmp_path, caplog):
    data = tmp_path / "data"
    data.mkdir()
    mounted = (
        os.geteuid() == 0  # as root, chmod does not stop writes: mount a read-only tmpfs
        and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "ro", "tmpfs", str(data)], capture_output=True
        ).returncode
        == 0
    )
    if not mounted:
        pytest.skip("needs root and mount to make a read-only directory")
    try:
        metrics = train(make_cfg("trainer.max_epochs=1", f"data.root={data}"), tmp_path / "run")
        assert not (data / "cache").exists()
    finally:
        subprocess.run(["umount", str(data)], check=False)
    assert metrics["status"] == "completed" and metrics["epochs_trained"] == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [
        f"Cannot write the data cache {data}/cache/mnist_5k.pt (Read-only file system): "
        f"training without it, decoding the data again in every run"
    ]


@pytest.mark.parametrize("train_size", [None, 200])
def test_a_checkpoint_from_before_subset_seed_resumes_on_the_images_it_trained_on(train_size):
    cfg = make_cfg(*([f"data.train_size={train_size}"] if train_size else []))
    saved = OmegaConf.to_container(cfg, resolve=True)
    del saved["data"]["subset_seed"]  # as dltips 0.1 wrote it
    if train_size is None:  # no subset: nothing changes
        check_same_run({"config": saved}, cfg, Path("last.pt"))
        return
    with pytest.raises(CheckpointError, match="data.subset_seed: None -> 0") as err:
        check_same_run({"config": saved}, cfg, Path("last.pt"))
    assert "add data.subset_seed=null" in str(err.value)
    legacy = make_cfg(f"data.train_size={train_size}", "data.subset_seed=null")
    check_same_run({"config": saved}, legacy, Path("last.pt"))


def test_bootstrap_resamples_the_training_split_with_replacement(digits):
    plain = load_dataset(make_cfg().data, seed=0)
    cfgs = {s: make_cfg("data.bootstrap=true").data for s in (0, 1)}
    a, again, b = (load_dataset(cfgs[s], seed=s) for s in (0, 0, 1))
    assert len(a.y_train) == len(plain.y_train)  # N draws from the N training images
    rows = {tuple(r) for r in plain.x_train.to(torch.uint8).tolist()}
    drawn = [tuple(r) for r in a.x_train.to(torch.uint8).tolist()]
    assert set(drawn) <= rows  # drawn from the run's own training split
    assert len(set(drawn)) < 0.7 * len(drawn)  # with replacement: ~63% distinct
    assert torch.equal(a.x_train, again.x_train)  # the seed draws it
    assert not torch.equal(a.x_train, b.x_train)  # another seed, another resample
    for split in ("x_val", "y_val", "x_test", "y_test"):  # untouched
        assert torch.equal(getattr(a, split), getattr(plain, split))


def test_bootstrap_keeps_each_members_own_resample_in_a_batched_group(
    tmp_path, monkeypatch, caplog
):
    import dltips.data

    drawn = []
    real = dltips.data.bootstrap
    monkeypatch.setattr(
        dltips.data, "bootstrap", lambda idx, seed: drawn.append((seed, r := real(idx, seed))) or r
    )
    cfgs = [make_cfg("data.bootstrap=true", f"seed={s}", "data.train_size=300") for s in (0, 1)]
    train_group([Job(c, tmp_path / f"g{i}") for i, c in enumerate(cfgs)])
    with caplog.at_level("INFO"):
        train(cfgs[1], tmp_path / "alone")
    (s0, in_group0), (s1, in_group1), (s_alone, alone) = drawn
    assert (s0, s1, s_alone) == (0, 1, 1)
    assert torch.equal(in_group1, alone) and not torch.equal(in_group0, in_group1)
    assert "a bootstrap resample: drawn with replacement" in caplog.text


def test_a_checkpoint_from_before_bootstrap_and_params_resumes():
    cfg = make_cfg()
    saved = OmegaConf.to_container(cfg, resolve=True)
    del saved["data"]["bootstrap"], saved["model"]["params"]  # as 0.2.0 wrote it
    check_same_run({"config": saved}, cfg, Path("last.pt"))
    with pytest.raises(CheckpointError, match="data.bootstrap: False -> True"):
        check_same_run({"config": saved}, make_cfg("data.bootstrap=true"), Path("last.pt"))
