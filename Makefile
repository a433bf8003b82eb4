.PHONY: help install test test-fast lint format train sweep report bench gpu-check fashion-data gpu-report tensorboard clean

help:  ## list the commands
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

install:  ## install dltips and the dev tools into the active environment
	pip install -e ".[dev]"

test:  ## the whole test suite (what CI runs)
	pytest

test-fast:  ## every module, without the tests marked slow (more than ~1 s each)
	pytest -m "not slow"

lint:  ## ruff lint and format check
	ruff check . && ruff format --check .

format:  ## apply ruff's fixes and formatting
	ruff check --fix . && ruff format .

train:  ## one run with the default config
	python scripts/train.py

sweep:  ## the 2x2 activation x optimizer grid
	python scripts/train.py -m model=sigmoid,relu optim=sgd,adam

report:  ## run the lecture and tips presets offline and rewrite docs/RESULTS.md (3 seeds per setting, 5 where runs take seconds: 755 runs, about 46 min on the 2-core AMD EPYC of 2026-12-07, see docs/PERFORMANCE.md)
	python scripts/report.py --data fashion_mnist

bench:  ## dltips' loop against the naive torchvision pipeline (docs/PERFORMANCE.md)
	python scripts/bench.py --epochs 5

gpu-check:  ## on a machine with a GPU: the CUDA tests and the GPU benchmark, one table (~5 min, estimated)
	python scripts/gpu_check.py

fashion-data:  ## unpack Debian's Fashion-MNIST (apt-get install dataset-fashion-mnist) into data/, to carry to a machine without network
	mkdir -p data/FashionMNIST/raw
	for f in /usr/share/datasets/fashion-mnist/*-ubyte.gz; do gunzip -c $$f > data/FashionMNIST/raw/$$(basename $$f .gz); done

gpu-report:  ## on a machine with a GPU (data/FashionMNIST/raw/ from make fashion-data): the full report on CUDA, timed; its page in outputs/report/fashion_mnist-cuda/
	time python scripts/report.py --data fashion_mnist --set trainer.device=cuda --runs outputs/report/fashion_mnist-cuda

tensorboard:  ## open TensorBoard on all outputs
	tensorboard --logdir outputs

clean:  ## remove run outputs and caches (not data/)
	rm -rf outputs .pytest_cache .ruff_cache
