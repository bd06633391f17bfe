# Two commands do everything on a fresh machine:  make book  and  make test  (each creates .venv first).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export PYTHONHASHSEED := 0

.PHONY: env book book-student browser test test-lib clean assignments

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

## The students' edition: the same site built from the student copies (stubs instead of solutions, checks kept),
## with -W, into _build/student/_build/html. Publish this one for a graded course (book/teachers.md).
book-student: env
	$(BIN)/python -m uflow_lib.student_edition --out _build/student

## Debian's Chromium for the browser test (tests/test_rendered_book.py), installed when missing; Playwright
## (pip, requirements.txt) drives it. When it cannot be installed: with CI=true (as .ci/run sets it) this fails,
## because that test fails in CI without a browser and the apt error here is the cause; elsewhere it prints a
## loud warning and goes on, the browser tests skip, and pytest's summary line counts them as
## "browser tests SKIPPED" (tests/conftest.py).
browser:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then exit 0; fi; \
	SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo -n); \
	if $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
	  && command -v chromium >/dev/null 2>&1; then exit 0; fi; \
	echo "" >&2; \
	echo "!!!!! BROWSER NOT INSTALLED: 'apt-get install -y chromium' failed (see above), so the browser test" >&2; \
	echo "!!!!! tests/test_rendered_book.py cannot open the rendered book." >&2; \
	case "$$(printf '%s' "$${CI:-}" | tr '[:upper:]' '[:lower:]')" in true|1|yes) \
	  echo "!!!!! CI=$$CI: stopping (in CI that test would fail without Chromium anyway)." >&2; exit 1;; esac; \
	echo "!!!!! Not CI: going on; the browser tests will be SKIPPED (pytest's summary line counts them)." >&2

## Run every test: the library's tests, the rendered book in a browser, and the chapters (nbval)
test: env
	$(BIN)/python -m pytest tests book --nbval --nbval-current-env --nbval-sanitize-with .ci/nbval_sanitize.cfg -q --durations=25

## Library tests only (fast)
test-lib: env
	$(BIN)/python -m pytest tests -q

clean:
	rm -rf _build

## Student copies and the answer key, generated from the solution chapters (CI checks they are current)
assignments: env
	$(BIN)/python -m uflow_lib.assignments generate --book book --out assignments
