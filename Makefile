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
CORPUS ?=
NPROC ?= 1
TRAIN_ARGS ?=
PROMPT ?= ROMEO:
TARGET ?= localhost:50051
EXTRAS ?= train,export,serve,dev
PYTEST_ARGS ?=
EXPLAIN_OUT ?= reports/explain
EXPLAIN_ARGS ?=
DTYPE ?= fp32
QUANTIZE ?=
KV_DTYPE ?=
FORCE ?=

.PHONY: help setup proto train sample export verify serve client demo test gguf-test bench-load bench-soak explain clean

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(VENV)/.installed-$(EXTRAS): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	touch $@

setup: $(VENV)/.installed-$(EXTRAS) ## create .venv and install every stage's dependencies

train: setup ## train into $(RUN) (PRESET=cpu-small|gpu|frankenstein CORPUS=name|path NPROC=N)
ifeq ($(NPROC),1)
	$(PY) -m training.train --out $(RUN) $(if $(CORPUS),--corpus $(CORPUS)) $(if $(PRESET),--preset $(PRESET)) $(TRAIN_ARGS)
else
	$(VENV)/bin/torchrun --standalone --nproc_per_node=$(NPROC) -m training.train --out $(RUN) $(if $(CORPUS),--corpus $(CORPUS)) $(if $(PRESET),--preset $(PRESET)) $(TRAIN_ARGS)
endif

sample: setup ## sample from $(RUN): make sample PROMPT="ROMEO:" (empty PROMPT = interactive)
	$(PY) -m training.sample --run $(RUN) $(if $(PROMPT),--prompt "$(PROMPT)")

explain: setup ## HTML report of what $(RUN) does with PROMPT (attention, logit lens, ...) in $(EXPLAIN_OUT)
	$(PY) -m training.explain --run $(RUN) --prompt "$(PROMPT)" --out $(EXPLAIN_OUT) $(EXPLAIN_ARGS)

export: setup ## export $(RUN) to $(ART) (DTYPE=fp16 adds model.fp16.onnx, QUANTIZE=int8 model.int8.onnx, KV_DTYPE=fp16 halves the KV cache; FORCE=1 overwrites)
	$(PY) -m export --run $(RUN) --out $(ART) --dtype $(DTYPE) $(if $(KV_DTYPE),--kv-dtype $(KV_DTYPE)) $(if $(QUANTIZE),--quantize $(QUANTIZE)) $(if $(FORCE),--force)

verify: setup ## parity report: ONNX Runtime on $(ART) against PyTorch on $(RUN)
	$(PY) -m export.verify $(ART) --run $(RUN)

STUBS := serving/_gen/shelley/v1/shelley_pb2_grpc.py
$(STUBS): proto/shelley/v1/shelley.proto $(VENV)/.installed-$(EXTRAS)
	@mkdir -p serving/_gen
	$(PY) -m grpc_tools.protoc -I proto --python_out=serving/_gen --pyi_out=serving/_gen --grpc_python_out=serving/_gen proto/shelley/v1/shelley.proto

proto: setup $(STUBS) ## generate the gRPC stubs into serving/_gen/ (git-ignored)

serve: proto ## serve $(ART): gRPC (:50051), HTTP + playground (:8000), metrics (:9090)
	$(PY) -m serving --model $(ART)

client: proto ## stream a completion from $(TARGET): make client PROMPT="ROMEO:"
	$(PY) -m serving.client "$(PROMPT)" --target $(TARGET)

demo: proto ## fresh clone -> train cpu-small -> export -> serve -> stream one completion -> stop
	$(PY) -m serving.demo --run $(RUN) --art $(ART) $(if $(CORPUS),--corpus $(CORPUS)) --prompt "$(PROMPT)" --train-args "$(TRAIN_ARGS)"

bench-load: proto ## shelley against llama.cpp's server and HF generate, same weights (pip install -e '.[bench]')
	$(PY) -m bench.load

bench-soak: proto ## 3 minutes of 48 mixed clients (cancels, deadlines, bad requests); fails on anything unexpected
	$(PY) -m bench.soak --seconds 180

test: setup proto ## run the whole test suite (what CI runs)
	$(PY) -m pytest $(PYTEST_ARGS)

gguf-test: proto ## build llama.cpp's llama-server once (cached), run GGUF exports of both tokenizers and both blocks in it against ONNX Runtime
	$(PY) tests/gguf_check.py

clean: ## remove runs, artifacts, generated stubs and caches (keeps .venv)
	rm -rf runs artifacts reports .pytest_cache serving/_gen

# --- deploy: images and Kubernetes manifests (see docs/deploy.md) ---
REGISTRY ?= registry.example.com/shelley
TAG ?= 0.1.0
OVERLAY ?= cpu
KUBECTL ?= kubectl
.PHONY: docker-train docker-serve docker-push image-test k8s-render k8s-apply

docker-train: ## build the training image (CUDA torch): REGISTRY=... TAG=...
	docker build -f Dockerfile.train -t $(REGISTRY)/shelley-train:$(TAG) .

docker-serve: ## build the serving image (onnxruntime-gpu, no torch): REGISTRY=... TAG=...
	docker build -f Dockerfile.serve -t $(REGISTRY)/shelley-serve:$(TAG) .

docker-push: docker-train docker-serve ## build and push both images to $(REGISTRY)
	docker push $(REGISTRY)/shelley-train:$(TAG)
	docker push $(REGISTRY)/shelley-serve:$(TAG)

image-test: proto ## build both images (CPU variants) and run train, export, serve inside them (root: buildah, debootstrap)
	$(PY) tests/images.py

k8s-render: ## print the manifests of OVERLAY=cpu|gpu (kubectl kustomize, else k8s/render.py)
	@if command -v $(KUBECTL) >/dev/null; then $(KUBECTL) kustomize k8s/overlays/$(OVERLAY); \
	else $(PY) k8s/render.py k8s/overlays/$(OVERLAY); fi

k8s-apply: ## apply OVERLAY=cpu|gpu (training Job + serving) to kubectl's current cluster
	$(KUBECTL) apply -k k8s/overlays/$(OVERLAY)
