"""Verify every GPU claim in one command (`make gpu-check`): the CUDA tests, then the GPU
benchmark, summed up in one table to paste into docs/PERFORMANCE.md or an issue.

    python scripts/gpu_check.py            # about 3 minutes on one H100
"""

import json
import subprocess
import sys
import tempfile
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


def main() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("error: no CUDA GPU here; run this on a machine with one.")
    gpu = torch.cuda.get_device_name()
    tests_rc, tests = run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_gpu.py"]
    )
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.json"
        bench_rc, _ = run(
            [
                sys.executable,
                "scripts/bench.py",
                "--device",
                "cuda",
                "--epochs",
                "3",
                "--json",
                str(out),
            ]
        )
        bench = json.loads(out.read_text()) if out.exists() else {}

    def cell(key: str, fmt: str = "{:.4f}") -> str:
        return fmt.format(bench[key]) if key in bench else "n/a"

    naive = bench.get("naive_s_per_epoch")
    rows = [
        ("naive torchvision pipeline", cell("naive_s_per_epoch"), "1x" if naive else "n/a"),
        ("dltips eager (no per-step sync)", cell("dltips_s_per_epoch"), cell("speedup", "{:.1f}x")),
        (
            "dltips, epoch as one CUDA graph",
            cell("graphed_s_per_epoch"),
            cell("graphed_speedup", "{:.1f}x"),
        ),
    ]
    print(f"\n## make gpu-check on {gpu}, torch {torch.__version__}\n")
    print("| path | s/epoch | vs naive |\n|---|---|---|")
    for name, seconds, ratio in rows:
        print(f"| {name} | {seconds} | {ratio} |")
    print(
        f"\ngraphed vs eager: {cell('graphed_vs_eager', '{:.1f}x')}; "
        f"first training step {cell('first_step_s', '{:.2f}')} s after launch, "
        f"a bare `import torch` {cell('import_torch_s', '{:.2f}')} s\n"
        f"CUDA tests (eager-vs-graphed parity, dropout, divergence, resume, optimizers): {tests}"
    )
    if tests_rc or bench_rc:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
