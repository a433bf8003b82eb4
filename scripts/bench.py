"""Benchmark dltips' training loop against the naive torchvision pipeline; print figures.

    python scripts/bench.py                   # CPU
    python scripts/bench.py --device cuda     # GPU
    python scripts/bench.py --epochs 5 --json b.json   # figures (default: outputs/bench.json)

Both train the same 784-500-500-10 ReLU MLP with Adam (lr 1e-3), batch 100, for one
warm-up epoch and then --epochs timed epochs over 60,000 MNIST-shaped images: Debian's
Fashion-MNIST files when installed (/usr/share/datasets/fashion-mnist), otherwise random
images written as IDX files. "naive" is what tutorials do: torchvision's dataset with
ToTensor + Normalize transforms and a DataLoader with workers=0, batches moved to the
device one by one, loss.item() every step. Not a test: it prints numbers.
"""

import argparse
import gzip
import json
import logging
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
]


def prepare_data(root: Path) -> str:
    """IDX files in <root>/FashionMNIST/raw/; returns a description of the data."""
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    if all((DEBIAN_DIR / f"{f}.gz").exists() for f in FILES):
        for f in FILES:
            with gzip.open(DEBIAN_DIR / f"{f}.gz") as src, open(raw / f, "wb") as dst:
                shutil.copyfileobj(src, dst)
        return f"Fashion-MNIST from {DEBIAN_DIR} (60,000 train images)"
    g = torch.Generator().manual_seed(0)
    for name, n in (("train", 60_000), ("t10k", 10_000)):
        images = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=g)
        labels = torch.randint(0, 10, (n,), dtype=torch.uint8, generator=g)
        (raw / f"{name}-images-idx3-ubyte").write_bytes(
            (0x0803).to_bytes(4, "big")
            + b"".join(d.to_bytes(4, "big") for d in (n, 28, 28))
            + images.numpy().tobytes()
        )
        (raw / f"{name}-labels-idx1-ubyte").write_bytes(
            (0x0801).to_bytes(4, "big") + n.to_bytes(4, "big") + labels.numpy().tobytes()
        )
    return "random MNIST-shaped images (dataset-fashion-mnist not installed), 60,000 train"


def mlp() -> nn.Module:
    from dltips.models import build_mlp

    return build_mlp(784, 10, depth=2, width=500, activation=nn.ReLU)


def naive_epochs(root: Path, device: torch.device, epochs: int) -> list[float]:
    """Seconds per epoch of the tutorial pipeline (first epoch = warm-up, included)."""
    from torchvision import datasets, transforms

    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])
    data = datasets.FashionMNIST(str(root), train=True, download=False, transform=transform)
    loader = torch.utils.data.DataLoader(data, batch_size=100, shuffle=True, num_workers=0)
    torch.manual_seed(0)
    model = mlp().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    criterion = nn.CrossEntropyLoss()
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        running = 0.0
        for x, y in loader:
            x, y = x.view(-1, 784).to(device), y.to(device)
            optimizer.zero_grad()
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
            running += loss.item()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def dltips_epochs(
    root: Path, device: str, epochs: int, out: Path, precision: str = "32", graphs: bool = False
) -> list[float]:
    """Seconds per epoch of dltips' own loop (its epoch_seconds, training pass only);
    on CUDA eager or with the epoch replayed as one CUDA graph."""
    from hydra import compose, initialize_config_dir

    from dltips.process import configure_process
    from dltips.train import train

    overrides = [
        "data=fashion_mnist",
        f"data.root={root}",
        "data.download=false",
        "data.source.system_dir=null",
        "data.val_size=1",
        "model=relu",
        "model.depth=2",
        "model.width=500",
        "optim=adam",
        "data.batch_size=100",
        f"trainer.device={device}",
        f"trainer.max_epochs={epochs}",
        "trainer.early_stopping.patience=null",
        f"trainer.precision={precision}",
        f"trainer.cuda_graphs={str(graphs).lower()}",
    ]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    configure_process(cfg)  # as scripts/train.py does: threads, denormals, malloc
    return train(cfg, out)["epoch_seconds"]


