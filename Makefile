# biodistill: one-liners over cargo and the CLI.
#   make pipeline   set up everything, then run the default pipeline end to end
#   make test       set up what the tests need, then run them
# Override: PIPELINE=pipelines/x.toml, DATA_DIR=/path/to/corpora, CARGO_TARGET_DIR=...

PIPELINE ?= pipelines/default.toml
PYTHON   ?= python3
# Build output lives outside the clone so fresh clones (and CI) reuse it when present.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/biodistill/target
# The corpora: ../shared/data next to the clone unless DATA_DIR says otherwise.
DATA_DIR ?= $(firstword $(wildcard ../shared/data /work/shared/data) ../shared/data)
export BIODISTILL_INGEST_DATA_DIR ?= $(abspath $(DATA_DIR))
BIN := $(CARGO_TARGET_DIR)/debug/biodistill
# Every make target builds the one binary with the Ballista cluster (the `cluster` feature), so
# tests, bench and pipeline share one build; plain `cargo build` stays without it.
CARGO_FLAGS ?= --locked --features cluster

.PHONY: deps setup models models-test models-pipeline build pipeline ingest sql test test-unit fmt lint bench bench-reference learning-curve ablation clean

## Set-up: build tools for llama.cpp (cmake, libclang), and every model weight file of
## ../shared/MODELS.md, fetched and sha256-verified.
setup: deps models
deps:
	bash scripts/install_build_deps.sh
models:
	$(PYTHON) scripts/fetch_models.py --dest models all
# Only what the tests need (MiniLM student, SmolLM2-135M test LLM).
models-test:
	$(PYTHON) scripts/fetch_models.py --dest models test
# What the default pipeline needs (MiniLM student, Qwen2.5-Coder-1.5B teacher).
models-pipeline:
	$(PYTHON) scripts/fetch_models.py --dest models pipeline

build: deps
	cargo build $(CARGO_FLAGS) --bin biodistill

## The main job: ingest, label (embedded teacher), train, extract, eval, publish.
pipeline: models-pipeline build
	$(BIN) run $(PIPELINE)

ingest: build
	$(BIN) --config $(PIPELINE) ingest

# make sql Q="SELECT source, count(*) FROM documents GROUP BY source"  (or F=sql/corpus_stats.sql)
sql: build
	$(BIN) --config $(PIPELINE) sql $(if $(F),--file $(F),"$(Q)")

## Tests: formatting, unit and integration tests (real corpora, real model files).
test: deps models-test
	bash scripts/install_build_deps.sh chromium || echo "note: no Chromium; the span viewer's browser check is skipped"
	# The official OpenAI Python client, for tests/serve_openai.rs (~20 s; a new machine lacks it).
	$(PYTHON) -m pip install --quiet --disable-pip-version-check openai || echo "note: no openai package; the official-client check is skipped"
	cargo fmt --check
	cargo test $(CARGO_FLAGS) --lib --bins --tests

test-unit: deps
	cargo test $(CARGO_FLAGS) --lib

fmt:
	cargo fmt

lint:
	cargo clippy $(CARGO_FLAGS) --all-targets -- -D warnings

## Benchmarks: embedded teacher vs llama.cpp (reference built from its PyPI sdist), student,
## teacher fan-out. Figures are ratios against references measured in the same run.
bench: setup bench-reference
	cargo bench $(CARGO_FLAGS) --profile dev
bench-reference:
	bash scripts/install_llama_cpp.sh
	$(PYTHON) -m pip install --quiet onnxruntime onnx tokenizers numpy
	# PyTorch for the training reference: ~0.5 GB wheel plus ~3 GB of CUDA libraries it pulls
	# in (PyPI has no CPU-only build); only `make bench` needs it.
	$(PYTHON) -m pip install --quiet torch

## Student F1 against silver-set size (TASK=ade SIZES="25 50 100 200 400"; see the script).
SIZES ?= 25 50 100 200 400
learning-curve: models-pipeline build
	PARAM=train.max_sentences VALUES="$(SIZES)" bash scripts/sweep.sh
## The relation-head ablation (TASK=ade; SYSTEM=supervised_reference trains on gold instead).
ablation: models-pipeline build
	PARAM=train.arch VALUES='"conditioned" "markers" "pairwise"' bash scripts/sweep.sh

clean:
	rm -rf runs
