# Two commands do everything on a fresh machine:  make book  and  make test  (each creates .venv first).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export PYTHONHASHSEED := 0

.PHONY: env book browser test test-lib clean assignments

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

## Debian's Chromium for the browser test (tests/test_rendered_book.py), installed when missing; Playwright
## (pip, requirements.txt) drives it. Without it that test is skipped, or fails when CI=true.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo -n); \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	} || echo "warning: could not install Debian's chromium (apt-get install -y chromium)" >&2

## Run every test: the library's tests, the rendered book in a browser, and the chapters (nbval)
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
