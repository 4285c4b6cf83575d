# Two entry points for a fresh machine: `make demo` and `make test`. Both create .venv on first use and
# reuse it afterwards. Torch is installed only when the venv cannot import one, so a CUDA build that is
# already there is kept (e.g. `make demo VENV_ARGS=--system-site-packages` to see a system-wide torch).

PYTHON ?= python3
VENV ?= .venv
VENV_ARGS ?=
TORCH_PIN ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.unoise-installed
DEMO_DIR ?= runs/demo
DEMO_DATA ?= data/phantom

.PHONY: demo test venv clean

venv: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV_ARGS) $(VENV)

$(STAMP): setup.cfg pyproject.toml | $(PY)
	@$(PY) -c "import torch" 2>/dev/null && echo "torch already importable: keeping $$($(PY) -c 'import torch; print(torch.__version__)')" \
		|| $(PY) -m pip install --disable-pip-version-check "$(TORCH_PIN)"
	$(PY) -m pip install --disable-pip-version-check -e ".[test]"
	@touch $@

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/unoise phantom --out $(DEMO_DATA) --cases 24 --size 128 --slices 48 --seed 0 --test-cases 4
	$(VENV)/bin/unoise inspect --dataset $(DEMO_DATA)

clean:
	rm -rf $(VENV) runs .pytest_cache
