"""The process's settings that a run's config asks for, made once before training by the
entry point (dltips.task): torch's threads, denormals, TF32 and, on the CPU, glibc's malloc.
They hold for the whole process, so train() leaves them as they are."""

import ctypes
import platform

import torch
from omegaconf import DictConfig

from dltips.config import resolve_device, validate


def configure_process(cfg: DictConfig) -> None:
    """Set torch's and malloc's process-wide settings as `cfg.trainer` asks (the settings of
    every run of a batched group are the same: dltips.group)."""
    validate(cfg)  # a bad value is refused as a ConfigError before anything is set
    trainer = cfg.trainer
    if trainer.num_threads:
        torch.set_num_threads(trainer.num_threads)
    # denormal floats (below ~1e-38) are 10-100x slower on CPUs; weights and gradients that
    # underflow there can make an epoch 2-3x slower. As zeros they change nothing visible.
    torch.set_flush_denormal(bool(trainer.flush_denormal))
    device = resolve_device(trainer.device)
    if device.type == "cuda":  # TF32: float32 matmuls on tensor cores, 10 mantissa bits
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = trainer.tf32
    if device.type == "cpu":
        keep_freed_memory()


def keep_freed_memory() -> None:
    """Have glibc's malloc keep freed blocks for reuse, whatever their size (Linux; a no-op
    elsewhere).

    By default it maps blocks of more than 128 KiB (at most 32 MiB, as it adapts) afresh
    from the OS and hands them back when freed, and every page of a new mapping costs a
    page fault when first written. A batched group frees and allocates buffers of 10 MB and
    more at every step (its gathered batch, its weight gradients): 32 runs of 784-128-128-10
    took about a million page faults in 10 epochs, and the first layer's weight-gradient
    product 3.3 ms instead of 1.8; 128 runs gather a 40 MB batch per step. Here every block
    comes from malloc's heap, where a freed one is reused, and the heap keeps up to 1 GiB
    of free memory. A group trained about 10% faster at 32 runs and 20 to 35% faster at 128,
    a single run about 5% (docs/PERFORMANCE.md); the numbers it computes are the same.
    """
    if platform.libc_ver()[0] != "glibc":
        return
    libc = ctypes.CDLL(None)
    m_trim_threshold, m_mmap_max = -1, -4  # glibc's <malloc.h>
    libc.mallopt(m_mmap_max, 0)  # no block through mmap, unless the heap cannot grow
    libc.mallopt(m_trim_threshold, 1 << 30)
