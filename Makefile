# shelley — every recipe calls a `python -m` entry point; the logic lives in Python.
# Variables can be overridden: make train PRESET=gpu RUN=runs/gpu NPROC=4
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
RUN ?= runs/default
ART ?= artifacts/default
PRESET ?=
CORPUS ?= shakespeare
NPROC ?= 1
TRAIN_ARGS ?=
PROMPT ?= ROMEO:
TARGET ?= localhost:50051
EXTRAS ?= train,export,serve,dev
PYTEST_ARGS ?=
EXPLAIN_OUT ?= reports/explain
EXPLAIN_ARGS ?=

.PHONY: help setup proto train sample export verify serve client demo test test-all bench explain clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(VENV)/.installed-$(EXTRAS): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	touch $@

setup: $(VENV)/.installed-$(EXTRAS) ## create .venv and install every stage's dependencies

train: setup ## train (PRESET=cpu-small|gpu|frankenstein, CORPUS=..., NPROC=N for torchrun)
ifeq ($(NPROC),1)
	$(PY) -m training.train --out $(RUN) --corpus $(CORPUS) $(if $(PRESET),--preset $(PRESET)) $(TRAIN_ARGS)
else
	$(VENV)/bin/torchrun --standalone --nproc_per_node=$(NPROC) -m training.train --out $(RUN) --corpus $(CORPUS) $(if $(PRESET),--preset $(PRESET)) $(TRAIN_ARGS)
endif

sample: setup ## sample from $(RUN): make sample PROMPT="ROMEO:" (empty PROMPT = interactive)
	$(PY) -m training.sample --run $(RUN) $(if $(PROMPT),--prompt "$(PROMPT)")

explain: setup ## HTML report of what $(RUN) does with PROMPT (attention, logit lens, ...) in $(EXPLAIN_OUT)
	$(PY) -m training.explain --run $(RUN) --prompt "$(PROMPT)" --out $(EXPLAIN_OUT) $(EXPLAIN_ARGS)

test: setup ## run the whole test suite (what CI runs)
	$(PY) -m pytest $(PYTEST_ARGS)

clean: ## remove runs, artifacts, generated stubs and caches (keeps .venv)
	rm -rf runs artifacts reports .pytest_cache