def first_step_seconds(root: Path, device: str, out: Path) -> tuple[float, float, str]:
    """(seconds from `python scripts/train.py` to its first training step, peak RSS in MiB,
    the run's own start-up split from its train.log).

    The first step follows right after checkpoints/last.pt of epoch 0 appears, so the time
    is measured from outside, with no hook in the product.
    """
    command = [
        sys.executable,
        str(ROOT / "scripts" / "train.py"),
        "data=mnist_5k",
        f"trainer.device={device}",
        "trainer.max_epochs=1",
        f"hydra.run.dir={out}",
        "hydra.verbose=dltips.train",  # its debug line: where the start-up went
    ]
    env = {**os.environ, "DLTIPS_DATA_DIR": str(root)}
    subprocess.run(command, env=env, capture_output=True, check=True)  # fills the data cache
    shutil.rmtree(out)
    start = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = out / "checkpoints" / "last.pt"
    while not last.exists() and proc.poll() is None:
        time.sleep(0.005)
    ready = time.perf_counter() - start
    proc.wait()
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    log = (out / "train.log").read_text() if (out / "train.log").exists() else ""
    split = next(
        (line.split("Start-up took ")[1] for line in log.splitlines() if "Start-up took " in line),
        "",
    )
    return ready, peak, split


def import_torch_seconds() -> float:
    """How long a fresh process takes to `import torch`: start-up that dltips cannot cut."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch"], check=True)
    return time.perf_counter() - start


# bytes a step moves per parameter with fused Adam and fp32 state: weights read twice,
# gradients written, then Adam's read and write of weights, gradients and both moments
ADAM_BYTES_PER_PARAM = 40
# memory bandwidth of GPUs, TB/s, by a part of torch.cuda.get_device_name (first match)
PEAK_TB_S = {"H200": 4.8, "H100 NVL": 3.9, "H100 PCIe": 2.0, "H100": 3.35, "A100": 2.0}


def peak_bandwidth(name: str) -> float | None:
    """The GPU's memory bandwidth in TB/s where known."""
    return next((tb for part, tb in PEAK_TB_S.items() if part in name), None)


