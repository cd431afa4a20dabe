# The two commands a new user runs: `make run` and `make test`. Both install into ./.venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint format bench bench-quick clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: install
	$(BIN)/imgproxy serve $(if $(CONFIG),-c $(CONFIG))

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff format --check imgproxy tests bench
	$(BIN)/ruff check imgproxy tests bench
	$(BIN)/mypy

format: install
	$(BIN)/ruff format imgproxy tests bench
	$(BIN)/ruff check --fix imgproxy tests bench

bench: install
	$(BIN)/python -m bench

bench-quick: install
	$(BIN)/python -m bench --quick

clean:
	rm -rf $(VENV) var bench/work .pytest_cache .mypy_cache .ruff_cache
