# Two entry points for a fresh machine: `make demo` and `make test`. Both create .venv on first use and
# reuse it afterwards. Torch is installed only when the venv cannot import one, so a CUDA build that is
# already there is kept (e.g. `make demo VENV_ARGS=--system-site-packages` to see a system-wide torch).

PYTHON ?= python3
VENV ?= .venv
VENV_ARGS ?=
TORCH_PIN ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.unoise-installed
DEMO_DATA ?= data/phantom
# Each `make demo` writes a new run folder, so an earlier run is never overwritten (`:=`: one timestamp).
ifndef DEMO_RUN
DEMO_RUN := runs/demo-$(shell date +%Y%m%d-%H%M%S)
endif
# Demo settings (CPU, 2 cores, a few minutes); the bundle's defaults are for real CT at 256 px.
DEMO_UTILITY ?= --preset demo --spatial_size 128 --epochs 20 --batch_size 8 --learning_rate 0.003 \
	--val_fraction 0.15 --test_fraction 0.15 --cpu_bf16 true
UNOISE := $(VENV)/bin/unoise

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
	@echo "== 1/3 synthetic pancreas CT phantoms -> $(DEMO_DATA)"
	$(UNOISE) phantom --out $(DEMO_DATA) --cases 24 --size 128 --slices 48 --seed 0 --test-cases 4
	@echo "== 2/3 validate and summarise the dataset"
	$(UNOISE) inspect --dataset $(DEMO_DATA)
	@echo "== 3/3 train the utility (pancreas segmentation) -> $(DEMO_RUN)/utility"
	$(UNOISE) train-utility --dataset $(DEMO_DATA) --output $(DEMO_RUN)/utility $(DEMO_UTILITY)
	@echo "demo finished: $(DEMO_RUN)  (tensorboard --logdir $(DEMO_RUN))"

# Removes the environment and caches only; data/ and runs/ hold your results and stay.
clean:
	rm -rf $(VENV) .pytest_cache *.egg-info
