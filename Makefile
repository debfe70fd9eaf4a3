PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test test-slow lint docs pretrained clean chromium postgres lmms test-lmms

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tuwen demo --out runs/demo

# Headless Chromium renders report.html in the tests (skipped there when it is absent).
chromium:
	@if [ -x /usr/bin/chromium ]; then echo "chromium: /usr/bin/chromium present"; \
	elif ! command -v apt-get >/dev/null; then \
	  echo "chromium: no apt-get here; the report browser test will be skipped"; \
	else SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update && $$SUDO apt-get install -y chromium; fi

# PostgreSQL server binaries: the shared-sweep test starts a throwaway server on loopback
# (skipped there when they are absent). The package's own cluster is not started.
postgres:
	@if ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then echo "postgres: present"; \
	elif ! command -v apt-get >/dev/null; then \
	  echo "postgres: no apt-get here; the shared-sweep test will be skipped"; \
	else SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update && $$SUDO apt-get install -y postgresql; fi

test: $(STAMP) chromium postgres
	$(PY) -m pytest

# Real pretrained weights (SmolLM2-135M, MiniLM, DINOv2-S, MobileNetV2) as local HF folders,
# fetched once from the hub by name; the slow real-weight tests read them (TUWEN_PRETRAINED_DIR).
PRETRAINED ?= $(HOME)/.cache/tuwen-pretrained
pretrained: $(STAMP)
	HF_HUB_OFFLINE=0 $(PY) tools/fetch_pretrained.py $(PRETRAINED)

test-slow: $(STAMP) chromium postgres
	TUWEN_PRETRAINED_DIR=$(PRETRAINED) $(PY) -m pytest -m slow

# lmms-eval (heavy: torchvision, timm, wandb, ...) in a venv of its own, beside tuwen[lmms];
# PyPI's torchvision is built for CUDA torch and does not load beside the CPU torch, and
# nothing tuwen's model runs needs it, so it goes when it cannot be imported.
LMMS_VENV := .venv-lmms
lmms:
	test -x $(LMMS_VENV)/bin/python || $(PYTHON) -m venv $(LMMS_VENV)
	$(LMMS_VENV)/bin/pip install --quiet "torch==2.13.0"
	$(LMMS_VENV)/bin/pip install --quiet "torch==2.13.0" -e ".[lmms]"
	$(LMMS_VENV)/bin/python -c "import torchvision" 2>/dev/null || \
	  $(LMMS_VENV)/bin/pip uninstall --quiet --yes torchvision

# the lmms-eval test (skipped by `make test` when lmms_eval is not importable)
test-lmms: $(STAMP) lmms
	TUWEN_LMMS_PYTHON=$(LMMS_VENV)/bin/python $(PY) -m pytest tests/apps/test_lmms.py

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests

# docs/config-reference.md from the config models' Field(description=...)
docs: $(STAMP)
	$(PY) -m tuwen.apps.config_reference

clean:
	rm -rf runs data/shapes .pytest_cache
