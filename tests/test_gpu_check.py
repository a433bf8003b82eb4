"""`make gpu-check` (scripts/gpu_check.py) on the CPU: what it runs and the table it prints.

The GPU runs it for real; here its commands are recorded instead of run, so that every line
of the script that needs no GPU is covered by the CPU suite.
"""

import importlib.util

import pytest
import torch

from conftest import ROOT


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_without_a_gpu_it_says_so_and_runs_nothing(monkeypatch):
    gpu_check = load_gpu_check()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(gpu_check, "run", lambda *a: pytest.fail("ran a command"))
    with pytest.raises(SystemExit, match="error: no CUDA GPU here"):
        gpu_check.main()


@pytest.mark.parametrize("failing", [None, "group"])
def test_it_runs_the_cuda_tests_and_benchmarks_and_prints_one_table(monkeypatch, capsys, failing):
    gpu_check = load_gpu_check()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda: "Some GPU")
    commands, benches = [], []
    monkeypatch.setattr(gpu_check, "run", lambda c: commands.append(c) or (0, "15 passed"))
    single = {
        "naive_s_per_epoch": 10.0,
        "dltips_s_per_epoch": 1.25,
        "graphed_s_per_epoch": 0.125,
        "speedup": 8.0,
        "graphed_speedup": 80.0,
        "graphed_vs_eager": 10.0,
        "first_step_s": 9.0,
        "import_torch_s": 5.0,
    }

    def bench(*args):
        benches.append(args)
        if "--members" not in args:
            return 0, single
        return int(failing == "group"), {
            "batched_model_epochs_per_s": 100.0,
            "group_epochs_model_epochs_per_s": 160.0,
            "group_train_model_epochs_per_s": 200.0,
            "gb_per_s": 2000.0,
            "peak_gb_per_s": None,  # a GPU whose bandwidth bench.py does not know
            "alone_eager_model_epochs_per_s": 4.0,
            "alone_graphed_model_epochs_per_s": 5.0,
            "batched_vs_sequential": 25.0,
        }

    monkeypatch.setattr(gpu_check, "bench", bench)
    if failing:
        with pytest.raises(SystemExit):
            gpu_check.main()
    else:
        gpu_check.main()
    out = capsys.readouterr().out
    assert commands[0][-1] == "tests/test_gpu.py"
    assert [b[b.index("--device") + 1] for b in benches] == ["cuda"] * 2
    # the K = 128 group on 60,000 images: 600 steps an epoch, each epoch one graph
    assert benches[1][2:4] == ("--members", "128") and "60k" in benches[1]
    assert "## make gpu-check on Some GPU" in out
    assert "| dltips eager (no per-step sync) | 1.2500 | 8.0x |" in out
    assert "| dltips, epoch as one CUDA graph | 0.1250 | 80.0x |" in out
    assert "160.0 model-epochs/s over its epochs with their outputs, 200.0 in its" in out
    assert "(2000 GB/s, the GPU's peak n/a), 100.0 with its start-up" in out
    assert "the outputs' share of an epoch 20%; one run alone 4.00 eager, 5.00 graphed" in out
    tests = "CUDA tests (eager-vs-graphed parity, dropout, divergence, resume, optimizers)"
    assert f"{tests}: 15 passed" in out
    assert "| graphed >= 60x naive | 80.00 | meets it |" in out
    assert "| eager >= 10x naive | 8.00 | MISSES it |" in out
    assert "| first step minus `import torch` <= 3 s | 4.00 | MISSES it |" in out
    assert "| K=128 batched >= 50x one eager run | 25.00 | MISSES it |" in out
    assert "| K=128 graphed group >= 150 model-epochs/s | 160.00 | meets it |" in out
    assert "| K=128 group's outputs <= 1/5 of its epoch | 0.20 | meets it |" in out