class EpochClock(logging.Handler):
    """When each epoch's first "epoch E/N" log line came: the group's epochs end to end,
    its outputs (validation, metrics, TensorBoard, checkpoints) included."""

    def __init__(self) -> None:
        super().__init__()
        self.times: dict[int, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if str(record.msg).startswith("epoch %d/%d"):
            self.times.setdefault(record.args[0], record.created)

    def model_epochs_per_s(self, members: int) -> float | None:
        """K x (epochs - 1) over the time from the first epoch's line to the last's."""
        epochs = sorted(self.times)
        if len(epochs) < 2:
            return None
        return members * (epochs[-1] - epochs[0]) / (self.times[epochs[-1]] - self.times[epochs[0]])


def data_overrides(data: str, root: Path) -> list[str]:
    """The config of --data: mnist_5k, or 60,000 MNIST-shaped images (prepare_data's,
    one held out for validation: 600 steps of 100 an epoch)."""
    if data == "mnist_5k":
        return ["data=mnist_5k"]
    print(f"data: {prepare_data(root)}", flush=True)
    return [
        "data=fashion_mnist",
        f"data.root={root}",
        "data.download=false",
        "data.source.system_dir=null",
        "data.val_size=1",
    ]


def batched_vs_sequential(
    members: int,
    width: int | None,
    epochs: int,
    device: str,
    out: Path,
    alone: int | None = None,
    sets: tuple[str, ...] = (),
    data: tuple[str, ...] = ("data=mnist_5k",),
) -> dict:
    """Model-epochs per second of runs (seeds 0..K-1) trained one after another in this
    process, and of all K trained together as one batched group (`data`, Adam, batch 100).

    `alone` times only that many of the solo runs (their rate is what counts; 128 solo runs
    would take longer than the group they are compared with). On CUDA the solo runs are timed
    both eager and as CUDA graphs, and the group steps as configured (trainer.cuda_graphs:
    by default one graph an epoch). The group's rate is given three ways: the whole
    train_group call (start-up included), its epochs end to end (outputs included, from
    its log lines) and its training passes alone."""
    from hydra import compose, initialize_config_dir

    from dltips.data import load_dataset
    from dltips.process import configure_process
    from dltips.run_state import Job
    from dltips.train import train, train_group

    overrides = [
        *data,
        *([f"model.width={width}"] if width else []),
        f"trainer.max_epochs={epochs}",
        "trainer.early_stopping.patience=null",
        f"trainer.device={device}",
        *sets,  # e.g. experiment=lecture/step4 data=fashion_mnist
    ]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfgs = [compose("train", overrides=[*overrides, f"seed={k}"]) for k in range(members)]
        solo = cfgs[: alone or members]
        eager = [
            compose("train", overrides=[*overrides, f"seed={k}", "trainer.cuda_graphs=false"])
            for k in range(len(solo))
        ]
    configure_process(cfgs[0])  # as scripts/train.py does: threads, denormals, malloc
    train(cfgs[0], out / "warmup")  # the data cache and lazy imports, before timing

    def rate(configs: list, name: str) -> float:
        start = time.perf_counter()
        for k, cfg in enumerate(configs):
            train(cfg, out / f"{name}{k}")
        return len(configs) * epochs / (time.perf_counter() - start)

    result = {"members": members, "width": width, "epochs": epochs, "device": device}
    result["overrides"] = overrides
    if device.startswith("cuda"):
        result["alone_eager_model_epochs_per_s"] = rate(eager, "eager")
        result["alone_graphed_model_epochs_per_s"] = rate(solo, "graphed")
        alone_rate = result["alone_eager_model_epochs_per_s"]
    else:
        alone_rate = rate(solo, "seq")
    result["sequential_model_epochs_per_s"] = alone_rate
    clock, logger = EpochClock(), logging.getLogger("dltips.train")
    level = logger.level
    logger.addHandler(clock)
    logger.setLevel(logging.INFO)  # the epoch lines reach the clock, if no one else
    start = time.perf_counter()
    try:
        metrics = train_group([Job(cfg, out / f"grp{k}") for k, cfg in enumerate(cfgs)])
    finally:
        logger.removeHandler(clock)
        logger.setLevel(level)
    result["batched_model_epochs_per_s"] = members * epochs / (time.perf_counter() - start)
    result["batched_vs_sequential"] = result["batched_model_epochs_per_s"] / alone_rate
    result["group_epochs_model_epochs_per_s"] = clock.model_epochs_per_s(members)
    # the training pass of an epoch (one graph replay), after the first: the group's own
    train_s = statistics.median(metrics[0]["epoch_seconds"][1:] or metrics[0]["epoch_seconds"])
    result["group_train_model_epochs_per_s"] = members / train_s
    train_size = len(load_dataset(cfgs[0].data, cfgs[0].seed).y_train)
    result["steps_per_epoch"] = math.ceil(train_size / cfgs[0].data.batch_size)
    result["params"] = sum(m["num_params"] for m in metrics)  # the built networks'
    result["train_s_per_epoch"] = train_s
    result["gb_per_s"] = (
        ADAM_BYTES_PER_PARAM * result["params"] * result["steps_per_epoch"] / train_s / 1e9
    )
    if device.startswith("cuda"):
        result["gpu"] = torch.cuda.get_device_name()
        peak = peak_bandwidth(result["gpu"])
        result["peak_gb_per_s"] = peak and peak * 1000
    return result


def write_json(path: Path, figures: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"Wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs after the warm-up")
    parser.add_argument("--json", type=Path, default=Path("outputs/bench.json"))
    parser.add_argument("--skip-naive", action="store_true", help="time dltips only")
    parser.add_argument("--precision", default="32", help="dltips' trainer.precision: 32 or bf16")
    parser.add_argument(
        "--members", type=int, help="time K runs alone against one batched group of K instead"
    )
    parser.add_argument(
        "--width", type=int, help="hidden width for --members (default 128, or the --set config's)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="with --members: a config override for every run, e.g. --set experiment=lecture/step4",
    )
    parser.add_argument(
        "--alone", type=int, help="with --members: time only this many solo runs (default: K)"
    )
    parser.add_argument(
        "--data",
        choices=["mnist_5k", "60k"],
        default="mnist_5k",
        help="with --members: mnist_5k (35 steps an epoch), or 60,000 MNIST-shaped images "
        "(Fashion-MNIST when installed, else random; 600 steps an epoch)",
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.members:
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["DLTIPS_DATA_DIR"] = str(Path(tmp) / "data")
            width = args.width or (None if args.set else 128)
            data = tuple(data_overrides(args.data, Path(tmp) / "data"))
            result = batched_vs_sequential(
                args.members, width, args.epochs, args.device, Path(tmp), args.alone, args.set, data
            )
        data = "" if any(s.startswith("data=") for s in args.set) else f"on {args.data}"
        network = f"784-{width}-{width}-10" if width else ""
        what = " ".join(filter(None, [network, data, *args.set]))  # what the runs are
        print(
            f"{args.members} runs of {what}, {args.epochs} epochs ({device}): "
            f"alone {result['sequential_model_epochs_per_s']:.2f}, "
            f"batched {result['batched_model_epochs_per_s']:.2f} model-epochs/s: "
            f"{result['batched_vs_sequential']:.2f}x"
            + (
                f" (alone = eager; graphed alone: {result['alone_graphed_model_epochs_per_s']:.2f})"
                if "alone_graphed_model_epochs_per_s" in result
                else ""
            )
        )
        peak = result.get("peak_gb_per_s")
        print(
            f"the group's epochs, outputs included: "
            f"{result['group_epochs_model_epochs_per_s'] or float('nan'):.1f} model-epochs/s; "
            f"training passes: {result['group_train_model_epochs_per_s']:.1f} model-epochs/s, "
            f"{result['steps_per_epoch']} steps of {result['params'] / 1e6:.1f}M parameters at "
            f"{ADAM_BYTES_PER_PARAM} bytes each: {result['gb_per_s']:.0f} GB/s"
            + (f" of the GPU's {peak:.0f} GB/s ({result['gb_per_s'] / peak:.0%})" if peak else "")
        )
        write_json(args.json, result)
        return

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = prepare_data(tmp / "data")
        print(
            f"data: {data}\ndevice: {device}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads",
            flush=True,
        )
        results: dict = {
            "data": data,
            "device": str(device),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "machine": platform.machine(),
            "epochs_timed": args.epochs,
        }
        if device.type == "cuda":
            results["gpu"] = torch.cuda.get_device_name(device)
            torch.cuda.reset_peak_memory_stats()

        results["precision"] = args.precision
        ours = dltips_epochs(
            tmp / "data", args.device, args.epochs + 1, tmp / "run", args.precision
        )[1:]
        results["dltips_s_per_epoch"] = statistics.median(ours)
        if device.type == "cuda":  # the default on CUDA: each epoch one graph replay
            graphed = dltips_epochs(
                tmp / "data", args.device, args.epochs + 1, tmp / "graphed", args.precision, True
            )[1:]
            results["graphed_s_per_epoch"] = statistics.median(graphed)
            results["graphed_vs_eager"] = results["dltips_s_per_epoch"] / statistics.median(graphed)
            print(
                f"dltips, CUDA graphs: {results['graphed_s_per_epoch']:.4f} s/epoch "
                f"({results['graphed_vs_eager']:.1f}x eager)",
                flush=True,
            )
        results["dltips_samples_per_s"] = 60_000 / results["dltips_s_per_epoch"]
        print(
            f"dltips: {results['dltips_s_per_epoch']:.3f} s/epoch "
            f"({results['dltips_samples_per_s']:,.0f} samples/s)",
            flush=True,
        )
        if not args.skip_naive:
            naive = naive_epochs(tmp / "data", device, args.epochs + 1)[1:]
            results["naive_s_per_epoch"] = statistics.median(naive)
            results["naive_samples_per_s"] = 60_000 / results["naive_s_per_epoch"]
            results["speedup"] = results["naive_s_per_epoch"] / results["dltips_s_per_epoch"]
            if "graphed_s_per_epoch" in results:
                results["graphed_speedup"] = (
                    results["naive_s_per_epoch"] / results["graphed_s_per_epoch"]
                )
            print(
                f"naive:  {results['naive_s_per_epoch']:.3f} s/epoch "
                f"({results['naive_samples_per_s']:,.0f} samples/s)\n"
                f"dltips is {results['speedup']:.1f}x faster",
                flush=True,
            )
        if device.type == "cuda":
            results["gpu_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20

        ready, peak, split = first_step_seconds(tmp / "data", args.device, tmp / "cli")
        results["first_step_s"] = ready
        results["startup_split"] = split
        results["import_torch_s"] = import_torch_seconds()
        results["train_py_peak_rss_mib"] = peak
        print(
            f"python scripts/train.py: first training step after {ready:.2f} s, "
            f"peak memory {peak:.0f} MiB (a bare `import torch`: {results['import_torch_s']:.2f} s)"
            f"\n  inside train(): {split}"
        )
    write_json(args.json, results)


if __name__ == "__main__":
    main()
