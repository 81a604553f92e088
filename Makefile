# The two commands a fresh clone needs: `make demo` and `make test`. Both create .venv first if missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test venv clean

demo: $(STAMP)
	$(PY) -m minqwen3 demo

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests exercises notebooks --nbval-lax

venv: $(STAMP)

# torch is pinned first: an unpinned torch would pull a multi-GB CUDA build
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test,notebooks]"
	touch $(STAMP)

clean:
	rm -rf $(VENV) build *.egg-info
