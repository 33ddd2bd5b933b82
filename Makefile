# Two commands a fresh machine needs: `make grade` and `make test`.
VENV    := .venv
BIN     := $(VENV)/bin
PYTHON  ?= python3
STAMP   := $(VENV)/.installed-stamp
OUT     ?= reports

.PHONY: setup system-deps grade test lint typecheck format bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --constraint constraints.txt --editable '.[all,test]'
	touch $(STAMP)

## setup: create .venv and install the project, every extra and the pinned test dependencies
setup: system-deps $(STAMP)

## system-deps: Debian packages (bubblewrap, redis-server, chromium) when running as root
system-deps:
	@bash scripts/system-deps.sh

## grade: grade the sample submissions into $(OUT)/ (the hostile corpus is graded by
## make test, inside the sandbox only: it holds fork and memory bombs)
grade: setup
	$(BIN)/mbgd-grader grade submissions/correct submissions/mistakes submissions/broken \
		--out $(OUT) --cell-timeout 20

## test: lint, type-check, then the whole test suite
test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

## typecheck: mypy over grader/ and reference/ (settings in pyproject.toml)
typecheck: setup
	$(BIN)/mypy

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## bench: throughput, and the cost of the per-kernel isolation (not part of make test)
bench: setup
	$(BIN)/python benchmarks/throughput.py
	$(BIN)/python benchmarks/isolation.py

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache .ruff_cache .mypy_cache
