"""Batched sweeps: which jobs of a sweep can train together as one batched model.

Jobs whose configs differ only in per-run settings (PER_RUN: seed, learning rate, dropout,
...) share one model shape, optimizer class, loss, data and schedule, so one step can train
them all (dltips.step, dltips.train.train_group). Everything else splits groups. A group
is capped by `max_members`, or by default by an estimate of its memory against what is
free (hydra/launcher=batched) or what the nodes a submitit launcher asks for hold. The
launchers (hydra_plugins/dltips_batched_launcher) use these functions.
"""

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from dltips.checkpoint import load_checkpoint
from dltips.config import resolve_device
from dltips.resume import flatten
from dltips.schema import keys_where

log = logging.getLogger(__name__)

# settings (or prefixes ending in ".") that may differ between the runs of one group
PER_RUN = keys_where("per_run")


# on the CPU, networks with more parameters train one by one (see cpu_too_large)
CPU_MAX_PARAMS = 2_000_000


def group_key(cfg: DictConfig) -> str:
    """What must be equal for runs to train together: every setting but the PER_RUN ones,
    and the epoch a resumed run starts from."""
    settings = flatten(OmegaConf.to_container(cfg, resolve=True))
    shared = {k: v for k, v in settings.items() if not _per_run(k)}
    if cfg.trainer.resume:
        shared["start_epoch"] = load_checkpoint(
            Path(cfg.trainer.resume) / "checkpoints" / "last.pt"
        )["epoch"]
    return json.dumps(shared, sort_keys=True, default=str)


def _per_run(key: str) -> bool:
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in PER_RUN)


def group_jobs(keys: list[str], cap: int | dict[str, int] | None) -> list[list[int]]:
    """Indices of jobs with equal keys, in job order, in groups of at most `cap` (one for
    all, or per key)."""
    by_key: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        by_key.setdefault(key, []).append(i)
    groups = []
    for key, members in by_key.items():
        size = (cap.get(key) if isinstance(cap, dict) else cap) or len(members)
        groups += [members[i : i + size] for i in range(0, len(members), size)]
    return sorted(groups, key=lambda g: g[0])


def _layer_sizes(cfg: DictConfig) -> list[int]:
    """784, the hidden layers' output widths (maxout: width x pieces), 10."""
    m = cfg.model
    widths = list(m.width) if not isinstance(m.width, int) else [m.width] * m.depth
    return [784, *(w * m.get("pieces", 1) for w in widths), 10]


def num_params(cfg: DictConfig) -> int:
    """The network's parameter count, from its config."""
    sizes = _layer_sizes(cfg)
    return sum(a * b + b for a, b in zip(sizes, sizes[1:]))


def bytes_per_run(cfg: DictConfig) -> int:
    """A run's memory in a group: parameters with their gradients and optimizer state,
    one batch's activations, and its own copy of the training split (float32; at most
    60,000 images when data.train_size does not say)."""
    train_images = cfg.data.train_size or 60_000
    sizes = _layer_sizes(cfg)
    activations = cfg.data.batch_size * sum(sizes) * 3  # forward, backward, dropout masks
    return 4 * (4 * num_params(cfg) + activations + train_images * 785)


def cpu_too_large(cfg: DictConfig, device_type: str) -> bool:
    """Whether the network is too large to gain from batching on a `device_type` device.

    A group saves per-step overhead (Python, dispatch), not arithmetic or memory traffic:
    each run still multiplies by its own weights. On 2 CPU cores (docs/PERFORMANCE.md) a
    group of 784-1000-1000-10 (1.8M parameters) gained 1.04x, and one of the lecture's
    13 x 689 networks (6.2M) trained 1.3 to 1.5x slower than the same runs one by one.
    """
    return device_type == "cpu" and num_params(cfg) > CPU_MAX_PARAMS


def memory_cap(cfg: DictConfig, device_type: str, memory: int) -> int:
    """How many runs fit in half of `memory` bytes of a `device_type` device ("cpu" or
    "cuda"); 1 (each run alone) for a network too large to gain from batching on the CPU.
    The local batched launcher passes its device's free memory, the submitit ones the
    memory of the nodes they ask for."""
    if cpu_too_large(cfg, device_type):
        return 1
    return max(1, memory // 2 // bytes_per_run(cfg))


def free_memory(cfg: DictConfig) -> tuple[str, int]:
    """The type of the device a run of `cfg` trains on in this process, and its free
    memory in bytes: the GPU's, or the machine's RAM."""
    device = resolve_device(cfg.trainer.device)
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else _available_ram()
    return device.type, free


def group_caps(
    cfgs: dict[str, DictConfig], memory: Callable[[DictConfig], tuple[str, int]]
) -> dict[str, int]:
    """The cap (runs per group at most) of each group key's config: how many runs fit in
    half of `memory(cfg)`, the (device type, bytes) they train on; 1 where batching on the
    CPU is slower."""
    cap, one_by_one = {}, False
    for key, cfg in cfgs.items():
        device_type, size = memory(cfg)
        cap[key] = memory_cap(cfg, device_type, size)
        one_by_one |= cpu_too_large(cfg, device_type)
    if one_by_one:
        log.info(
            "On the CPU, networks of more than %s parameters train one by one: "
            "batched, they train no faster (hydra.launcher.max_members=K batches them)",
            f"{CPU_MAX_PARAMS:,}",
        )
    return cap


def _available_ram() -> int:
    """MemAvailable from /proc/meminfo (Linux), else the total physical memory."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def describe(groups: list[list[int]], numbers: list[int]) -> str:
    """'3 groups: jobs 0,2,4 | jobs 1,3,5 | job 6 (alone)' for the log."""
    parts = [
        f"jobs {','.join(str(numbers[i]) for i in g)}"
        if len(g) > 1
        else f"job {numbers[g[0]]} (alone)"
        for g in groups
    ]
    return f"{len(groups)} group{'s' * (len(groups) != 1)}: " + " | ".join(parts)
