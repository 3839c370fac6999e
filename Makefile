# Two entry points: `make report` and `make test`. Both build .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.slimbench-installed

.PHONY: report test bench lint baselines clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install --quiet -e '.[test,dev]'
	touch $(STAMP)

# Until `slimbench report` lands (issue 6), show what the pruning core does instead of failing.
report: $(STAMP)
	@if $(BIN)/python -c "import slimbench.report" 2>/dev/null; then \
		$(BIN)/slimbench report --models resnet56; \
	else \
		echo "slimbench report is not built yet; pruning torchvision resnet18 at 32x32 instead:"; \
		$(BIN)/slimbench prune resnet18 --input-size 3 32 32 --ratio 0.5; \
	fi

test: $(STAMP)
	$(BIN)/python -m pytest tests suites -q -p no:cacheprovider

# Timed suites (pytest-benchmark); see README "Benchmarks".
bench: $(STAMP)
	$(BIN)/python -m pytest suites --benchmark -q

baselines: $(STAMP)
	$(BIN)/python -m pytest suites -q --update-baselines

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .benchmarks
