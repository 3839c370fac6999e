# Two entry points: `make report` and `make test`. Both build .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.slimbench-installed

.PHONY: report test bench lint baselines sweep clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install --quiet -e '.[test,dev,openvino,sweep]'
	touch $(STAMP)

report: $(STAMP)
	$(BIN)/slimbench report --models resnet56

test: $(STAMP)
	$(BIN)/python -m pytest tests suites -q -p no:cacheprovider

# Timed suites (pytest-benchmark); see README "Benchmarks".
bench: $(STAMP)
	$(BIN)/python -m pytest suites --benchmark -q

# The wide sweep (minutes, not part of test): every torchvision classifier and >= 160 timm models,
# pruned at ratio 0.5 and verified; writes docs/compatibility.md and build/sweep/results.json.
sweep: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m slimbench.bench.sweep

# Counts and the in-run latency ratios (speedups, tool time / one forward) of every suite case.
baselines: $(STAMP)
	$(BIN)/python -m pytest suites -q --benchmark --update-baselines

# ruff, and actionlint on .github/workflows (the `lint` extra, installed on first use).
lint: $(STAMP)
	$(BIN)/ruff check .
	test -x $(BIN)/actionlint || $(BIN)/python -m pip install --quiet -e '.[lint]'
	$(BIN)/actionlint

clean:
	rm -rf $(VENV) .pytest_cache .benchmarks
