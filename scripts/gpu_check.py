"""Verify every GPU claim in one command (`make gpu-check`): the CUDA tests, then the GPU
benchmark, summed up in one table to paste into docs/PERFORMANCE.md or an issue.

    python scripts/gpu_check.py            # about 5 minutes on one H100 (estimated)
"""

import json
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def run(command: list[str]) -> tuple[int, str]:
    """Run a command from the project root, echoing its output; (exit code, last line)."""
    print("$", " ".join(command), flush=True)
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    print(proc.stdout[-6000:], proc.stderr[-3000:], sep="\n", flush=True)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    return proc.returncode, lines[-1] if lines else ""


def bench(*args: str) -> tuple[int, dict]:
    """Run scripts/bench.py with `args`; (exit code, its JSON results or {})."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.json"
        rc, _ = run([sys.executable, "scripts/bench.py", *args, "--json", str(out)])
        return rc, json.loads(out.read_text()) if out.exists() else {}


def verdict(value: float | None, target: float, higher: bool = True) -> str:
    if value is None:
        return "not measured"
    return "meets it" if (value >= target if higher else value <= target) else "MISSES it"


def main() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("error: no CUDA GPU here; run this on a machine with one.")
    gpu = torch.cuda.get_device_name()
    # one process, without pyproject's addopts: its -n auto needs pytest-xdist, and the
    # GPU tests should not share the GPU with each other
    pytest = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts="]
    tests_rc, tests = run([*pytest, "tests/test_gpu.py"])
    bench_rc, single = bench("--device", "cuda", "--epochs", "3")
    # the group: 128 members on 60,000 images (600 steps an epoch), each epoch one
    # CUDA graph; its log lines time the epochs with their outputs, its metrics the replays
    group = ("--device", "cuda", "--members", "128", "--width", "500", "--epochs", "3")
    batch_rc, batched = bench(*group, "--data", "60k", "--alone", "2")

    def cell(results: dict, key: str, fmt: str = "{:.4f}") -> str:
        return fmt.format(results[key]) if results.get(key) is not None else "n/a"

    print(f"\n## make gpu-check on {gpu}, torch {torch.__version__}\n")
    print("| path | s/epoch | vs naive |\n|---|---|---|")
    for name, seconds, ratio in [
        ("naive torchvision pipeline", "naive_s_per_epoch", None),
        ("dltips eager (no per-step sync)", "dltips_s_per_epoch", "speedup"),
        ("dltips, epoch as one CUDA graph", "graphed_s_per_epoch", "graphed_speedup"),
    ]:
        times = "1x" if ratio is None and "naive_s_per_epoch" in single else "n/a"
        speed = cell(single, ratio, "{:.1f}x") if ratio else times
        print(f"| {name} | {cell(single, seconds)} | {speed} |")
    startup = (
        single["first_step_s"] - single["import_torch_s"] if "first_step_s" in single else None
    )
    epochs_rate = batched.get("group_epochs_model_epochs_per_s")
    train_rate = batched.get("group_train_model_epochs_per_s")
    outputs = 1 - epochs_rate / train_rate if epochs_rate and train_rate else None
    rate = partial(cell, batched, fmt="{:.1f}")
    print(
        f"\n128 batched runs of 784-500-500-10 (60,000 images, Adam, an epoch one CUDA graph): "
        f"{rate('group_epochs_model_epochs_per_s')} model-epochs/s over its epochs with their "
        f"outputs, {rate('group_train_model_epochs_per_s')} in its training passes "
        f"({cell(batched, 'gb_per_s', '{:.0f}')} GB/s, the GPU's peak "
        f"{cell(batched, 'peak_gb_per_s', '{:.0f}')}), "
        f"{rate('batched_model_epochs_per_s')} with its start-up; "
        f"the outputs' share of an epoch {'n/a' if outputs is None else f'{outputs:.0%}'}; "
        f"one run alone {cell(batched, 'alone_eager_model_epochs_per_s', '{:.2f}')} eager, "
        f"{cell(batched, 'alone_graphed_model_epochs_per_s', '{:.2f}')} graphed\n"
        f"graphed vs eager: {cell(single, 'graphed_vs_eager', '{:.1f}x')}; "
        f"first training step {cell(single, 'first_step_s', '{:.2f}')} s after launch, "
        f"a bare `import torch` {cell(single, 'import_torch_s', '{:.2f}')} s; "
        f"start-up inside train(): {single.get('startup_split', 'n/a')}\n"
        f"CUDA tests (eager-vs-graphed parity, dropout, divergence, resume, optimizers): {tests}\n"
    )
    print("| target | measured | |\n|---|---|---|")
    for name, value, target, higher in [
        ("graphed >= 60x naive", single.get("graphed_speedup"), 60, True),
        ("eager >= 10x naive", single.get("speedup"), 10, True),
        ("first step minus `import torch` <= 3 s", startup, 3, False),
        ("K=128 batched >= 50x one eager run", batched.get("batched_vs_sequential"), 50, True),
        ("K=128 graphed group >= 150 model-epochs/s", epochs_rate, 150, True),
        ("K=128 group's outputs <= 1/5 of its epoch", outputs, 0.2, False),
    ]:
        shown = "n/a" if value is None else f"{value:.2f}"
        print(f"| {name} | {shown} | {verdict(value, target, higher)} |")
    if tests_rc or bench_rc or batch_rc:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
