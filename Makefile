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

# torch is pinned first, and looked for on PyTorch's CPU index too: PyPI's Linux wheels of torch are CUDA builds of
# several GB (its 2.13.0+cpu sorts above them). TORCH_INDEX= (empty) leaves it to PyPI alone: a GPU machine.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --retries 1 --timeout 30 torch==2.13.0 $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -e ".[test,notebooks]"
	touch $(STAMP)

clean:
	rm -rf $(VENV) build *.egg-info
