"""Data sets: the bundled digits, torchvision's loaders on real IDX files, clear errors."""

import gzip
import os
import struct
import subprocess
from pathlib import Path

import pytest
import torch
import torchvision

from conftest import FASHION_DIR, make_cfg
from dltips.data import load_dataset, read_cached, stratified_holdout
from dltips.errors import DataError
from dltips.train import train


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


def test_train_size_takes_the_first_images_left_after_validation(digits):
    full = load_dataset(make_cfg().data, seed=0)
    small = load_dataset(make_cfg("data.train_size=1000").data, seed=0)
    assert torch.equal(small.x_train, full.x_train[:1000])


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
    with pytest.raises(DataError, match="download failed"):
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
def test_fashion_mnist_from_debian_package_without_download(tmp_path):
    cfg = make_cfg("data=fashion_mnist", f"data.root={tmp_path}", "data.download=false")
    data = load_dataset(cfg.data, seed=0)
    assert (len(data.y_train), len(data.y_val), len(data.y_test)) == (55000, 5000, 10000)
    with gzip.open(FASHION_DIR / "t10k-labels-idx1-ubyte.gz") as f:
        labels = torch.frombuffer(bytearray(f.read()[8:]), dtype=torch.uint8)
    assert torch.equal(data.y_test, labels.long())


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
