# Two commands do everything on a fresh machine:  make book  and  make test  (each creates .venv first).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export PYTHONHASHSEED := 0

.PHONY: env book test test-lib clean assignments

$(BIN)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

env: $(BIN)/.installed

## Build the book (renders the committed notebook outputs; fails on any warning)
book: env
	$(BIN)/jupyter-book build . -W --keep-going

## Run every test: the library's tests and the chapters (nbval)
test: env
	$(BIN)/python -m pytest tests book --nbval --nbval-current-env --nbval-sanitize-with .ci/nbval_sanitize.cfg -q

## Library tests only (fast)
test-lib: env
	$(BIN)/python -m pytest tests -q

clean:
	rm -rf _build

## Student copies and the answer key, generated from the solution chapters (CI checks they are current)
assignments: env
	$(BIN)/python -m uflow_lib.assignments generate --book book --out assignments
